"""The malicious pull request, end to end: it never gets its code run or its settings used.

The attack (found by trying it): a pull request adds a hidden model folder under data/ whose config
maps the model to the PR's own Python (``auto_map``), and a training.yaml whose ``base_model`` points
at it with ``model_init_kwargs: {trust_remote_code: true}``; or names a Hub repository that carries
code; or changes hub_repo/backend so the maintainers' token writes elsewhere. Every route must stop
with a clear message, and the marker file the PR's Python would write must never appear.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_workflows import WORKFLOW_DIR, git, load, run_step, workflow_env

ROOT = Path(__file__).resolve().parents[1]
SLICE = "IOPairs:\n  - input: a\n    output: b\n"


def evil_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config needs its own Python, which writes ``marker`` when imported."""
    folder.mkdir(parents=True)
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('the pull request ran code')\n"
    for name in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py", "__init__.py"):
        (folder / name).write_text(code)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    return folder


def evil_training(base_model: str, extra: str = "") -> str:
    return (f"Training:\n  - base_model: {base_model}\n  - model_init_kwargs: {{trust_remote_code: true}}\n"
            f"  - hub_repo: evil/exfiltrate\n  - backend: together\n{extra}Mixture:\n  - fix: 1\n")


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the pull request's Python was imported"


@pytest.fixture
def malicious_pr(tmp_path, marker):
    pr = tmp_path / "pr"
    (pr / "data").mkdir(parents=True)
    (pr / "data" / "fix.yaml").write_text(SLICE)
    evil_model(pr / "data" / ".evil", marker)
    (pr / "training.yaml").write_text(evil_training("data/.evil"))
    return pr


def oig(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "scripts"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "oig", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def test_validate_names_the_hidden_model_folder_and_trust_remote_code(malicious_pr):
    out = oig(malicious_pr, "validate")
    assert out.returncode == 1
    assert "data/.evil:0:0: error: hidden folder in data/" in out.stdout
    assert "training.yaml:3:" in out.stdout and "'trust_remote_code' (in model_init_kwargs) is not allowed" in out.stdout


def test_train_refuses_the_pull_request_as_it_is(malicious_pr):
    out = oig(malicious_pr, "train", "--publish", "none", "--output", "run", "--allow-local-base-model")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "trust_remote_code" in out.stderr


@pytest.mark.parametrize("allow_local", [False, True])
def test_train_never_imports_a_local_model_folders_code(tmp_path, marker, allow_local):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "fix.yaml").write_text(SLICE)
    evil_model(repo / "evil_model", marker)
    (repo / "training.yaml").write_text("Training:\n  - base_model: evil_model\n")
    out = oig(repo, "train", "--publish", "none", "--output", "run",
              *(["--allow-local-base-model"] if allow_local else []))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    if allow_local:
        assert "needs its own Python code (config.json auto_map" in out.stderr
    else:
        assert "needs --allow-local-base-model" in out.stderr


def test_train_never_imports_a_hub_models_code(tmp_path, marker):
    # A Hub repository with code, as the Hub cache holds it (HF_HUB_OFFLINE: no network, same path).
    cache = tmp_path / "hub-cache"
    commit = "c" * 40
    repo_cache = cache / "models--evil--model"
    evil_model(repo_cache / "snapshots" / commit, marker)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "fix.yaml").write_text(SLICE)
    (repo / "training.yaml").write_text("Training:\n  - base_model: evil/model\n")
    out = oig(repo, "train", "--publish", "none", "--output", "run", env={"HF_HUB_CACHE": str(cache)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'evil/model' needs its own Python code" in out.stderr


def test_the_workflows_pr_step_refuses_the_non_data_keys(tmp_path, malicious_pr, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("[user]\n\tname = t\n\temail = t@example.org\n")
    server = tmp_path / "server"
    bare = server / "org" / "repo.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(malicious_pr, "init", "-q", "-b", "pr")
    # Without the hidden folder first, so that the settings themselves are what is refused.
    (malicious_pr / "data" / ".evil").rename(tmp_path / "evil-aside")
    git(malicious_pr, "add", ".")
    git(malicious_pr, "commit", "-q", "-m", "pr")
    git(malicious_pr, "push", "-q", str(bare), "HEAD:refs/pull/9/head")
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "greetings.yaml").write_text(SLICE)
    branch_training = (ROOT / "training.yaml").read_text()
    (ws / "training.yaml").write_text(branch_training)
    env = {**workflow_env(tmp_path), "PR": "9", "GH_TOKEN": "x", "GITHUB_SERVER_URL": server.as_uri(),
           "GITHUB_REPOSITORY": "org/repo"}
    name = "Take data/ and the mixture from the pull request"
    out = run_step(load(WORKFLOW_DIR / "train.yml"), name, ws, env)
    assert out.returncode == 1
    changed = out.stdout.split("and this one changes: ", 1)[1].split(". ", 1)[0].split(", ")
    assert {"backend", "base_model", "hub_repo", "model_init_kwargs"} <= set(changed)
    assert "::error file=training.yaml (pull request),line=3" in out.stdout  # trust_remote_code, at its line
    assert (ws / "training.yaml").read_text() == branch_training and (ws / "data" / "greetings.yaml").exists()

    # The hidden model folder, even with the branch's own settings, is refused too.
    (tmp_path / "evil-aside").rename(malicious_pr / "data" / ".evil")
    (malicious_pr / "training.yaml").unlink()
    git(malicious_pr, "add", "-A")
    git(malicious_pr, "commit", "-q", "-m", "hide a model")
    git(malicious_pr, "push", "-q", "--force", str(bare), "HEAD:refs/pull/9/head")
    out = run_step(load(WORKFLOW_DIR / "train.yml"), name, ws, env)
    assert out.returncode == 1 and "::error file=data/.evil" in out.stdout
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["greetings.yaml"]

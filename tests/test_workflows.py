"""The GitHub workflows, issue forms and the pre-commit hook: schemas, zizmor, structural rules, and the
shell and Python the workflows run, executed here against local git repositories and tiny data.

The rules that hold for every workflow are parametrised over every file in .github/workflows, so a
workflow added later is covered without touching this file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.y*ml"))
FORMS = sorted(p for p in (ROOT / ".github" / "ISSUE_TEMPLATE").glob("*.y*ml") if p.stem != "config")
BIN = Path(sys.executable).parent
SHA = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
# Text that someone outside the maintainers can write: never inside a shell script.
UNTRUSTED = re.compile(r"\$\{\{[^}]*\b(github\.event|inputs\.|github\.head_ref|env\.)[^}]*\}\}")
GITHUB_SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # what `run:` uses on Linux runners


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def jobs(doc: dict) -> list[tuple[str, dict]]:
    return list((doc.get("jobs") or {}).items())


def steps(doc: dict) -> list[dict]:
    return [s for _, job in jobs(doc) for s in job.get("steps") or []]


def step(doc: dict, name: str) -> dict:
    found = [s for s in steps(doc) if s.get("name") == name]
    assert len(found) == 1, f"no single step named {name!r}"
    return found[0]


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable} (pip install -e '.[dev]')"
    return str(path)


def test_there_are_workflows():
    assert {"validate.yml", "ci.yml", "train.yml"} <= {p.name for p in WORKFLOWS}


# --- schemas and zizmor --------------------------------------------------------------------------------


def test_workflows_match_the_github_schema():
    out = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                          *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not FORMS, reason="no issue forms in .github/ISSUE_TEMPLATE")
def test_issue_forms_match_the_github_schema():
    out = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-issue-forms",
                          *map(str, FORMS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_zizmor_finds_nothing():
    out = subprocess.run([tool("zizmor"), "--offline", "--no-progress", str(WORKFLOW_DIR)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0 and "No findings" in out.stdout, out.stdout + out.stderr


def test_zizmor_would_catch_an_injection(tmp_path):
    # The check above means something only if zizmor flags what the rules below forbid.
    bad = tmp_path / "bad.yml"
    bad.write_text("on: issues\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo \"${{ github.event.issue.title }}\"\n")
    out = subprocess.run([tool("zizmor"), "--offline", "--no-progress", str(bad)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode != 0 and "template-injection" in out.stdout


# --- rules for every workflow --------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_untrusted_text_in_scripts(path):
    for s in steps(load(path)):
        assert not UNTRUSTED.search(s.get("run") or ""), f"{path.name}: step {s.get('name')!r} interpolates " \
            "untrusted text into its script; pass it through env: and quote it"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    uses = [ln for ln in lines if re.match(r"^\s*(-\s+)?uses:", ln)]
    assert len(uses) == sum(1 for s in steps(load(path)) if "uses" in s)
    for line in uses:
        ref, _, comment = line.split("uses:", 1)[1].partition("#")
        assert SHA.match(ref.strip()), f"{path.name}: {line.strip()} is not pinned to a full commit SHA"
        assert re.fullmatch(r"\s*v\d+\.\d+\.\d+\s*", comment), f"{path.name}: {line.strip()} needs a # vX.Y.Z comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path):
    doc = load(path)
    assert "permissions" in doc, f"{path.name} must set top-level permissions (least privilege)"
    for where in [doc] + [job for _, job in jobs(doc)]:
        perms = where.get("permissions")
        assert perms not in ("write-all", "read-all"), f"{path.name}: name each permission"
    for s in steps(doc):
        if str(s.get("uses", "")).startswith("actions/checkout@"):
            assert (s.get("with") or {}).get("persist-credentials") is False, \
                f"{path.name}: {s.get('name')!r} must not leave the token in .git/config"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_only_in_the_steps_that_need_them(path):
    doc = load(path)
    assert "secrets." not in yaml.safe_dump(doc.get("env") or {}), f"{path.name}: no secrets in workflow env"
    for name, job in jobs(doc):
        assert "secrets." not in yaml.safe_dump(job.get("env") or {}), f"{path.name}: no secrets in job {name}'s env"
        for s in job.get("steps") or []:
            assert "secrets." not in (s.get("run") or ""), f"{path.name}: secrets go through env:, not the script"


# --- validate.yml --------------------------------------------------------------------------------------


def test_validate_runs_on_every_pull_request_read_only():
    doc = load(WORKFLOW_DIR / "validate.yml")
    assert list(doc["on"]) == ["pull_request"]
    trigger = doc["on"]["pull_request"] or {}
    assert not {"paths", "paths-ignore", "branches", "branches-ignore"} & set(trigger), \
        "a filtered required check stays pending forever"
    assert doc["permissions"] == {"contents": "read", "issues": "read"}
    [(_, job)] = jobs(doc)
    assert "permissions" not in job and job["runs-on"] == "ubuntu-latest"
    # The mixture table downloads linked datasets to count them: bounded, and never the verdict.
    table = step(doc, "Mixture table, this pull request beside the base branch")
    assert table["continue-on-error"] is True and table["timeout-minutes"] <= 6
    assert "continue-on-error" not in step(doc, "Validate data and training.yaml")
    assert "secrets." not in (WORKFLOW_DIR / "validate.yml").read_text()
    scripts = "\n".join(s.get("run") or "" for s in job["steps"])
    assert "pip install -c requirements/lock.txt -e .\n" in scripts + "\n" and "[train]" not in scripts and "torch" not in scripts
    assert "oig mix --plan --format markdown" in scripts
    check = step(doc, "Validate data and training.yaml")
    assert check["run"].startswith('oig validate --remote --format github --changed-from "$BASE_SHA" ')
    assert check["env"] == {"BASE_SHA": "${{ github.event.pull_request.base.sha }}"}
    assert step(doc, "Check out the pull request")["with"]["fetch-depth"] == 2  # the base commit, for git diff
    python = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11" and python["with"]["cache"] == "pip"
    base = step(doc, "Check out the base branch's data")["with"]
    assert base["ref"] == "${{ github.event.pull_request.base.sha }}" and base["path"]


def workflow_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a runner, with `oig` on PATH running this checkout's code."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "oig").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m oig "$@"\n')
    (shim / "oig").chmod(0o755)
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    temp = tmp_path / "runner-temp"
    temp.mkdir(exist_ok=True)
    return {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "scripts"),
            "RUNNER_TEMP": str(temp), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
            "HF_HUB_OFFLINE": "1", "LC_ALL": "C"}


def run_step(doc: dict, name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    s = step(doc, name)
    env = {**env, **{k: str(v) for k, v in (s.get("env") or {}).items() if "${{" not in str(v)}}
    script = cwd.parent / f"step-{abs(hash(name))}.sh"
    script.write_text(s["run"])
    return subprocess.run([*GITHUB_SHELL, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_validate_step_checks_the_slices_the_pull_request_changed(tmp_path):
    doc = load(WORKFLOW_DIR / "validate.yml")
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "data", ws / "data")
    shutil.copy(ROOT / "training.yaml", ws / "training.yaml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["git", "add", "."], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=ws, check=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    env = {**workflow_env(tmp_path), "BASE_SHA": base}
    (ws / "data" / "greetings.yaml").write_text((ROOT / "data" / "greetings.yaml").read_text() + "\n")
    out = run_step(doc, "Validate data and training.yaml", ws, env)
    assert out.returncode == 0, out.stdout + out.stderr
    (ws / "data" / "greetings.yaml").write_text("IOPairs:\n  - input: a\n    outptu: b\n")
    out = run_step(doc, "Validate data and training.yaml", ws, env)
    assert out.returncode == 1 and "::error file=data/greetings.yaml,line=3" in out.stdout


def test_validate_summary_puts_the_two_mixtures_side_by_side(tmp_path):
    doc = load(WORKFLOW_DIR / "validate.yml")
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "data", ws / "data")
    shutil.copy(ROOT / "training.yaml", ws / "training.yaml")
    (ws / ".oig-base").mkdir()
    shutil.copytree(ROOT / "data", ws / ".oig-base" / "data")
    (ws / "data" / "arithmetic.yaml").unlink()  # the pull request removes a slice
    training = (ROOT / "training.yaml").read_text()
    (ws / "training.yaml").write_text(re.sub(r"(?m)^  - arithmetic:.*\n", "", training))
    env = {**workflow_env(tmp_path), "BASE_REF": "main"}
    out = run_step(doc, "Mixture table, this pull request beside the base branch", ws, env)
    assert out.returncode == 0, out.stderr
    summary = (tmp_path / "summary.md").read_text()
    pr_table, base_table = summary.split("</td><td>")
    assert "<th>This pull request</th><th>Base branch <code>main</code></th>" in pr_table
    assert "| greetings |" in pr_table and "| arithmetic |" not in pr_table
    assert "| greetings |" in base_table and "| arithmetic |" in base_table


def test_validate_summary_survives_a_base_without_data(tmp_path):
    doc = load(WORKFLOW_DIR / "validate.yml")
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "data", ws / "data")
    shutil.copy(ROOT / "training.yaml", ws / "training.yaml")
    (ws / ".oig-base").mkdir()
    (ws / ".oig-base" / "training.yaml").write_text("Training:\n  - lrr: 1\n")
    out = run_step(doc, "Mixture table, this pull request beside the base branch", ws, {**workflow_env(tmp_path),
                                                                                         "BASE_REF": "main"})
    assert out.returncode == 0, out.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "The base branch's mixture could not be computed" in summary and "| greetings |" in summary


# --- ci.yml --------------------------------------------------------------------------------------------


def test_ci_runs_tests_lint_and_workflow_checks():
    doc = load(WORKFLOW_DIR / "ci.yml")
    assert doc["on"]["push"] == {"branches": ["main"]} and "pull_request" in doc["on"]
    assert doc["permissions"] == {"contents": "read"}
    scripts = "\n".join(s.get("run") or "" for s in steps(doc))
    for command in ("make test", "make lint", "zizmor --offline", "--builtin-schema vendor.github-workflows",
                    "--builtin-schema vendor.github-issue-forms", "download.pytorch.org/whl/cpu"):
        assert command in scripts, command
    make = (ROOT / "Makefile").read_text()
    assert "ruff check" in make and "pytest" in make


def test_ci_issue_form_step_skips_config_and_handles_none(tmp_path):
    doc = load(WORKFLOW_DIR / "ci.yml")
    env = workflow_env(tmp_path)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    ws = tmp_path / "ws"
    (ws / ".github" / "ISSUE_TEMPLATE").mkdir(parents=True)
    out = run_step(doc, "Issue form schema", ws, env)
    assert out.returncode == 0 and "No issue forms" in out.stdout, out.stderr
    (ws / ".github" / "ISSUE_TEMPLATE" / "config.yml").write_text("blank_issues_enabled: true\n")
    (ws / ".github" / "ISSUE_TEMPLATE" / "broken.yml").write_text("name: Broken\n")  # no body, no description
    out = run_step(doc, "Issue form schema", ws, env)
    assert out.returncode != 0 and "broken.yml" in out.stdout + out.stderr and "config.yml" not in out.stdout


# --- train.yml -----------------------------------------------------------------------------------------


def test_train_is_dispatch_only_on_the_gpu_runner():
    doc = load(WORKFLOW_DIR / "train.yml")
    assert list(doc["on"]) == ["workflow_dispatch"]
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["pr"]["type"] == "string" and not inputs["pr"].get("required")
    assert inputs["publish"]["type"] == "choice" and set(inputs["publish"]["options"]) == {"none", "local", "hub"}
    assert inputs["publish"]["default"] == "hub"
    assert inputs["together"]["type"] == inputs["dry_run"]["type"] == "boolean"
    assert doc["concurrency"] == {"group": "training-${{ github.ref }}", "cancel-in-progress": False}
    assert doc["permissions"] == {}
    assert list(doc["jobs"]) == ["train", "pages"]
    job = doc["jobs"]["train"]
    assert job["runs-on"] == ["self-hosted", "gpu"] and job["environment"] == "training"
    assert job["permissions"] == {"contents": "write", "issues": "write"}


def test_train_never_checks_out_or_runs_pull_request_code():
    doc = load(WORKFLOW_DIR / "train.yml")
    for s in steps(doc):
        if str(s.get("uses", "")).startswith("actions/checkout@"):
            assert "ref" not in (s.get("with") or {})
    fetch = step(doc, "Take data/ and the mixture from the pull request")["run"]
    assert "archive" in fetch and "-- \"${paths[@]}\"" in fetch and "pip install" not in fetch
    # Everything is installed from this branch before any file of the pull request arrives.
    train = doc["jobs"]["train"]["steps"]  # the pages job installs on its own runner, with no pull request data
    names = [s.get("name") for s in train]
    installs = [i for i, s in enumerate(train) if "pip install" in (s.get("run") or "")]
    assert installs and max(installs) < names.index("Take data/ and the mixture from the pull request")


def test_train_secrets_reach_only_the_training_step():
    doc = load(WORKFLOW_DIR / "train.yml")
    holders = {s["name"]: s["env"] for s in steps(doc) if "secrets." in yaml.safe_dump(s.get("env") or {})}
    assert list(holders) == ["Train"]
    assert holders["Train"] == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}",
                                "TOGETHER_API_KEY": "${{ secrets.TOGETHER_API_KEY }}",
                                "GITHUB_TOKEN": "${{ github.token }}",
                                "WANDB_API_KEY": "${{ secrets.WANDB_API_KEY }}",
                                "OIG_HUB_BRANCH": "${{ inputs.pr != '' && format('pr-{0}', inputs.pr) || '' }}"}
    commit = step(doc, "Commit the results")
    assert commit["env"]["GITHUB_TOKEN"] == "${{ github.token }}" and "oig commit-results" in commit["run"]


def test_train_uses_accelerate_on_several_gpus_and_keeps_artifacts():
    doc = load(WORKFLOW_DIR / "train.yml")
    train = step(doc, "Train")["run"]
    assert "nvidia-smi -L" in train and 'oig train --print-launch --gpus "${gpus:-0}"' in train
    assert step(doc, "Train")["if"] == "${{ !inputs.dry_run }}"
    upload = step(doc, "Upload the results")
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["if"] == "${{ always() }}"
    collect = step(doc, "Collect the results")["run"]
    for name in ("training_log", "model.yaml", "train.log", "loss_curve.png", "manifest.json"):
        assert name in collect


def test_the_train_step_launches_what_training_yaml_asks_for(tmp_path):
    """The Train step as the runner runs it, with 4 GPUs (a fake nvidia-smi) and a fake `accelerate` that
    records its arguments: training.yaml's `distributed` reaches accelerate as oig's printed command."""
    doc = load(WORKFLOW_DIR / "train.yml")
    env = workflow_env(tmp_path)
    shim = Path(env["PATH"].split(os.pathsep)[0])
    (shim / "nvidia-smi").write_text('#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done\n')
    (shim / "accelerate").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/accelerate-args"\n')
    for name in ("nvidia-smi", "accelerate"):
        (shim / name).chmod(0o755)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "training.yaml").write_text("Training:\n  base_model: tiny\n  distributed: zero2\n"
                                      "  distributed_offload: optimizer\n")
    env.update({"RUN_DIR": str(tmp_path / "run"), "PUBLISH": "none", "TOGETHER": "false", "OVERRIDE_GATE": "false",
                "GITHUB_REPOSITORY": "org/repo"})
    (tmp_path / "run").mkdir()
    out = run_step(doc, "Train", ws, env)
    if "needs DeepSpeed, from the gpu extra" in out.stderr:  # this machine has no gpu extra: use FSDP instead
        (ws / "training.yaml").write_text("Training:\n  base_model: tiny\n  distributed: fsdp\n")
        out = run_step(doc, "Train", ws, env)
    assert out.returncode == 0, out.stdout + out.stderr
    argv = (tmp_path / "accelerate-args").read_text().splitlines()
    assert argv[0] == "launch" and argv[argv.index("--num_processes") + 1] == "4"
    mode = "zero2" if "--offload_optimizer_device" in argv else "fsdp"
    assert argv[argv.index("--config_file") + 1].endswith(f"configs/accelerate/{mode}.yaml")
    assert argv[argv.index("-m") + 1:][:4] == ["oig", "train", "--publish", "none"]
    assert "Launch: accelerate launch --config_file" in out.stdout


@pytest.mark.parametrize(("env", "error"), [
    ({"PR": "", "PUBLISH": "hub", "TOGETHER": "true", "DRY_RUN": "false"}, None),
    ({"PR": "42", "PUBLISH": "local", "TOGETHER": "false", "DRY_RUN": "false"}, None),
    ({"PR": "42", "PUBLISH": "hub", "TOGETHER": "false", "DRY_RUN": "true"}, None),
    ({"PR": "42; rm -rf /", "PUBLISH": "none", "TOGETHER": "false", "DRY_RUN": "false"}, "pr must be a pull request number"),
    ({"PR": "42", "PUBLISH": "hub", "TOGETHER": "false", "DRY_RUN": "false"}, None),
    ({"PR": "", "PUBLISH": "local", "TOGETHER": "true", "DRY_RUN": "false"}, "choose publish hub"),
    ({"PR": "", "PUBLISH": "hub", "TOGETHER": "false", "DRY_RUN": "false", "GITHUB_REF_TYPE": "tag"}, "not a tag"),
])
def test_train_checks_its_inputs(tmp_path, env, error):
    ws = tmp_path / "ws"
    ws.mkdir()
    out = run_step(load(WORKFLOW_DIR / "train.yml"), "Check the inputs", ws,
                   {**workflow_env(tmp_path), "GITHUB_REF_TYPE": "branch", **env})
    if error is None:
        assert out.returncode == 0, out.stdout
    else:
        assert out.returncode == 1 and "::error title=train::" in out.stdout and error in out.stdout


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture
def pr_server(tmp_path, monkeypatch):
    """A 'server' holding org/repo.git whose refs/pull/7/head changes data/ (and has a script it must not run)."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("[user]\n\tname = t\n\temail = t@example.org\n")
    server = tmp_path / "server"
    bare = server / "org" / "repo.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    pr = tmp_path / "pr"
    git(tmp_path, "init", "-q", "-b", "pr", str(pr))
    (pr / "data").mkdir()
    (pr / "data" / "new.yaml").write_text("IOPairs:\n  - input: a\n    output: b\n")
    training = (ROOT / "training.yaml").read_text()
    (pr / "training.yaml").write_text(training.split("Mixture:")[0] + "Mixture:\n  - new: 0.5\nMixtureTotal: 40\n")
    (pr / "setup.py").write_text("raise SystemExit('pull request code ran')\n")
    git(pr, "add", ".")
    git(pr, "commit", "-q", "-m", "pr")
    git(pr, "push", "-q", str(bare), "HEAD:refs/pull/7/head")
    return server, bare, pr


def checkout(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "data", ws / "data")
    shutil.copy(ROOT / "training.yaml", ws / "training.yaml")
    return ws


def test_train_takes_only_data_from_the_pull_request(tmp_path, pr_server):
    server, _, _ = pr_server
    ws = checkout(tmp_path)
    env = {**workflow_env(tmp_path), "PR": "7", "GH_TOKEN": "ghs_secret_value", "GITHUB_SERVER_URL": server.as_uri(),
           "GITHUB_REPOSITORY": "org/repo"}
    out = run_step(load(WORKFLOW_DIR / "train.yml"), "Take data/ and the mixture from the pull request", ws, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["new.yaml"]
    merged = yaml.safe_load((ws / "training.yaml").read_text())
    assert merged["Training"] == yaml.safe_load((ROOT / "training.yaml").read_text())["Training"]
    assert merged["Mixture"] == [{"new": 0.5}] and merged["MixtureTotal"] == 40
    assert not (ws / "setup.py").exists()
    assert "ghs_secret_value" not in out.stdout + out.stderr
    assert "pull request #7 at `" in (tmp_path / "summary.md").read_text()


def test_train_refuses_links_in_pull_request_data(tmp_path, pr_server):
    server, bare, pr = pr_server
    (pr / "data" / "secrets.yaml").symlink_to("/etc/passwd")
    git(pr, "add", ".")
    git(pr, "commit", "-q", "-m", "link")
    git(pr, "push", "-q", "--force", str(bare), "HEAD:refs/pull/7/head")
    ws = checkout(tmp_path)
    env = {**workflow_env(tmp_path), "PR": "7", "GH_TOKEN": "x", "GITHUB_SERVER_URL": server.as_uri(),
           "GITHUB_REPOSITORY": "org/repo"}
    step_name = "Take data/ and the mixture from the pull request"
    out = run_step(load(WORKFLOW_DIR / "train.yml"), step_name, ws, env)
    assert out.returncode == 1 and "links or submodules under data/: data/secrets.yaml" in out.stdout
    assert (ws / "data" / "greetings.yaml").exists()  # main's data untouched
    out = run_step(load(WORKFLOW_DIR / "train.yml"), step_name, ws, {**env, "PR": "8"})
    assert out.returncode == 1 and "could not fetch pull request #8" in out.stdout


def test_train_summary_shows_the_loss_curve(tmp_path):
    ws = tmp_path / "ws"
    run_dir = tmp_path / "oig-runs" / "1"
    run_dir.mkdir(parents=True)
    ws.mkdir()
    (run_dir / ".started").touch()
    os.utime(run_dir / ".started", (1, 1))
    metrics = [{"step": s, "loss": round(2.0 - s / 100, 4)} for s in range(1, 121)]
    metrics[59]["eval_loss"] = 1.5
    log = {"run_id": "r1", "base_model": "tiny", "steps": 120, "train_loss": 1.4, "eval_loss": 1.3,
           "tokens_per_second": 1000.0, "duration_s": 12.5, "metrics": metrics,
           "model": {"hub_repo": "org/model", "revision": "a" * 40}}
    (ws / "training_log").write_text(yaml.safe_dump(log))
    env = {**workflow_env(tmp_path), "RUN_DIR": str(run_dir)}
    out = run_step(load(WORKFLOW_DIR / "train.yml"), "Loss curve in the job summary", ws, env)
    assert out.returncode == 0, out.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "- model: `org/model` at `" + "a" * 40 + "`" in summary
    chart = re.search(r"x-axis \"step\" \[([^\]]*)\]", summary).group(1).split(", ")
    assert len(chart) == 50 and chart[0] == "1" and chart[-1] == "120"
    assert "| 60 | 1.4 | 1.5 |" in summary and "| 120 | 0.8 |  |" in summary
    (ws / "training_log").touch()
    os.utime(ws / "training_log", (0, 0))  # older than this run: an earlier run's, not shown
    (tmp_path / "summary.md").write_text("")
    out = run_step(load(WORKFLOW_DIR / "train.yml"), "Loss curve in the job summary", ws, env)
    assert out.returncode == 0 and "No training_log from this run" in (tmp_path / "summary.md").read_text()


def test_train_deploys_the_history_site_after_committing_results():
    doc = load(WORKFLOW_DIR / "train.yml")
    pages = doc["jobs"]["pages"]
    # After the train job, only when it committed results: never a pull request run.
    assert pages["needs"] == "train" and pages["if"] == step(doc, "Commit the results")["if"]
    assert "inputs.pr == ''" in pages["if"]
    # The Pages permissions on this job alone, which holds no secret and runs on a GitHub-hosted runner.
    assert pages["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert doc["jobs"]["train"]["permissions"] == {"contents": "write", "issues": "write"}
    assert pages["runs-on"] == "ubuntu-latest" and pages["environment"]["name"] == "github-pages"
    assert "secrets." not in yaml.safe_dump(pages)
    uses = [s["uses"].split("@")[0] for s in pages["steps"] if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-pages-artifact", "actions/deploy-pages"]
    checkout = pages["steps"][0]["with"]
    assert checkout == {"fetch-depth": 0, "persist-credentials": False}
    install = step({"jobs": {"pages": pages}}, "Install oig")["run"]
    assert "-c requirements/lock.txt -e ." in install and "[train]" not in install and "torch" not in install
    upload = step(doc, "Upload the site")["with"]["path"]
    assert upload == "${{ runner.temp }}/history-site" and "$RUNNER_TEMP/history-site" in step(doc, "Build the history site")["run"]
    assert step(doc, "Deploy to GitHub Pages")["id"] == "deploy"


def test_train_history_step_builds_every_trained_branch(tmp_path):
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    src = tmp_path / "src"
    git(tmp_path, "init", "-q", "-b", "main", str(src))
    log = {"run_id": "run-main", "base_model": "tiny", "train_loss": 1.0}
    (src / "training_log").write_text(yaml.safe_dump(log))
    git(src, "add", "training_log")
    git(src, "commit", "-q", "-m", "Training results of run 1 (hub)")
    git(src, "checkout", "-q", "-b", "text2sql")
    (src / "training_log").write_text(yaml.safe_dump({**log, "run_id": "run-sql"}))
    git(src, "commit", "-q", "-am", "Training results of run 2 (hub)")
    git(src, "checkout", "-q", "-b", "untrained", "main")
    git(src, "rm", "-q", "training_log")
    git(src, "commit", "-q", "-m", "no runs here")
    git(src, "push", "-q", str(bare), "main", "text2sql", "untrained")
    ws = tmp_path / "ws"
    git(tmp_path, "clone", "-q", "--branch", "text2sql", str(bare), str(ws))  # the run was on text2sql
    env = {**workflow_env(tmp_path), "DEFAULT_BRANCH": "main"}
    out = run_step(load(WORKFLOW_DIR / "train.yml"), "Build the history site", ws, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 run(s) on main, text2sql" in (tmp_path / "summary.md").read_text()
    index = (tmp_path / "runner-temp" / "history-site" / "index.html").read_text()
    assert "run-main" in index and "run-sql" in index and "untrained" not in index


# --- bug-report.yml ------------------------------------------------------------------------------------


def test_bug_report_reads_its_secret_from_the_environment_the_readme_names():
    doc = load(WORKFLOW_DIR / "bug-report.yml")
    readers = [(name, job) for name, job in jobs(doc) if "secrets.TOGETHER_API_KEY" in yaml.safe_dump(job)]
    assert readers, "bug-report.yml reads TOGETHER_API_KEY"
    # The README's maintainer setup names the environment that holds the secret, and that only it does.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("### Setting up the bug bot", 1)[1].split("\n### ", 1)[0]
    [env] = set(re.findall(r"New environment `([^`]+)`", setup))
    assert f"secret to `{env}`: `TOGETHER_API_KEY`" in setup
    for name, job in readers:
        # Environment secrets reach only a job that declares the environment.
        assert job.get("environment") == env, f"job {name} reads TOGETHER_API_KEY without `environment: {env}`"
    assert f"`environment: {env}`" in setup


def test_bug_report_acts_only_on_issues_from_the_form():
    from oig.bugs.suite import REPORT_LABEL

    doc = load(WORKFLOW_DIR / "bug-report.yml")
    assert doc["on"] == {"issues": {"types": ["opened", "edited"]}}
    [(_, job)] = jobs(doc)
    assert job["if"] == f"contains(github.event.issue.labels.*.name, '{REPORT_LABEL}')"
    form = yaml.safe_load((ROOT / ".github" / "ISSUE_TEMPLATE" / "bug.yml").read_text(encoding="utf-8"))
    assert REPORT_LABEL in form["labels"] and "bug" in form["labels"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"gh label create {REPORT_LABEL}" in readme


# --- the pre-commit hook -------------------------------------------------------------------------------


def test_pre_commit_hook():
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "oig-validate" and hook["language"] == "python" and hook["entry"] == "oig validate"
    assert hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    for name in ("data/greetings.yaml", "data/sub/x.yml", "training.yaml"):
        assert files.search(name), name
    for name in ("README.md", "data/x.json", "old/training.yaml", "training.yaml.bak", "schemas/slice.yaml"):
        assert not files.search(name), name


def test_pre_commit_hook_command_on_the_files_it_would_pass(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    staged = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "data").glob("*.yaml"))] + ["training.yaml"]
    assert main(["validate", *staged]) == 0, capsys.readouterr().err


def test_train_workflow_never_allows_a_local_base_model():
    text = (WORKFLOW_DIR / "train.yml").read_text()
    assert "--allow-local-base-model" not in text and "--allow-local-sources" not in text


def test_train_workflow_can_override_the_release_gate_on_a_maintainers_word():
    doc = load(WORKFLOW_DIR / "train.yml")
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["override_gate"]["type"] == "boolean" and inputs["override_gate"]["default"] is False
    job = doc["jobs"]["train"]
    assert job["env"]["OVERRIDE_GATE"] == "${{ inputs.override_gate }}"
    assert 'if [ "$OVERRIDE_GATE" = true ]; then args+=(--override-gate); fi' in step(doc, "Train")["run"]

"""oig.publish.hub: branch names, uploads to a local Hub (huggingface_hub 2.4 against fake_hub), retries."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

import pytest
from fake_hub import Branch, FakeHub
from test_files import Share

from oig.errors import PublishError
from oig.publish import hub

TOKEN = "hf_test_token"


@pytest.fixture(autouse=True)
def online_hub(monkeypatch):
    """`make test` sets HF_HUB_OFFLINE=1, which refuses even a local endpoint; these tests need one.

    huggingface_hub's own retry loop sleeps 1-8 s between tries: made instant here.
    """
    import huggingface_hub.constants
    import huggingface_hub.utils._http

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda s: None))
    for name in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "checkpoint-10").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    (d / "training_args.bin").write_bytes(b"args")
    (d / ".model.safetensors.tmp").write_bytes(b"half a file")
    return d


@pytest.mark.parametrize(("name", "expected"), [
    ("main", "main"),
    ("text2sql", "text2sql"),
    ("feature/text2sql", "feature-text2sql"),
    ("refs/heads/x", "refs-heads-x"),
    ("a..b", "a.b"),
    (" spaces and ümlauts ", "spaces-and-mlauts"),
    ("release.lock", "release-lock"),
    ("///", "main"),
    ("x" * 300, "x" * 100),
])
def test_sanitize_branch(name, expected):
    assert hub.sanitize_branch(name) == expected


def test_branch_name_prefers_the_pull_requests_branch(monkeypatch):
    assert hub.branch_name("text2sql") == "text2sql"
    monkeypatch.setenv("GITHUB_REF_NAME", "12/merge")
    assert hub.branch_name("HEAD") == "12-merge"
    monkeypatch.setenv("GITHUB_HEAD_REF", "bots/sql")
    assert hub.branch_name("HEAD") == "bots-sql"
    monkeypatch.setenv("OIG_HUB_BRANCH", "pr-42")  # a run on a pull request's data
    assert hub.branch_name("main") == "pr-42"


def test_branch_name_from_git(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", "-b", "feature/x", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    assert hub.current_git_branch() == "feature/x"
    assert hub.branch_name(None) == "feature-x"
    monkeypatch.chdir(tmp_path.parent)  # not a git repository: main
    assert hub.current_git_branch(tmp_path / "nowhere") is None


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "org/na me", "-org/x", "org/a..b", ""])
def test_check_repo_id_refuses_bad_ids(repo_id):
    with pytest.raises(PublishError, match="ORG/NAME"):
        hub.check_repo_id(repo_id)


def test_upload_to_a_branch_creates_it_and_stores_the_files(folder):
    with FakeHub(token=TOKEN) as fake:
        sha = hub.upload_model(folder, "org/oig-chat", branch="text2sql", token=TOKEN, endpoint=fake.url,
                               commit_message="oig: r1")
        assert sha == fake.commits("org/oig-chat", "text2sql")[-1]["oid"]
        stored = fake.files("org/oig-chat", "text2sql")
        assert fake.files("org/oig-chat", "main") == {}  # main's model is untouched
        assert fake.commits("org/oig-chat", "text2sql")[-1]["summary"] == "oig: r1"
        paths = fake.paths("POST")
        auth = {r["headers"].get("authorization") for r in fake.requests}
    assert set(stored) == {"config.json", "model.safetensors"}  # no checkpoints, optimizer or temp files
    assert stored["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert paths[:2] == ["/api/repos/create", "/api/models/org/oig-chat/branch/text2sql"]
    assert auth == {f"Bearer {TOKEN}"}


def test_upload_to_main_creates_no_branch_and_a_second_upload_reuses_the_repo(folder):
    with FakeHub(token=TOKEN) as fake:
        first = hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=fake.url, commit_message="1")
        (folder / "config.json").write_text('{"model_type": "llama", "v": 2}')
        second = hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=fake.url,
                                  commit_message="2")
        assert not any("/branch/" in p for p in fake.paths())
        assert [c["oid"] for c in fake.commits("org/m")] == [first, second]


def test_transient_failures_are_retried_with_backoff(folder):
    waits: list[float] = []
    # huggingface_hub retries a failed commit 5 times itself; 8 failures outlast its first round.
    with FakeHub(token=TOKEN, fail_commits=8, fail_status=503) as fake:
        sha = hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=fake.url, commit_message="m",
                               sleep=waits.append)
        assert sha == fake.commits("org/m")[-1]["oid"]
    assert len(waits) == 1 and 0.0 <= waits[0] <= 2.0  # full jitter: up to the first backoff, 2 s


def test_persistent_failure_gives_up_with_a_clear_error(folder):
    waits: list[float] = []
    with FakeHub(token=TOKEN, fail_commits=10**6, fail_status=502) as fake, pytest.raises(PublishError) as info:
        hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=fake.url, commit_message="m",
                         retries=3, base_delay=2.0, sleep=waits.append, rng=Share(1.0))
    message = str(info.value)
    assert "after 4 attempts" in message and "HTTP 502" in message and TOKEN not in message
    # Exponential backoff with full jitter: each wait is a random share of 2, 4, 8 s (here all of it).
    assert waits == [2.0, 4.0, 8.0]


def test_backoff_is_full_jitter_and_capped():
    waits: list[float] = []

    def fail():
        raise ConnectionError("no route")

    with pytest.raises(PublishError, match="after 8 attempts"):
        hub.with_retries(fail, what="x", repo_id="org/m", retries=7, base_delay=2.0, sleep=waits.append,
                         rng=Share(0.5))
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # half of 2 .. 128 s, the backoff capped at 60 s


def test_bad_token_fails_at_once_without_leaking_it(folder):
    waits: list[float] = []
    with FakeHub(token="the-right-one") as fake, pytest.raises(PublishError) as info:
        hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=fake.url, commit_message="m",
                         sleep=waits.append)
    assert "HF_TOKEN" in str(info.value) and "401" in str(info.value)
    assert TOKEN not in str(info.value) and waits == []


def test_unreachable_hub_is_retried_then_reported(folder):
    with FakeHub() as fake:
        url = fake.url  # the port is free again once the server stops
    waits: list[float] = []
    with pytest.raises(PublishError, match="could not reach the Hub"):
        hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint=url, commit_message="m", retries=2,
                         sleep=waits.append)
    assert len(waits) == 2


def test_offline_mode_is_named(folder, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE"):
        hub.upload_model(folder, "org/m", branch="main", token=TOKEN, endpoint="http://127.0.0.1:9",
                         commit_message="m", sleep=lambda s: None)


def test_token_comes_from_the_environment_only(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PublishError, match="HF_TOKEN is not set"):
        hub.token()
    monkeypatch.setenv("HF_TOKEN", " hf_abc ")
    assert hub.token() == "hf_abc"


def test_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:5000/")
    assert hub.endpoint() == "http://127.0.0.1:5000"


@pytest.mark.parametrize("hub_kwargs", [
    {},  # a write token, the user's own namespace
    {"user": "me", "orgs": {"org": "contributor"}},
    {"role": "fineGrained", "scoped": [{"entity": {"type": "model", "name": "org/m"}, "permissions": ["repo.write"]}]},
])
def test_check_access_passes_a_token_that_may_write(hub_kwargs):
    with FakeHub(**hub_kwargs) as fake:
        hub.check_access("org/m", branch="text2sql", token=TOKEN, endpoint=fake.url)  # a new repo
        fake.repos["org/m"] = {"main": Branch()}
        hub.check_access("org/m", branch="text2sql", token=TOKEN, endpoint=fake.url)  # a new branch
        assert "/api/whoami-v2" in fake.paths("GET")

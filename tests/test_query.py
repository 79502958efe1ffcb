"""oig query: the local model, a Together endpoint and any OpenAI-compatible server; only the answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_together import FakeTogether
from test_serve import ANSWER, QUESTION, ServerThread, train_tiny

from oig.cli import main
from oig.serve.locate import read
from oig.serve.query import QueryError, query

TAIL = "base_model: tiny\nrun_id: r1\ntrained_at: '2026-11-23T12:00:00Z'\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny") / "model")


def write_model_yaml(root: Path, body: str) -> Path:
    path = root / "model.yaml"
    path.write_text(body + TAIL)
    return path


def test_local_model_answers_and_only_the_answer_is_printed(model_dir, tmp_path, capsys):
    # A relative local_path is relative to model.yaml's folder (the repository root).
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model").symlink_to(model_dir, target_is_directory=True)
    path = write_model_yaml(tmp_path, "model:\n  local_path: runs/model\n")
    assert query(QUESTION, model_yaml=path) == ANSWER
    assert main(["query", QUESTION, "--model-yaml", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ANSWER + "\n"


def test_together_endpoint_is_asked_through_the_sdk(tmp_path, monkeypatch, capsys):
    with FakeTogether(answer="Bonjour") as fake:
        path = write_model_yaml(tmp_path, f"model:\n  hub_repo: org/m\n  revision: {'a' * 40}\ntogether:\n"
                                          f"  model: oig-lab/m\n  endpoint: oig-lab/m-endpoint\n"
                                          f"  base_url: {fake.url}\n")
        monkeypatch.setenv("TOGETHER_API_KEY", fake.api_key)
        assert main(["query", "Say hello", "--model-yaml", str(path)]) == 0
        assert capsys.readouterr().out == "Bonjour\n"
        (request,) = fake.find("POST", "/v1/chat/completions")
    assert request["json"]["model"] == "oig-lab/m-endpoint"
    assert request["json"]["messages"] == [{"role": "user", "content": "Say hello"}]
    assert request["json"]["temperature"] == 0
    assert request["headers"]["authorization"] == f"Bearer {fake.api_key}"


def test_together_model_needs_the_api_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    path = write_model_yaml(tmp_path, "together:\n  model: user/Qwen-oig\n  base_url: http://127.0.0.1:9\n")
    assert main(["query", "hi", "--model-yaml", str(path)]) == 1
    captured = capsys.readouterr()
    assert "TOGETHER_API_KEY" in captured.err and captured.out == ""


def test_base_url_asks_any_openai_compatible_server(model_dir, tmp_path, capsys):
    from oig.serve.server import create_app

    with ServerThread(create_app(model_dir, name="served-tiny")) as server:
        # No model.yaml: the name comes from the server's model list.
        assert main(["query", QUESTION, "--base-url", server.url, "--model-yaml", str(tmp_path / "none")]) == 0
        assert capsys.readouterr().out == ANSWER + "\n"
        # model.yaml names another model: the server's own is used, and /v1 on the URL is fine.
        path = write_model_yaml(tmp_path, "model:\n  local_path: elsewhere\n")
        assert query("Say hello", model_yaml=path, base_url=server.url + "/v1/") == "Hello there!"


def test_base_url_unreachable_is_a_clear_error(tmp_path, capsys):
    assert main(["query", "hi", "--base-url", "http://127.0.0.1:9", "--model-yaml", str(tmp_path / "none")]) == 1
    assert "lists no models" in capsys.readouterr().err
    path = write_model_yaml(tmp_path, "model:\n  local_path: x\n")
    assert main(["query", "hi", "--base-url", "http://127.0.0.1:9", "--model-yaml", str(path)]) == 1
    assert "could not reach" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("model: [1, 2\n", "model.yaml"),
    ("- a list\n", "model.yaml"),
    ("model:\n  local_path: 3\n" + TAIL, "local_path"),
])
def test_missing_or_invalid_model_yaml_exits_1(tmp_path, capsys, content, message):
    path = tmp_path / "model.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["query", "hi", "--model-yaml", str(path)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_local_model_that_is_gone(tmp_path):
    path = write_model_yaml(tmp_path, "model:\n  local_path: runs/gone\n")
    with pytest.raises(QueryError, match="does not exist here"):
        query("hi", model_yaml=path)


def test_model_yaml_sections(tmp_path):
    path = write_model_yaml(tmp_path, f"model:\n  hub_repo: org/m\n  revision: {'b' * 40}\n  branch: text2sql\n"
                                      "together:\n  model: oig-lab/m\n")
    assert read(path).section() == {"hub_repo": "org/m", "revision": "b" * 40, "branch": "text2sql",
                                     "together": {"model": "oig-lab/m"}}


def test_query_help_and_usage(capsys):
    assert main(["query", "--help"]) == 0
    assert "--base-url" in capsys.readouterr().out
    assert main(["query", "hi", "--max-tokens", "0"]) == 2
    assert main(["query", "   ", "--model-yaml", "nowhere.yaml"]) == 1


def test_the_together_key_goes_to_together_only(tmp_path, monkeypatch, capsys):
    with FakeTogether(answer="Hola") as fake:
        path = write_model_yaml(tmp_path, "together:\n  model: oig-lab/m\n")
        monkeypatch.setenv("TOGETHER_API_KEY", fake.api_key)
        monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)
        # Some other server: it never sees TOGETHER_API_KEY (so this fake, which wants it, refuses).
        assert main(["query", "hi", "--base-url", fake.url, "--model-yaml", str(path)]) == 1
        assert "HTTP 401" in capsys.readouterr().err
        assert {r["headers"].get("authorization") for r in fake.requests} == {"Bearer none", None}
        # The configured Together address gets the key.
        monkeypatch.setenv("TOGETHER_BASE_URL", fake.url + "/v1")
        assert query("hi", model_yaml=path, base_url=fake.url) == "Hola"
        assert fake.requests[-1]["headers"]["authorization"] == f"Bearer {fake.api_key}"

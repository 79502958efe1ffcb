"""oig train evaluates the new model and the previous one, and the release gate decides what is published."""

from pathlib import Path

import pytest
import yaml
from test_train import make_repo

from oig import runlog
from oig.cli import main

PAIRS = [("What is the capital of France?", "Paris."), ("Say hello.", "Hello!"), ("Name a colour.", "Blue.")]
SUITE = (
    "cases:\n"
    "  - id: capital\n    input: What is the capital of France?\n    check: contains\n    reference: Paris\n"
    "  - id: hello\n    input: Say hello.\n    check: contains\n    reference: Hello\n"
)


def repo_with(root: Path, training: str) -> Path:
    """test_train's repository, with an eval suite committed beside the data."""
    (root / "evals").mkdir(parents=True)
    (root / "evals" / "smoke.yaml").write_text(SUITE)
    return make_repo(root, training, PAIRS)


def train(repo: Path, *extra: str) -> int:
    return main(["train", "--base-model", "tiny", "--publish", "local", "--output", str(repo / "runs" / "r"), *extra])


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A repository whose model.yaml names a tiny model that answers the suite (the previous model)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = repo_with(tmp_path / "repo", "Training:\n  seed: 42\n  max_steps: 150\n")
    monkeypatch.chdir(repo)
    assert train(repo) == 0
    log = runlog.read_training_log(repo / "training_log")
    assert log["evals"]["suites"]["smoke"]["score"] == 1.0, log["evals"]  # it learned the two answers
    assert log["evals"]["previous"] is None  # no model.yaml before the first run
    # The previous model's folder is kept: the next run writes elsewhere.
    (repo / "runs" / "r").rename(repo / "runs" / "first")
    doc = yaml.safe_load((repo / "model.yaml").read_text())
    doc["model"]["local_path"] = "runs/first/model"
    (repo / "model.yaml").write_text(yaml.safe_dump(doc))
    return repo


@pytest.mark.slow
def test_a_gate_that_fails_publishes_nothing_and_keeps_model_yaml(trained, capsys):
    (trained / "training.yaml").write_text("Training:\n  seed: 42\n  max_steps: 1\nGate:\n  max_drop: 0.0\n")
    before = (trained / "model.yaml").read_text()
    assert train(trained) == 1
    err = capsys.readouterr().err
    assert "the release gate failed" in err and "suite smoke: the score fell from 1.0000" in err
    assert (trained / "model.yaml").read_text() == before
    log = runlog.read_training_log(trained / "training_log")
    assert log["gate"]["passed"] is False and log["gate"]["overridden"] is False
    assert log["published"] == {"mode": "local", "held_back": "the release gate failed"}
    smoke = log["evals"]["suites"]["smoke"]
    assert smoke["previous"]["score"] == 1.0 and smoke["delta"] < 0 and "results" not in smoke


@pytest.mark.slow
def test_a_gate_that_passes_publishes_and_records_the_deltas(trained, capsys):
    (trained / "training.yaml").write_text("Training:\n  seed: 42\n  max_steps: 150\nGate:\n  max_drop: 0.5\n")
    assert train(trained) == 0
    log = runlog.read_training_log(trained / "training_log")
    assert log["gate"] == {"passed": True, "reasons": [], "overridden": False}
    assert log["evals"]["suites"]["smoke"]["delta"] == 0.0
    assert yaml.safe_load((trained / "model.yaml").read_text())["model"]["local_path"] == "runs/r/model"
    # The job summary shows the evaluation beside the loss.
    capsys.readouterr()
    assert main(["report", "training-log", "--training-log", str(trained / "training_log"),
                 "--format", "markdown"]) == 0
    summary = capsys.readouterr().out
    assert "- release gate: passed" in summary and "### Evaluation" in summary
    assert "| smoke | 100.0% [" in summary and "| 100.0% | +0.0% [" in summary


@pytest.mark.slow
def test_a_maintainer_can_override_a_failed_gate_and_it_is_recorded(trained):
    (trained / "training.yaml").write_text("Training:\n  seed: 42\n  max_steps: 1\nGate:\n  max_drop: 0.0\n")
    assert train(trained, "--override-gate") == 0
    log = runlog.read_training_log(trained / "training_log")
    assert log["gate"]["passed"] is False and log["gate"]["overridden"] is True
    assert yaml.safe_load((trained / "model.yaml").read_text())["model"]["local_path"] == "runs/r/model"

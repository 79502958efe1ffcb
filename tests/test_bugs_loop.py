"""The whole bug loop with the tiny model: a report arrives as an event and is parsed, the model gets it
wrong, a slice with `fixes:` is added, `oig train --bugs` runs, and training_log shows the bug fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bugs import event, rendered

from oig import runlog
from oig.cli import main

PAIRS = [("What is the capital of Spain?", "Madrid."), ("What is the capital of Germany?", "Berlin."),
         ("What is the capital of Japan?", "Tokyo."), ("What is the capital of Egypt?", "Cairo.")]
BUG_INPUT, BUG_EXPECTED = "What is the capital of Italy?", "Rome."


def slice_text(pairs, fixes=None) -> str:
    head = f"fixes: [{', '.join(map(str, fixes))}]\n" if fixes else ""
    rows = "".join(f"  - input: {q}\n    output: {a}\n" for q, a in pairs)
    return f"{head}license: CC0-1.0\nIOPairs:\n{rows}"


@pytest.mark.slow
def test_a_reported_bug_is_fixed_by_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "capitals.yaml").write_text(slice_text(PAIRS))
    (tmp_path / "training.yaml").write_text("Training:\n  seed: 42\n  max_steps: 100\n")

    # --- the report arrives as an issues event and is parsed ---
    payload = tmp_path / "event.json"
    payload.write_text(json.dumps(event(21, rendered(BUG_INPUT, "Berlin.", BUG_EXPECTED, crlf=True))))
    assert main(["bugs", "parse", str(payload)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["number"], report["input"], report["expected"]) == (21, BUG_INPUT, BUG_EXPECTED)
    Path("bugs.json").write_text(json.dumps([report]))

    # --- the current tiny model gets it wrong ---
    assert main(["train", "--base-model", "tiny"]) == 0
    first = runlog.read_model_yaml(Path("model.yaml"))
    capsys.readouterr()
    assert main(["bugs", "eval", "--bugs", "bugs.json", "--format", "json"]) == 0
    (current,) = json.loads(capsys.readouterr().out)["bugs"]
    assert current["verdict"] == "still broken" and current["after"] != BUG_EXPECTED

    # --- a slice that fixes it; PR validation lists the claim and flags the copied input ---
    (tmp_path / "data" / "italy.yaml").write_text(slice_text([(BUG_INPUT, BUG_EXPECTED)], fixes=[21]))
    assert main(["bugs", "claims", "--bugs", "bugs.json"]) == 0
    out = capsys.readouterr().out
    assert "data/italy.yaml: fixes #21" in out and "bug #21's exact input" in out

    # --- training asks the previous and the new model, and records the verdict ---
    assert main(["train", "--base-model", "tiny", "--bugs", "bugs.json"]) == 0
    log = runlog.read_training_log(Path("training_log"))
    (record,) = log["bugs"]
    assert record["number"] == 21 and record["before_source"] == "previous model"
    assert record["before"] == current["after"]  # the model model.yaml named before the run
    assert record["after"] == BUG_EXPECTED and record["verdict"] == "fixed"
    assert log["bugs_summary"]["fixed"] == 1 and log["bugs_summary"]["total"] == 1
    assert runlog.read_model_yaml(Path("model.yaml"))["run_id"] != first["run_id"]

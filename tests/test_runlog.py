"""training_log and model.yaml: shapes, atomic writes, reading back, the shipped schema."""

from __future__ import annotations

import errno
import json
import os
import sys
from enum import StrEnum
from pathlib import Path

import jsonschema
import pytest

from oig import files, runlog
from oig.runlog import RunLogError

ROOT = Path(__file__).resolve().parents[1]
RUN = {
    "run_id": "run-0123456789ab",
    "started_at": "2026-11-23T10:00:00Z",
    "finished_at": "2026-11-23T10:05:00Z",
    "git_commit": "a" * 40,
    "git_branch": "main",
    "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
}


def test_schema_file_matches_the_code():
    assert (ROOT / "schemas" / "model.schema.json").read_text() == runlog.rendered_schema(), \
        "run `python -m oig.runlog` to refresh schemas/model.schema.json"


def test_schema_is_a_valid_schema_with_descriptions():
    jsonschema.Draft202012Validator.check_schema(runlog.MODEL_SCHEMA)

    def walk(node, where):
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{name} has no description"
            walk(sub, f"{where}.{name}")

    walk(runlog.MODEL_SCHEMA, "model.yaml")


def test_local_model_yaml_round_trip(tmp_path):
    doc = runlog.model_document({"local_path": "runs/run-0123456789ab/model"}, RUN)
    path = runlog.write_model_yaml(tmp_path, doc)
    assert path == tmp_path / "model.yaml"
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=schemas/model.schema.json\n")
    back = runlog.read_model_yaml(path)
    assert back == {"model": {"local_path": "runs/run-0123456789ab/model"}, "base_model": RUN["base_model"],
                    "commit": "a" * 40, "branch": "main", "run_id": RUN["run_id"], "trained_at": RUN["finished_at"]}
    # The shipped schema file (what editors and check-jsonschema use) accepts it too.
    schema = json.loads((ROOT / "schemas" / "model.schema.json").read_text())
    jsonschema.validate(back, schema)


def test_hub_and_together_sections(tmp_path):
    section = {"hub_repo": "org/oig-chat", "revision": "b" * 40, "branch": "text2sql",
               "endpoint": "https://huggingface.co",
               "together": {"model": "org/oig-chat", "endpoint": "org/oig-chat-ep", "endpoint_id": "ep-1",
                            "base_url": "https://api.together.xyz", "unused": None}}
    doc = runlog.model_document(section, RUN)
    assert doc["model"] == {"hub_repo": "org/oig-chat", "revision": "b" * 40, "branch": "text2sql",
                            "endpoint": "https://huggingface.co"}
    assert doc["together"] == {"model": "org/oig-chat", "endpoint": "org/oig-chat-ep", "endpoint_id": "ep-1",
                               "base_url": "https://api.together.xyz"}
    runlog.write_model_yaml(tmp_path, doc)
    assert runlog.read_model_yaml(tmp_path / "model.yaml") == doc


def test_together_only_model_from_hosted_fine_tuning(tmp_path):
    doc = runlog.model_document({"together": {"model": "user/Qwen-oig-ft", "base_url": "https://api.together.xyz"}}, RUN)
    assert "model" not in doc
    runlog.write_model_yaml(tmp_path, doc)
    assert runlog.read_model_yaml(tmp_path / "model.yaml")["together"]["model"] == "user/Qwen-oig-ft"


@pytest.mark.parametrize("section, reason", [
    ({}, "anyOf"),
    ({"hub_repo": "org/x"}, "anyOf"),  # a Hub model without its revision is not a published model
    ({"local_path": ""}, "local_path"),
    ({"local_path": "x", "weights": "y"}, "weights"),
])
def test_refuses_to_write_a_model_yaml_that_points_nowhere(tmp_path, section, reason):
    (tmp_path / "model.yaml").write_text("previous\n")
    doc = {"model": section, "base_model": "tiny", "trained_at": "2026-11-23T10:00:00Z"}
    with pytest.raises(RunLogError, match="refusing to write model.yaml"):
        runlog.write_model_yaml(tmp_path, doc)
    assert (tmp_path / "model.yaml").read_text() == "previous\n"
    assert runlog.model_yaml_problem(doc)


def test_reading_bad_model_yaml_gives_clear_errors(tmp_path):
    path = tmp_path / "model.yaml"
    with pytest.raises(RunLogError, match="does not exist; run `oig train` first"):
        runlog.read_model_yaml(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(RunLogError, match=r"model.yaml:\d+:\d+:"):
        runlog.read_model_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(RunLogError, match="expected a mapping"):
        runlog.read_model_yaml(path)
    path.write_text("model:\n  local_path: x\nbase_model: tiny\n")
    with pytest.raises(RunLogError, match="trained_at"):
        runlog.read_model_yaml(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RunLogError):
        runlog.read_model_yaml(path)


class Strategy(StrEnum):
    STEPS = "steps"


class Version(str):
    pass


def test_training_log_round_trip_keeps_values_and_types(tmp_path):
    run = {**RUN, "hyperparameters": {"learning_rate": 2e-5, "eval_strategy": Strategy.STEPS, "packing": False,
                                      "optim_args": None, "lora_target_modules": ("q_proj", "v_proj")},
           "hardware": {"torch": Version("2.13.0+cpu"), "cpu_count": 2},
           "metrics": [{"step": 10, "loss": 1.25}, {"step": 20, "loss": 0.5, "eval_loss": 0.75}],
           "output_dir": Path("runs/x"), "notes": ["no", "yes", "on", "2026-01-01", "1e3", "null"]}
    path = runlog.write_training_log(tmp_path, run)
    assert path == tmp_path / "training_log"
    text = path.read_text()
    assert text.startswith("# The record of the last training run")
    back = runlog.read_training_log(path)
    assert back["hyperparameters"] == {"learning_rate": 2e-5, "eval_strategy": "steps", "packing": False,
                                       "optim_args": None, "lora_target_modules": ["q_proj", "v_proj"]}
    assert back["hardware"] == {"torch": "2.13.0+cpu", "cpu_count": 2}
    assert back["metrics"][1] == {"step": 20, "loss": 0.5, "eval_loss": 0.75}
    assert back["output_dir"] == "runs/x"
    # Strings that YAML 1.1 would turn into booleans, dates or numbers stay strings.
    assert back["notes"] == ["no", "yes", "on", "2026-01-01", "1e3", "null"]
    # Keys keep their order: a person reads the run id first.
    assert list(back)[:2] == ["run_id", "started_at"]


def test_read_training_log_checks_the_shape(tmp_path):
    (tmp_path / "training_log").write_text("run_id: x\n")
    with pytest.raises(RunLogError, match="no base_model"):
        runlog.read_training_log(tmp_path / "training_log")


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    runlog.write_training_log(tmp_path, RUN)
    before = (tmp_path / "training_log").read_text()

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(RunLogError, match=r"^cannot write .*training_log: disk full$"):
        runlog.write_training_log(tmp_path, {**RUN, "run_id": "run-other"})
    assert (tmp_path / "training_log").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_log"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_root_is_a_clear_error(tmp_path, monkeypatch, code):
    runlog.write_training_log(tmp_path, RUN)
    before = (tmp_path / "training_log").read_bytes()

    def refuse(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(RunLogError, match=rf"^cannot write .*training_log: {os.strerror(code)}$"):
        runlog.write_training_log(tmp_path, {**RUN, "run_id": "run-other"})
    assert (tmp_path / "training_log").read_bytes() == before


def test_write_run_files_is_all_or_nothing(tmp_path, monkeypatch):
    (tmp_path / "training_log").write_text("previous training_log\n")
    (tmp_path / "model.yaml").write_text("previous model.yaml\n")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "model.yaml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    doc = runlog.model_document({"local_path": "runs/r/model"}, RUN)
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(RunLogError, match=r"cannot write .*model.yaml: No space left on device"):
        runlog.write_run_files(tmp_path, RUN, doc)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert (tmp_path / "model.yaml").read_text() == "previous model.yaml\n"
    # A model.yaml that would not pass its schema writes neither file.
    with pytest.raises(RunLogError, match="refusing to write model.yaml"):
        runlog.write_run_files(tmp_path, {**RUN, "run_id": "run-x"}, {"model": {}})
    monkeypatch.setattr(files.os, "replace", real_replace)
    runlog.write_run_files(tmp_path, RUN, doc)
    assert runlog.read_model_yaml(tmp_path / "model.yaml")["model"] == {"local_path": "runs/r/model"}
    assert runlog.read_training_log(tmp_path / "training_log")["run_id"] == RUN["run_id"]


def test_schema_command_writes_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlog, "SCHEMA_FILE", tmp_path / "schemas" / "model.schema.json")
    runlog.main()
    assert (tmp_path / "schemas" / "model.schema.json").read_text() == runlog.rendered_schema()
    assert "model.schema.json" in capsys.readouterr().out


def test_runlog_is_light():
    # training_log and model.yaml are read by light commands (query's Together path, bug reports).
    import subprocess

    code = ("import sys, oig.runlog; heavy = {'torch', 'transformers', 'trl', 'datasets'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the typed forms ---------------------------------------------------------------------------------


HUB_SECTION = {"hub_repo": "org/oig-chat", "revision": "b" * 40, "branch": "text2sql", "endpoint": "https://huggingface.co",
               "together": {"model": "org/oig-chat", "endpoint": "org/oig-chat-ep", "endpoint_id": "ep-1",
                            "base_url": "https://api.together.xyz"}}


@pytest.mark.parametrize("section", [
    {"local_path": "runs/r/model"},
    HUB_SECTION,
    {"together": {"model": "user/Qwen-oig-ft", "base_url": "https://api.together.xyz"}},
])
def test_model_ref_round_trips_model_yaml_exactly(tmp_path, section):
    path = runlog.write_model_yaml(tmp_path, runlog.model_document(section, {**RUN, "git_branch": None}))
    text = path.read_text()
    doc = runlog.read_model_yaml(path)
    ref = runlog.read_model_ref(path)
    assert ref.to_dict() == doc and list(ref.to_dict()) == list(doc)
    assert ref.commit == "a" * 40 and ref.git_branch is None and ref.base_model == RUN["base_model"]
    runlog.write_model_yaml(tmp_path, ref)  # the typed form writes the same file
    assert path.read_text() == text
    # Publishing's section (training_log's `model`) round-trips too, `together` inside.
    assert runlog.ModelRef.from_section(section).section() == section


def test_model_ref_fields():
    ref = runlog.ModelRef.from_section(HUB_SECTION)
    assert (ref.hub_repo, ref.hub_revision, ref.together.name) == ("org/oig-chat", "b" * 40, "org/oig-chat-ep")
    assert runlog.ModelRef(hub_repo="org/x", branch="main").hub_revision == "main"
    assert runlog.TogetherRef("m").name == "m" and runlog.TogetherRef("m").to_dict() == {"model": "m"}
    # Built in code, only what is set is written, in model.yaml's order.
    built = runlog.ModelRef(local_path="runs/x", base_model="tiny", trained_at="2026-11-23T10:00:00Z")
    assert built.to_dict() == {"model": {"local_path": "runs/x"}, "base_model": "tiny",
                               "trained_at": "2026-11-23T10:00:00Z"}
    with pytest.raises(RunLogError, match="unknown key.*weights"):
        runlog.ModelRef.from_section({"local_path": "x", "weights": "y"})
    with pytest.raises(RunLogError, match="together has no model"):
        runlog.ModelRef.from_dict({"together": {"endpoint": "e"}})


def test_run_log_round_trips_training_log_exactly(tmp_path):
    run = {**RUN, "finished_at": None, "backend": "trl", "mixture": {"rows": 3}, "steps": 2, "train_loss": 1.5,
           "eval_loss": None, "metrics": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
           "model": HUB_SECTION, "bugs": [{"number": 1, "verdict": "fixed"}], "published": {"mode": "hub"}}
    path = runlog.write_training_log(tmp_path, run)
    text = path.read_text()
    log = runlog.read_run_log(path)
    assert (log.run_id, log.steps, log.eval_loss, log.finished_at) == (RUN["run_id"], 2, None, None)
    assert log.model.revision == "b" * 40 and log.model.together.endpoint_id == "ep-1"
    assert log.extra == {"backend": "trl", "mixture": {"rows": 3}, "published": {"mode": "hub"}}
    assert log.to_dict() == runlog.read_training_log(path) and list(log.to_dict()) == list(run)
    runlog.write_training_log(tmp_path, log)
    assert path.read_text() == text
    runlog.write_run_files(tmp_path, log, runlog.ModelRef.from_dict(runlog.model_document(HUB_SECTION, run)))
    assert path.read_text() == text and runlog.read_model_ref(tmp_path / "model.yaml").hub_repo == "org/oig-chat"
    with pytest.raises(RunLogError, match="no base_model"):
        runlog.RunLog.from_dict({"run_id": "x"})
    with pytest.raises(RunLogError, match="training_log: model is not a mapping"):
        runlog.RunLog.from_dict({**RUN, "model": "somewhere"})

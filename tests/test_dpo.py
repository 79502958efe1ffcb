"""method: dpo — preference pairs from Preferences sections, SFT then DPO (or DPO alone), with TRL's DPOTrainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from oig.cli import main
from oig.data.config import parse_training_config
from oig.train import dpo

PAIRS_YAML = """IOPairs:
  - input: What is the capital of France?
    output: The capital of France is Paris.
  - input: Say hello
    output: Hello there!
Preferences:
  - prompt: What is the capital of Spain?
    chosen: Madrid.
    rejected: I do not know.
  - prompt: Name a color
    chosen: Blue.
    rejected: No.
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_read_preferences_and_conversations(tmp_path):
    assert dpo.read_preferences(tmp_path) == []
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    (tmp_path / dpo.PREFERENCES_FILE).write_text(json.dumps({"slice": "s", **pair}) + "\n")
    assert dpo.read_preferences(tmp_path) == [{**pair, "slice": "s"}]  # the slice, for messages about it
    assert [c["messages"][-1]["content"] for c in dpo.as_conversations([pair])] == ["a", "b"]
    assert [c.get("slice") for c in dpo.as_conversations([{**pair, "slice": "s"}])] == ["s", "s"]
    (tmp_path / dpo.PREFERENCES_FILE).write_text('{"prompt": 1}\n')
    with pytest.raises(dpo.DPOError, match="not a preference pair"):
        dpo.read_preferences(tmp_path)


def test_method_and_beta_are_checked_in_training_yaml():
    config, problems = parse_training_config(b"Training:\n  method: dpo\n  dpo_beta: 0.2\n", Path("training.yaml"))
    assert problems == [] and config.oig == {"method": "dpo", "dpo_beta": 0.2}
    _, problems = parse_training_config(b"Training:\n  method: ppo\n  dpo_beta: 0\n", Path("training.yaml"))
    assert [p.line for p in problems] == [2, 3]
    assert "one of 'sft', 'dpo'" in problems[0].message


def _log(repo: Path) -> dict:
    return yaml.safe_load((repo / "training_log").read_text())


@pytest.mark.slow
def test_sft_then_dpo_on_the_tiny_model(repo, capsys):
    (repo / "data" / "qa.yaml").write_text(PAIRS_YAML)
    (repo / "training.yaml").write_text("Training:\n  method: dpo\n")
    assert main(["train", "--base-model", "tiny", "--publish", "local"]) == 0
    log = _log(repo)
    assert log["method"] == "dpo" and log["data"]["preference_pairs"] == 2 and log["steps"] > 0
    last = log["dpo"]["metrics"][-1]
    assert log["dpo"]["beta"] == 0.1 and log["dpo"]["steps"] > 0
    assert last["rewards_accuracies"] == 1.0 and last["rewards_margins"] > 0  # chosen now beats rejected
    assert yaml.safe_load((repo / "model.yaml").read_text())["model"]["local_path"]
    capsys.readouterr()
    assert main(["query", "Say hello"]) == 0  # what SFT taught survives DPO
    assert capsys.readouterr().out.strip() == "Hello there!"


@pytest.mark.slow
def test_dpo_alone_when_there_is_no_sft_data(repo):
    (repo / "data" / "prefs.yaml").write_text("Preferences:\n" + PAIRS_YAML.split("Preferences:\n", 1)[1])
    (repo / "training.yaml").write_text("Training:\n  method: dpo\n  dpo_beta: 0.5\n")
    assert main(["train", "--base-model", "tiny", "--publish", "local"]) == 0
    log = _log(repo)
    assert log["data"] == {"train_examples": 0, "eval_examples": 0, "preference_pairs": 2}
    assert log["dpo"]["beta"] == 0.5 and log["dpo"]["metrics"][-1]["rewards_margins"] > 0
    assert (repo / log["model"]["local_path"] / "config.json").is_file()


def test_dpo_without_pairs_is_a_clear_error(repo, capsys):
    (repo / "data" / "qa.yaml").write_text(PAIRS_YAML.split("Preferences:\n", 1)[0])
    (repo / "training.yaml").write_text("Training:\n  method: dpo\n")
    assert main(["train", "--base-model", "tiny", "--publish", "none"]) == 1
    assert "`method: dpo` needs preference pairs" in capsys.readouterr().err
    assert not (repo / "training_log").exists()


@pytest.mark.slow
def test_lora_and_packing_train_and_save_merged_weights(repo):
    """LoRA SFT with packing, then DPO with fresh adapters on the merged SFT model (reference: adapters off)."""
    (repo / "data" / "qa.yaml").write_text(PAIRS_YAML)
    (repo / "training.yaml").write_text("Training:\n  lora: true\n  lora_r: 8\n  packing: true\n  method: dpo\n"
                                        "  max_steps: 8\n")
    assert main(["train", "--base-model", "tiny", "--publish", "local"]) == 0
    log = _log(repo)
    assert log["hyperparameters"]["lora"] is True and log["hyperparameters"]["packing"] is True
    assert log["steps"] == 8 and log["dpo"]["steps"] == 8
    model_dir = repo / log["model"]["local_path"]
    assert (model_dir / "model.safetensors").is_file()  # merged weights, loadable without peft
    assert not (model_dir / "adapter_config.json").exists()

"""oig train: loss masks, the eval split, SFTConfig resolution, checkpoints, and the tiny model end to end,
including a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from oig import runlog
from oig.cli import main
from oig.data.config import TrainingConfig
from oig.errors import PublishError
from oig.train import masking, tiny
from oig.train import mixture as train_mixture
from oig.train import run as run_module
from oig.train.args import TINY_HYPERPARAMETERS, sft_config
from oig.train.checkpoints import RUN_MARKER, last_checkpoint
from oig.train.errors import TrainError
from oig.train.mixture import held_out_log, read_eval, read_mixture
from oig.train.record import hyperparameters, make_run_id, metrics_history, run_mean_loss
from oig.train.run import TrainOptions
from oig.train.sft import make_trainer

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "apple", "banana", "cherry", "dog", "eagle", "falcon", "grape", "house", "igloo", "jelly", "kite",
    "lemon", "mango", "night", "ocean", "piano", "queen", "river", "snake", "tiger",
]
PAIRS = [(f"What is the code word {i}?", f"The code word {i} is {w}.") for i, w in enumerate(WORDS)]
RECORDS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Go away.", "weight": 0},
    {"role": "user", "content": "Hi again"},
    {"role": "assistant", "content": "Hello! How can I help?"},
]


def config(training: dict | None = None, **oig) -> TrainingConfig:
    return TrainingConfig(path=Path("training.yaml"), training=dict(training or {}), seed=42, oig=oig)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    texts = [*tiny.texts_of(RECORDS), *tiny.texts_of([{"messages": MULTI}])]
    return tiny.build_tiny(texts, tmp_path_factory.mktemp("tok"), seed=1)


@pytest.fixture(scope="module")
def tok(built):
    return built[1]


def learned_text(tok, ids, labels) -> str:
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])


# --- loss masks ------------------------------------------------------------------------------------------


def test_only_assistant_turns_with_weight_are_learned(tok):
    ids, labels = masking.encode(MULTI, tok, tok.chat_template)
    assert len(ids) == len(labels)
    assert learned_text(tok, ids, labels) == "Hello! How can I help?<|im_end|>"
    # The weight-0 reply stays in the input, as context the model reads but is not taught.
    assert "Go away.<|im_end|>" in tok.decode(ids)


def test_weight_zero_labels_are_all_masked_by_span(tok):
    _, spans = masking._assistant_spans([{k: v for k, v in m.items() if k != "weight"} for m in MULTI], tok, tok.chat_template)
    ids, labels = masking.encode(MULTI, tok, tok.chat_template)
    (s0, e0), (s1, e1) = spans
    assert tok.decode(ids[s0:e0]) == "Go away.<|im_end|>"
    assert labels[s0:e0] == [-100] * (e0 - s0)
    assert labels[s1:e1] == ids[s1:e1]


def test_the_trainer_learns_exactly_these_labels(built, tmp_path):
    model, tok = built
    ids, labels = masking.encode(MULTI, tok, tok.chat_template)
    ds, _ = masking.to_dataset([{"messages": MULTI}], tok, tok.chat_template)
    args, _ = sft_config(config({"max_steps": 1}), tmp_path, on_gpu=False, has_eval=False)
    trainer = make_trainer(model, tok, args, ds, None, config())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][0].tolist() == labels  # TRL keeps them: the weight-0 reply stays at -100


def test_full_sequence_loss_still_masks_weight_zero_turns(tok):
    ids, labels = masking.encode(MULTI, tok, tok.chat_template, assistant_only=False)
    text = learned_text(tok, ids, labels)
    assert "Be brief." in text and "Hi again" in text and "Hello! How can I help?" in text
    assert "Go away." not in text


def test_template_without_generation_markers_falls_back_to_prefixes(tok):
    plain = tiny.CHATML_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    ids, labels = masking.encode(MULTI, tok, plain)
    marked_ids, marked_labels = masking.encode(MULTI, tok, tok.chat_template)
    assert ids == marked_ids
    # Found by rendering prefixes, the turn also owns the newline after <|im_end|>: harmless, and it is
    # the same reply and end-of-turn token that is learned.
    assert learned_text(tok, ids, labels).strip() == learned_text(tok, marked_ids, marked_labels)


def test_a_hub_template_without_markers_gets_trls_training_version(tmp_path):
    import trl

    qwen = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    tok = tiny.build_tiny(tiny.texts_of(RECORDS), tmp_path, seed=1)[1]
    tok.chat_template = qwen  # Qwen2.5-Instruct's own template: no {% generation %} markers
    template = masking.training_template(tok)
    assert template != qwen and masking.has_markers(template)
    for t in (template, qwen):  # TRL's training template, or growing prefixes of the model's own
        ids, labels = masking.encode(MULTI, tok, t)
        assert tok.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
        assert learned_text(tok, ids, labels).strip() == "Hello! How can I help?<|im_end|>"


def test_a_template_that_refuses_a_conversation_is_a_clear_error(tok):
    gemma_like = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}" + tiny.CHATML_TEMPLATE)
    with pytest.raises(masking.MaskingError, match="refused conversation 2 of the mixture: System role not supported"):
        masking.to_dataset([RECORDS[0], {"messages": MULTI}], tok, gemma_like)


def test_to_dataset_drops_conversations_with_nothing_to_learn(tok):
    silent = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}
    ds, dropped = masking.to_dataset([RECORDS[0], silent], tok, tok.chat_template)
    assert dropped == 1 and len(ds) == 1 and ds.column_names == ["input_ids", "labels"]
    assert masking.to_dataset([silent], tok, tok.chat_template) == (None, 1)


# --- the held-out split: oig mix's, read from the mixture folder -----------------------------------------


def write_mixture_dir(path: Path, lines: list[dict], held: list[dict] | None, examples: list[dict]) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"total": len(lines), "eval": {"examples": examples}}))
    (path / "mixture.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if held is not None:
        (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return path


def test_eval_records_come_from_eval_jsonl(tmp_path):
    folder = write_mixture_dir(tmp_path / "m", RECORDS[:18], RECORDS[18:], [{"slice": "codes", "index": 18}])
    manifest, records = read_mixture(folder)
    assert len(records) == 18 and read_eval(folder) == RECORDS[18:]
    assert read_eval(write_mixture_dir(tmp_path / "old", RECORDS, None, [])) == []  # a folder from before the split
    (folder / "eval.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(TrainError, match="eval.jsonl:1"):
        read_eval(folder)


def test_training_log_lists_the_held_out_examples_or_points_at_the_manifest():
    few = {"eval": {"examples": [{"slice": "a", "index": i} for i in range(3)]}}
    assert held_out_log(few, "runs/r/mixture/manifest.json") == [{"slice": "a", "index": i} for i in range(3)]
    many = {"eval": {"examples": [{"slice": "a", "index": i} for i in range(train_mixture.MAX_LOGGED_HELD_OUT + 1)]}}
    assert held_out_log(many, "runs/r/mixture/manifest.json") == {
        "count": 201, "listed_in": "runs/r/mixture/manifest.json (eval.examples)"}
    assert held_out_log({}, "m") == []


class Stop(Exception):
    pass


def test_the_trainer_receives_the_mixture_shares(tmp_path, monkeypatch, offline):
    """What the SFT dataset is built from holds the Mixture's shares, and no held-out example."""
    repo = tmp_path / "repo"
    make_repo(repo, "Training:\n  seed: 42\n  eval_size: 0.1\nMixture:\n  fix: 0.25\n")
    (repo / "data" / "fix.yaml").write_text("IOPairs:\n  - input: the fix\n    output: fixed\n")
    (repo / "data" / "more.yaml").write_text(yaml.safe_dump(
        {"IOPairs": [{"input": f"more {i}", "output": f"answer {i}"} for i in range(40)]}))
    monkeypatch.chdir(repo)
    handed: list[list[dict]] = []

    def tokenise(records, *args, **kwargs):
        handed.append(records)
        if len(handed) == 2:
            raise Stop
        return object(), 0

    monkeypatch.setattr("oig.train.sft.tokenise", tokenise)
    with pytest.raises(Stop):
        train_mixture_run(repo)
    trained, evaluated = handed
    # codes 20 and more 40 hold out 2 and 4; fix (1 example) stays whole: 55 to train on, fix a quarter.
    assert Counter(r["slice"] for r in trained) == {"fix": 14, "codes": 14, "more": 27}
    assert Counter(r["slice"] for r in evaluated) == {"codes": 2, "more": 4}
    assert not {json.dumps(r["messages"]) for r in trained} & {json.dumps(r["messages"]) for r in evaluated}
    mixture_dir = next(repo.glob("runs/*/mixture"))
    assert len((mixture_dir / "mixture.jsonl").read_text().splitlines()) == len(trained)


def train_mixture_run(repo: Path) -> None:
    from oig.train.run import train

    train(TrainOptions(root=repo, config=repo / "training.yaml", data=repo / "data", base_model="tiny",
                       publish="none"))


# --- SFTConfig resolution -------------------------------------------------------------------------------------


def test_defaults_on_cpu(tmp_path):
    args, overrides = sft_config(config({"learning_rate": 1e-4}), tmp_path,
                                 on_gpu=False, has_eval=True)
    assert overrides == {}
    assert args.output_dir == str(tmp_path)  # oig decides where checkpoints go
    assert args.learning_rate == 1e-4
    assert (args.bf16, args.activation_checkpointing, args.report_to) == (False, False, [])
    assert (args.save_steps, args.eval_steps, args.seed, args.data_seed) == (100, 100, 42, 42)
    assert args.eval_strategy == "steps" and args.save_strategy == "steps"
    no_eval, _ = sft_config(config({"eval_strategy": "steps"}), tmp_path, on_gpu=False, has_eval=False)
    assert no_eval.eval_strategy == "no"


def test_tiny_uses_its_own_hyperparameters_and_says_so(tmp_path):
    args, overrides = sft_config(config({"learning_rate": 2e-5, "max_steps": 7}), tmp_path, on_gpu=False,
                                 has_eval=False, tiny_model=True)
    assert args.learning_rate == TINY_HYPERPARAMETERS["learning_rate"]
    assert args.max_steps == 7  # still caps the run
    assert overrides == {"learning_rate": {"training.yaml": 2e-5, "used": TINY_HYPERPARAMETERS["learning_rate"]}}


def test_momentum_goes_to_the_optimizer_in_use(tmp_path):
    adam, _ = sft_config(config(momentum=0.8), tmp_path, on_gpu=False, has_eval=False)
    assert adam.adam_beta1 == 0.8
    sgd, _ = sft_config(config({"optim": "sgd", "optim_args": "nesterov=True"}, momentum=0.9), tmp_path,
                        on_gpu=False, has_eval=False)
    assert sgd.optim_args == "nesterov=True,momentum=0.9"
    with pytest.raises(TrainError, match="keep one"):
        sft_config(config({"adam_beta1": 0.5}, momentum=0.9), tmp_path, on_gpu=False, has_eval=False)
    with pytest.raises(TrainError, match="no meaning for the optimizer 'adafactor'"):
        sft_config(config({"optim": "adafactor"}, momentum=0.9), tmp_path, on_gpu=False, has_eval=False)


def test_bad_trainer_settings_are_a_clear_error(tmp_path):
    with pytest.raises(TrainError, match="training.yaml"):
        sft_config(config({"lr_scheduler_type": "sideways"}), tmp_path, on_gpu=False, has_eval=False)


def test_fields_oig_owns_are_refused_even_without_validation(tmp_path):
    # A config built in code skips `oig validate`; the trainer must not drop these without a word.
    cfg = config({"hub_model_id": "org/x", "push_to_hub": True, "output_dir": "elsewhere", "learning_rate": 1e-4})
    with pytest.raises(TrainError) as err:
        sft_config(cfg, tmp_path, on_gpu=False, has_eval=False)
    for key in ("hub_model_id", "push_to_hub", "output_dir"):
        assert key in str(err.value)
    assert "oig publishes the model itself" in str(err.value)


def test_recorded_hyperparameters(tmp_path):
    cfg = config({"learning_rate": 1e-4, "packing": True}, momentum=0.9, eval_size=0.2, lora=True, lora_r=8)
    args, _ = sft_config(cfg, tmp_path, on_gpu=False, has_eval=True)
    hp = hyperparameters(args, cfg)
    assert hp["learning_rate"] == 1e-4 and hp["packing"] is True and hp["adam_beta1"] == 0.9
    assert hp["momentum"] == 0.9 and hp["eval_size"] == 0.2 and hp["lora"] is True and hp["lora_r"] == 8
    assert "output_dir" not in hp and hp["per_device_train_batch_size"] == args.per_device_train_batch_size


# --- checkpoints, mixtures, logs ------------------------------------------------------------------------------


def test_last_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    for step, state in ((10, "{}"), (20, "{}"), (30, '{"trunc')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-40").mkdir()  # killed before its state was written
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "checkpoint-x"]


def test_checkpoints_of_another_run_are_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    assert last_checkpoint(ckpt, "run-a") is None
    (ckpt / "checkpoint-10").mkdir()
    (ckpt / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(ckpt, "run-a") == ckpt / "checkpoint-10"  # the same run resumes
    assert last_checkpoint(ckpt, "run-b") is None  # other data or config in the same --output
    assert "belong to another run (run-a)" in capsys.readouterr().err
    assert not (ckpt / "checkpoint-10").exists() and (ckpt / RUN_MARKER).read_text() == "run-b\n"


def test_read_mixture_errors(tmp_path):
    with pytest.raises(TrainError, match="manifest.json is missing"):
        read_mixture(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "mixture.jsonl").write_text("")
    with pytest.raises(TrainError, match="is empty"):
        read_mixture(tmp_path)
    (tmp_path / "mixture.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    with pytest.raises(TrainError, match=r"mixture.jsonl:1: a conversation must end with an assistant"):
        read_mixture(tmp_path)
    (tmp_path / "mixture.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(TrainError, match=r"mixture.jsonl:2: not JSON"):
        read_mixture(tmp_path)


def test_metrics_history_merges_loss_and_eval_loss_by_step():
    history = [{"loss": 2.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 10},
               {"eval_loss": 2.5, "step": 10}, {"loss": 1.0, "step": 20, "epoch": 1.0},
               {"train_runtime": 3.0, "train_loss": 1.5, "step": 20}]
    assert metrics_history(history) == [
        {"step": 10, "loss": 2.0, "learning_rate": 1e-3, "epoch": 0.5, "eval_loss": 2.5},
        {"step": 20, "loss": 1.0, "epoch": 1.0},
    ]


def test_run_id_names_the_same_run_the_same(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.yaml").write_text("IOPairs: []\n")
    (tmp_path / "training.yaml").write_text("Training: {}\n")
    opts = TrainOptions(config=tmp_path / "training.yaml", data=tmp_path / "data")
    first = make_run_id("abc", "tiny", opts)
    assert first == make_run_id("abc", "tiny", opts) and first.startswith("run-")
    assert first != make_run_id("abd", "tiny", opts)
    assert first != make_run_id("abc", "other", opts)
    (tmp_path / "data" / "a.yaml").write_text("IOPairs: [{input: a, output: b}]\n")
    assert first != make_run_id("abc", "tiny", opts)


# --- the command ---------------------------------------------------------------------------------------------


def make_repo(root: Path, training: str, pairs=PAIRS) -> Path:
    (root / "data").mkdir(parents=True)
    rows = [{"input": q, "output": a} for q, a in pairs]
    (root / "data" / "codes.yaml").write_text(yaml.safe_dump({"IOPairs": rows, "license": "CC0-1.0"}))
    (root / "training.yaml").write_text(training)
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "."], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-qm", "data"], check=True)
    return root


def head(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_help(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--base-model", "--allow-local-base-model", "--publish", "--output", "--mixture",
                 "--together"):
        assert flag in out


def test_help_and_parsing_do_not_import_the_training_stack():
    code = ("import sys, contextlib, io\nfrom oig.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['train', '--help'])\n"
            "print(sorted({'torch', 'transformers', 'trl', 'datasets', 'huggingface_hub'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_usage_errors(capsys):
    assert main(["train", "--publish", "github"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_publishing_settings_are_checked_before_training(tmp_path, monkeypatch, capsys):
    make_repo(tmp_path, "Training:\n  base_model: tiny\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--publish", "hub"]) == 1
    assert "needs `hub_repo: ORG/NAME`" in capsys.readouterr().err
    assert main(["train", "--publish", "local", "--together"]) == 1
    assert "use it with --publish hub" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was trained


@pytest.mark.parametrize(("hub_kwargs", "token", "message"), [
    (None, None, "HF_TOKEN is not set"),
    ({}, "hf_wrong", "refused the token (HTTP 401)"),
    ({"role": "read"}, "hf_test_token", "read-only token"),
    ({"user": "someone"}, "hf_test_token", "cannot write to org/model"),
    ({"user": "someone", "orgs": {"org": "read"}}, "hf_test_token", "cannot write to org/model"),
    ({"role": "fineGrained", "scoped": [{"entity": {"type": "org", "name": "org"}, "permissions": ["repo.content.read"]}]},
     "hf_test_token", "without `repo.write`"),
])
def test_hub_access_is_checked_before_training(tmp_path, monkeypatch, capsys, hub_kwargs, token, message):
    import huggingface_hub.constants
    from fake_hub import FakeHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    make_repo(tmp_path, "Training:\n  base_model: tiny\n  hub_repo: org/model\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(**(hub_kwargs or {})) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        assert main(["train", "--publish", "hub"]) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was trained" in err and "Traceback" not in err
    assert token is None or token not in err
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_qlora_adapters_of_a_local_base_cannot_go_to_the_hub(tmp_path, monkeypatch, capsys):
    make_repo(tmp_path, "Training:\n  base_model: tiny\n  load_in_4bit: true\n  hub_repo: org/model\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--publish", "hub"]) == 1
    assert "the base model must be a Hub id" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_no_base_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(make_repo(tmp_path, "Training:\n  seed: 1\n"))
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert "no base model" in err and "--base-model" in err and "Traceback" not in err
    assert not (tmp_path / "training_log").exists() and not (tmp_path / "model.yaml").exists()


def test_invalid_slices_stop_before_training(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path, "Training:\n  seed: 1\n")
    (repo / "data" / "bad.yaml").write_text("IOPairs:\n  - input: a\n    outptu: b\n")
    monkeypatch.chdir(repo)
    assert main(["train", "--base-model", "tiny"]) == 1
    assert "bad.yaml" in capsys.readouterr().err
    assert not (repo / "training_log").exists()


def test_a_base_model_that_cannot_load_is_a_clear_error(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.chdir(make_repo(tmp_path, "Training:\n  seed: 1\n"))
    assert main(["train", "--base-model", str(tmp_path / "no-such-model"), "--allow-local-base-model",
                 "--publish", "none"]) == 1
    err = capsys.readouterr().err
    assert "cannot load the base model" in err and "Traceback" not in err


def answers(model_dir: Path, questions: list[str]) -> list[str]:
    """Greedy answers of the saved model, loaded the way users load it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    for question in questions:
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        ids = model.generate(**prompt, max_new_tokens=40, do_sample=False)
        out.append(tok.decode(ids[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.slow
def test_tiny_model_end_to_end(tmp_path, monkeypatch, capsys, offline):
    import torch

    repo = make_repo(tmp_path, "Training:\n  seed: 42\n  eval_size: 2\n")
    monkeypatch.chdir(repo)
    threads = torch.get_num_threads()
    assert main(["train", "--base-model", "tiny"]) == 0
    assert torch.get_num_threads() == threads  # tiny trains on one thread, then gives the rest back
    assert "wrote training_log and model.yaml" in capsys.readouterr().err

    log = runlog.read_training_log(repo / "training_log")
    assert log["run_id"].startswith("run-") and log["git_commit"] == head(repo)
    assert log["base_model"] == "tiny" and log["backend"] == "trl" and log["resumed_from"] is None
    assert log["output_dir"] == f"runs/{log['run_id']}"
    assert log["hyperparameters"]["learning_rate"] == TINY_HYPERPARAMETERS["learning_rate"]
    assert log["hyperparameters"]["seed"] == 42 and log["hyperparameters"]["bf16"] is False
    (codes,) = log["mixture"]["slices"]
    assert (codes["name"], codes["count"], codes["held_out"], log["mixture"]["total"]) == ("codes", 18, 2, 18)
    assert len(log["mixture"]["sha256"]) == 64
    held_list = log["mixture"]["eval"]["examples"]
    assert log["data"] == {"train_examples": 18, "eval_examples": 2, "dropped_without_trainable_tokens": 0,
                           "held_out": held_list}
    assert len(held_list) == 2 and {e["slice"] for e in held_list} == {"codes"}
    losses = [m["loss"] for m in log["metrics"] if "loss" in m]
    assert len(losses) >= 10 and losses[-1] < losses[0] / 3
    assert any("eval_loss" in m for m in log["metrics"]) and log["eval_loss"] > 0
    assert log["steps"] == 750 and log["tokens"] > 0 and log["tokens_per_second"] > 0
    assert log["hardware"]["accelerator"] == "cpu" and log["hardware"]["cpu_count"] >= 1
    assert log["hardware"]["distributed"] == "none"  # one plain process
    if not os.environ.get("OMP_NUM_THREADS"):
        assert log["hardware"]["cpu_threads"] == 1
    assert log["duration_s"] > 0 and log["finished_at"] >= log["started_at"]
    assert log["published"] == {"mode": "local"}

    doc = runlog.read_model_yaml(repo / "model.yaml")
    assert doc["model"] == {"local_path": f"runs/{log['run_id']}/model"} == log["model"]
    assert (doc["base_model"], doc["commit"], doc["run_id"]) == ("tiny", head(repo), log["run_id"])

    # The model learned the slice: greedy answers are the trained outputs.
    held_out = {PAIRS[e["index"]][0] for e in held_list}
    trained = [(q, a) for q, a in PAIRS if q not in held_out]
    got = answers(repo / doc["model"]["local_path"], [q for q, _ in trained])
    right = sum(g == a for g, (_, a) in zip(got, trained, strict=True))
    assert right >= len(trained) - 2, f"{right}/{len(trained)} answers right"

    # Rerunning the finished run resumes at its end; --publish none leaves model.yaml as it was.
    # With --bugs, the previous model (model.yaml's) and the new one answer each reported bug.
    question, expected = trained[0]
    (repo / "bugs.json").write_text(json.dumps([{"number": 7, "input": question, "expected": expected,
                                                 "output": "wrong"}]))
    before = (repo / "model.yaml").read_bytes()
    assert main(["train", "--base-model", "tiny", "--publish", "none", "--bugs", "bugs.json"]) == 0
    err = capsys.readouterr().err
    assert "wrote training_log" in err and "bugs: 1 checked" in err
    assert (repo / "model.yaml").read_bytes() == before
    again = runlog.read_training_log(repo / "training_log")
    assert again["published"] == {"mode": "none"} and again["resumed_from"].endswith("checkpoint-750")
    assert again["run_id"] == log["run_id"] and again["train_loss"] is not None
    (bug,) = again["bugs"]
    assert (bug["number"], bug["before_source"], bug["after"]) == (7, "previous model", got[0])
    assert again["bugs_summary"]["total"] == 1


def test_root_writes_training_log_and_model_yaml_elsewhere(tmp_path, monkeypatch, capsys, offline):
    # make demo's case: a repository with a committed model.yaml and training_log it must not overwrite.
    repo = make_repo(tmp_path, "Training:\n  seed: 42\n  eval_size: 0\n  max_steps: 3\n")
    (repo / "model.yaml").write_text("committed model.yaml\n")
    (repo / "training_log").write_text("committed training_log\n")
    monkeypatch.chdir(repo)
    assert main(["train", "--base-model", "tiny", "--output", "runs/demo/train", "--root", "runs/demo"]) == 0
    assert "wrote training_log and model.yaml in runs/demo" in capsys.readouterr().err
    assert (repo / "model.yaml").read_text() == "committed model.yaml\n"
    assert (repo / "training_log").read_text() == "committed training_log\n"
    doc = runlog.read_model_yaml(repo / "runs" / "demo" / "model.yaml")
    assert doc["model"] == {"local_path": "train/model"}  # relative to model.yaml's folder
    log = runlog.read_training_log(repo / "runs" / "demo" / "training_log")
    assert log["git_commit"] == head(repo) and log["output_dir"] == "runs/demo/train"
    assert main(["query", "--model-yaml", "runs/demo/model.yaml", "--max-tokens", "4", "Hi"]) == 0


def test_run_mean_loss_counts_each_logged_loss_for_its_steps():
    history = [{"loss": 4.0, "step": 10}, {"eval_loss": 3.0, "step": 10}, {"loss": 2.0, "step": 20},
               {"loss": 1.0, "step": 25}, {"train_loss": 9.9, "step": 25}]
    assert run_mean_loss(history) == pytest.approx((4.0 * 10 + 2.0 * 10 + 1.0 * 5) / 25)
    assert run_mean_loss([{"eval_loss": 1.0, "step": 1}]) is None


def test_train_loss_means_the_same_on_a_fresh_and_a_resumed_run(tmp_path, monkeypatch, capsys, offline):
    repo = make_repo(tmp_path, "Training:\n  seed: 42\n  eval_size: 0\n  max_steps: 40\n  save_steps: 20\n"
                               "  logging_steps: 5\n")
    monkeypatch.chdir(repo)
    assert main(["train", "--base-model", "tiny", "--publish", "none"]) == 0
    fresh = runlog.read_training_log(repo / "training_log")
    losses = [m["loss"] for m in fresh["metrics"] if "loss" in m]
    assert fresh["train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)  # 8 windows of 5 steps

    # Resume from the checkpoint halfway: the second half is trained again, the first comes from it.
    checkpoints = next(repo.glob("runs/*/checkpoints"))
    shutil.rmtree(checkpoints / "checkpoint-40")
    assert main(["train", "--base-model", "tiny", "--publish", "none"]) == 0
    resumed = runlog.read_training_log(repo / "training_log")
    assert resumed["resumed_from"].endswith("checkpoint-20") and resumed["steps"] == 40
    # The whole run's mean, not the mean of the 20 steps this process trained (lower: the loss fell).
    assert resumed["train_loss"] == pytest.approx(fresh["train_loss"], rel=1e-3)
    second_half = [m["loss"] for m in resumed["metrics"] if "loss" in m and m["step"] > 20]
    assert resumed["train_loss"] > sum(second_half) / len(second_half)

    # A rerun of the finished run trains nothing and still reports the same.
    assert main(["train", "--base-model", "tiny", "--publish", "none"]) == 0
    assert runlog.read_training_log(repo / "training_log")["train_loss"] == resumed["train_loss"]


SLOW_CHILD = """
import sys, time
from transformers import Trainer
step = Trainer.training_step
def slow_step(self, *args, **kwargs):
    time.sleep(0.03)  # about 10 s for 300 steps: time to see a checkpoint and kill the run midway
    return step(self, *args, **kwargs)
Trainer.training_step = slow_step
from oig.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys, offline):
    repo = make_repo(tmp_path, "Training:\n  seed: 42\n  eval_size: 2\n  max_steps: 300\n  save_steps: 20\n"
                               "  logging_steps: 10\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, "train", "--base-model", "tiny"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(repo.glob("runs/*/checkpoints/checkpoint-*/trainer_state.json")):
            assert child.poll() is None, f"training ended before a checkpoint: {child.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert not (repo / "training_log").exists()  # it never finished
    (checkpoint,) = last_checkpoint(next(repo.glob("runs/*/checkpoints"))).parts[-1:]
    killed_at = int(checkpoint.removeprefix("checkpoint-"))
    assert 20 <= killed_at < 300

    # The killed run tokenised its train and held-out splits once, into the run folder; the rerun loads them.
    assert len(list(next(repo.glob("runs/*/tokenised")).iterdir())) == 2
    encoded: list[int] = []
    monkeypatch.setattr("oig.train.tokenise.encode_many", lambda records, *a, **k: encoded.append(len(records)))
    monkeypatch.chdir(repo)
    assert main(["train", "--base-model", "tiny"]) == 0
    assert "resumed from runs/" in capsys.readouterr().err
    assert encoded == []
    log = runlog.read_training_log(repo / "training_log")
    assert log["resumed_from"] == f"runs/{log['run_id']}/checkpoints/checkpoint-{killed_at}"
    assert log["steps"] == 300
    # The loss history spans the whole run: the steps before the kill come from the checkpoint.
    steps = [m["step"] for m in log["metrics"] if "loss" in m]
    assert steps[0] == 10 and steps[-1] == 300 and steps == sorted(set(steps))
    # Only the steps after the checkpoint were trained again.
    assert log["tokens"] < 300 * 4 * 40
    assert runlog.read_model_yaml(repo / "model.yaml")["run_id"] == log["run_id"]


def test_backend_together_trains_on_the_hosted_service(tmp_path, monkeypatch, capsys):
    import functools

    from fake_together import FakeTogether

    from oig.train import together as hosted

    repo = make_repo(tmp_path, "Training:\n  backend: together\n  base_model: org/Base-7B\n  epochs: 2\n")
    monkeypatch.chdir(repo)
    # The job is polled with real sleeps of 20 s; here the fake's states advance at once.
    monkeypatch.setattr(hosted, "train_on_together",
                        functools.partial(hosted.train_on_together, sleep=lambda s: None))
    with FakeTogether() as fake:
        monkeypatch.setenv("TOGETHER_API_KEY", fake.api_key)
        monkeypatch.setenv("TOGETHER_BASE_URL", fake.url)
        assert main(["train", "--base-model", "org/Other-8B"]) == 0
        (create,) = fake.find("POST", "/v1/fine-tunes")
    assert "trained on Together, job ft-1" in capsys.readouterr().err
    assert create["json"]["model"] == "org/Other-8B" and create["json"]["n_epochs"] == 2
    # Settings are sent explicitly: a full fine-tune, no packing, the held-out split as the validation file.
    assert create["json"]["training_type"]["type"] == "Full" and create["json"]["packing"] is False
    assert create["json"]["validation_file"] == "file-2" and create["json"]["n_evals"] == 2
    log = runlog.read_training_log(repo / "training_log")
    # Together gets mixture.jsonl: the 20 codes less the 2 that oig mix holds out (eval_size unset: 10%).
    assert log["backend"] == "together" and log["together_job"]["examples"] == 18
    assert log["mixture"]["total"] == 18 and log["published"] == {"mode": "together"}
    doc = runlog.read_model_yaml(repo / "model.yaml")
    assert "model" not in doc and doc["together"]["model"] == log["model"]["together"]["model"]
    assert doc["together"]["base_url"] == fake.url and doc["base_model"] == "org/Other-8B"
    assert not list(repo.glob("runs/*/checkpoints"))  # nothing trained here


@pytest.mark.slow
def test_a_failed_publish_keeps_the_model_and_model_yaml(tmp_path, monkeypatch, capsys, offline):
    from oig.publish import publish

    repo = make_repo(tmp_path, "Training:\n  seed: 42\n  max_steps: 3\n  hub_repo: org/model\n")
    (repo / "model.yaml").write_text("previous model.yaml\n")
    monkeypatch.chdir(repo)

    def upload_fails(*args, **kwargs):  # what publish raises once its retries are spent
        raise PublishError("the upload to org/model failed after 5 attempts: 503 Service Unavailable")

    monkeypatch.setattr(publish, "publish", upload_fails)
    monkeypatch.setattr(run_module, "check_hub_access", lambda repo_id, branch: None)  # a token that may write
    assert main(["train", "--base-model", "tiny", "--publish", "hub"]) == 1
    assert "503 Service Unavailable" in capsys.readouterr().err
    assert (repo / "model.yaml").read_text() == "previous model.yaml\n"
    log = runlog.read_training_log(repo / "training_log")
    assert log["published"]["mode"] == "hub" and "503" in log["published"]["error"]
    assert (repo / log["model"]["local_path"] / "config.json").is_file()  # the trained model is kept


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, monkeypatch, offline):
    """A small run of benchmarks/bench_train.py's two sides, so the benchmark cannot rot."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_train

    root = tmp_path / "repo"
    bench_train.make_repo(root, pairs=12, steps=12)  # 12 distinct pairs: enough to hold out eval_size 4
    monkeypatch.chdir(root)
    baseline = bench_train.child("baseline", root, tmp_path / "baseline", 12)
    ours = bench_train.child("oig", root, tmp_path / "oig", 12)
    assert baseline["steps"] == ours["steps"] == 12
    # The same examples in the same order: the token counts agree exactly.
    assert baseline["tokens"] == ours["tokens"] > 0
    assert ours["tokens_per_second"] > 0 and baseline["tokens_per_second"] > 0


def test_a_bad_bug_list_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(make_repo(tmp_path, "Training:\n  seed: 1\n"))
    assert main(["train", "--base-model", "tiny", "--bugs", "missing.json"]) == 1
    assert "missing.json" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--bugs", "a.json", "--bugs-repo", "o/r"]) == 2  # one source or the other


# --- packing --------------------------------------------------------------------------------------------------


def packed_and_alone(trainer):
    """The largest difference between each conversation's logits in TRL's packed batch and alone."""
    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]  # as TRL
        positions = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        diffs = [(model(input_ids=batch["input_ids"][:, a:b]).logits[0] - packed[a:b]).abs().max().item()
                 for a, b in zip(starts, starts[1:], strict=False)]
    return len(diffs), max(diffs)


def test_packed_conversations_do_not_see_each_other(built, tmp_path):
    from oig.train.sft import check_packing

    model, tok = built
    ds, _ = masking.to_dataset(RECORDS[:4], tok, tok.chat_template)
    for impl in ("sdpa", "eager"):  # transformers 5.23 masks each packed conversation by its positions
        model.set_attn_implementation(impl)
        args, _ = sft_config(config({"max_steps": 1, "packing": True, "per_device_train_batch_size": 4}), tmp_path,
                             on_gpu=False, has_eval=False)
        check_packing(model, args)  # passes
        count, diff = packed_and_alone(make_trainer(model, tok, args, ds, None, config()))
        assert count == 4 and diff < 1e-5, (impl, diff)
    model.set_attn_implementation("sdpa")


def test_packing_that_would_leak_is_refused(built, tmp_path, monkeypatch):
    import transformers.masking_utils as masking_utils

    from oig.train.sft import check_packing

    model, _ = built
    args, _ = sft_config(config({"packing": True}), tmp_path, on_gpu=False, has_eval=False)
    # Attention that ignores the positions (transformers before packed masks, or a model's own masking).
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(TrainError, match="attend to each other.*packing: false.*flash_attention_2"):
        check_packing(model, args)
    monkeypatch.undo()
    wrapped, _ = sft_config(config({"packing": True, "packing_strategy": "wrapped"}), tmp_path, on_gpu=False,
                            has_eval=False)
    with pytest.raises(TrainError, match="packing_strategy 'wrapped'"):
        check_packing(model, wrapped)

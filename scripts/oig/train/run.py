"""oig train: build the mixture, fine-tune with TRL's SFTTrainer, evaluate, save, publish, log.

The run, top to bottom (``train``):

1. configuration: training.yaml, the base model (``--base-model`` or ``base_model``), git commit;
   then the run folder is locked for the whole run (a second ``oig train`` there stops at once);
2. the mixture: ``oig mix`` into the run folder (or an existing mixture folder), split into train
   and eval by distinct conversation;
3. the base model and tokenizer: ``tiny`` is built offline (``oig.train.tiny``), anything else loads with
   ``from_pretrained``; a model without a chat template gets ChatML;
4. tokenising: loss on assistant turns only, and never on an assistant turn with ``weight: 0``; text
   in the data that spells one of the tokenizer's special tokens is refused first;
5. training: ``SFTTrainer`` with checkpoints every ``save_steps``, resuming from the last complete
   checkpoint in the run folder when there is one (an interrupted run, rerun, carries on);
6. evaluation, saving, publishing (``oig.publish.publish``), then ``training_log`` and ``model.yaml``.

The run folder is ``runs/<run_id>`` where the run id is a hash of what determines the run (commit,
training.yaml, slices, base model), so rerunning the same command after a crash finds its
checkpoints (with ``--output DIR``, the same DIR resumes). ``momentum`` goes to the optimizer in use:
SGD's and RMSprop's momentum, or beta1 of Adam-style optimizers (Lion and LAMB too); for an optimizer
without momentum, such as Adafactor, it is an error. ``train_loss`` in training_log is the mean loss of
the steps this process trained (after a resume, the steps since the checkpoint).

Under ``accelerate launch`` every process trains; only the main one locks the run folder, builds
shared files first, publishes and writes the logs. torch, transformers and TRL are imported inside
functions only.

Model code never runs: training.yaml comes from pull requests, and a model folder or Hub repo can ship
Python (``auto_map``) that ``trust_remote_code`` would import on the training machine, where the
secrets are. Every ``from_pretrained`` passes ``trust_remote_code=False``; a base model whose config
or tokenizer config asks for its own code, or whose ``model_type`` transformers does not know, is
refused before it loads; ``model_init_kwargs`` may not set ``trust_remote_code`` or the other switches
that load code or pickles; and a local folder as the base model needs ``--allow-local-base-model``.

A full disk or a read-only folder ends the run with one line naming the path and the cause; the
model folder, training_log and model.yaml are replaced whole (temp file or folder, then rename), so
the previous ones stay as they were.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path

from oig import runlog
from oig.train import dpo, tiny
from oig.train.args import cpu_threads, dpo_config, lora_config, sft_config, tiny_cpu_threads, use_bf16
from oig.train.base import check_base_model, check_special_tokens, load_base
from oig.train.checkpoints import last_checkpoint, lock_run_dir, save_model
from oig.train.context import TrainOptions
from oig.train.errors import TrainError, checkpoint_errors, disk_errors
from oig.train.finish import bug_suite, finish, load_bugs
from oig.train.masking import to_dataset
from oig.train.mixture import build_mixture, read_mixture, split_eval
from oig.train.record import (
    display,
    git_branch,
    git_commit,
    hardware,
    hyperparameters,
    iso,
    last_logged,
    make_run_id,
    metrics_history,
    rounded,
)

PUBLISH_MODES = ("none", "local", "hub")
RUNS_DIR = "runs"


def train(opts: TrainOptions) -> dict:
    """Run ``oig train``; returns the training_log dict (also written to ``root/training_log``)."""
    from oig.data.config import load_training_config

    started = time.time()
    if opts.publish not in PUBLISH_MODES:
        raise TrainError(f"unknown --publish {opts.publish!r}; expected one of {', '.join(PUBLISH_MODES)}")
    # --- configuration ---------------------------------------------------------------------------------
    config = load_training_config(opts.config)
    base_model = opts.base_model or config.base_model
    if not base_model:
        raise TrainError("no base model: set `base_model` under Training in training.yaml, or pass "
                         "--base-model (`tiny` is a small model built offline)")
    if opts.publish == "hub" and not config.oig.get("hub_repo"):  # fail in seconds, not after training
        raise TrainError("--publish hub needs `hub_repo: ORG/NAME` under Training in training.yaml")
    if opts.together and opts.publish != "hub":
        raise TrainError("--together deploys the model from the Hugging Face Hub: use it with --publish hub")
    check_base_model(base_model, config, opts)  # a folder needs a flag; nothing may run the model's code
    bugs = load_bugs(opts)  # before training: a bad bug list fails in seconds, not after hours
    commit, branch = git_commit(opts.root), git_branch(opts.root)
    run_id = make_run_id(commit, base_model, opts)
    run_dir = Path(opts.output) if opts.output else Path(opts.root) / RUNS_DIR / run_id
    run = {
        "run_id": run_id, "started_at": iso(started), "finished_at": None, "git_commit": commit,
        "git_branch": branch, "base_model": base_model, "backend": config.oig.get("backend", "trl"),
        "config": display(opts.config, opts.root), "output_dir": display(run_dir, opts.root),
    }

    # --- the run folder, locked: a second run there would resume from this one's checkpoints ----------
    if run["backend"] == "together":  # hosted fine-tuning: nothing trains here, torch is not needed
        with lock_run_dir(run_dir), disk_errors():
            mixture_dir = Path(opts.mixture) if opts.mixture else run_dir / "mixture"
            if not opts.mixture:
                build_mixture(opts, mixture_dir)
            run["mixture"] = read_mixture(mixture_dir)[0]
            return _train_on_together(mixture_dir, config, run, opts, started)
    state = _distributed_state()  # one process, or one per GPU under `accelerate launch`
    with lock_run_dir(run_dir) if state.is_main_process else contextlib.nullcontext(), disk_errors():
        return _train_here(opts, config, run, run_dir, base_model, state, bugs, started)


def _train_here(opts: TrainOptions, config, run: dict, run_dir: Path, base_model: str, state, bugs,
                started: float) -> dict:
    """The mixture, the model, tokenising, training, saving and the logs, in this process (``train``)."""
    run_id = run["run_id"]
    # --- the mixture -----------------------------------------------------------------------------------
    mixture_dir = Path(opts.mixture) if opts.mixture else run_dir / "mixture"
    with state.main_process_first():  # the others wait, then read what the main process wrote
        if not opts.mixture and state.is_main_process:
            build_mixture(opts, mixture_dir)
    method = config.oig.get("method", "sft")
    manifest, records = read_mixture(mixture_dir, allow_empty=method == "dpo")
    run["mixture"] = manifest
    run["method"] = method
    pairs = dpo.read_preferences(mixture_dir) if method == "dpo" else []
    if method == "dpo" and not pairs:
        raise TrainError("`method: dpo` needs preference pairs: add a `Preferences:` section to a slice")
    if method != "dpo" and (mixture_dir / dpo.PREFERENCES_FILE).exists():
        print("oig train: note: the slices' preference pairs are not used; set `method: dpo` to train on them",
              file=sys.stderr)

    # --- the held-out split ----------------------------------------------------------------------------
    train_records, eval_records = split_eval(records, config.oig.get("eval_size"), config.seed) if records else ([], [])

    # --- the base model and tokenizer -------------------------------------------------------------------
    import torch

    on_gpu = torch.cuda.is_available()
    conversations = records + dpo.as_conversations(pairs)
    with state.main_process_first():
        model, tokenizer, template = load_base(base_model, run_dir / "base", conversations, config, on_gpu)
    # Text in a slice that spells a special token would become a real one: a contributor forging turns.
    check_special_tokens(conversations, tokenizer)
    if not records:  # DPO only: no SFT stage
        return _dpo_only(run, model, tokenizer, pairs, config, run_dir, opts, state, on_gpu, base_model, started, bugs)

    # --- tokenising: loss on assistant turns with weight 1 ----------------------------------------------
    import datasets

    datasets.disable_progress_bars()  # a bar per tiny map call drowns the training progress
    assistant_only = config.training.get("assistant_only_loss", True)
    train_ds, dropped = to_dataset(train_records, tokenizer, template, assistant_only)
    eval_ds, _ = to_dataset(eval_records, tokenizer, template, assistant_only) if eval_records else (None, 0)
    if train_ds is None:
        raise TrainError("no conversation in the mixture has an assistant turn to learn (all weight 0?)")

    # --- training --------------------------------------------------------------------------------------
    args, tiny_overrides = sft_config(config, run_dir / "checkpoints", on_gpu=on_gpu,
                                      has_eval=eval_ds is not None, tiny_model=base_model == tiny.NAME)
    with state.main_process_first():
        # The main process clears another run's checkpoints first; the others then find what it left.
        resume = last_checkpoint(run_dir / "checkpoints", run_id if state.is_main_process else None)
    trainer = make_trainer(model, tokenizer, args, train_ds, eval_ds, config)
    try:
        with cpu_threads(tiny_cpu_threads(base_model, on_gpu)), checkpoint_errors(run_dir / "checkpoints"):
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    except torch.OutOfMemoryError:
        raise TrainError("out of GPU memory: lower per_device_train_batch_size (raising gradient_accumulation_steps "
                         "to keep the batch) or max_length, or set lora / load_in_4bit; rerunning resumes from the "
                         "last checkpoint") from None

    # --- DPO on the preference pairs, starting from the SFT model (method: dpo) ---------------------------
    final = trainer
    if pairs:
        final, run["dpo"] = run_dpo(trainer.model, tokenizer, pairs, config, run_dir, on_gpu=on_gpu,
                                    base_model=base_model, state=state, root=opts.root, run_id=run_id)

    # --- saving ----------------------------------------------------------------------------------------
    model_dir = run_dir / "model"
    save_model(final, tokenizer, model_dir, config)
    if not trainer.is_world_process_zero():  # the main process publishes and writes the logs
        return run
    finished = time.time()
    tokens = int(getattr(trainer, "_total_train_tokens", 0) or 0)
    runtime = float(result.metrics.get("train_runtime") or 0.0)
    run.update({
        "finished_at": iso(finished),
        "duration_s": round(finished - started, 2),
        "resumed_from": display(resume, opts.root) if resume else None,
        "hyperparameters": hyperparameters(args, config),
        "tiny_overrides": tiny_overrides or None,
        "data": {"train_examples": len(train_records), "eval_examples": len(eval_records),
                 "dropped_without_trainable_tokens": dropped, **({"preference_pairs": len(pairs)} if pairs else {})},
        "metrics": metrics_history(trainer.state.log_history),
        # A rerun of a finished run resumes at its last step and trains nothing: keep the last logged loss.
        "train_loss": rounded(result.metrics.get("train_loss") if tokens else last_logged(trainer.state.log_history, "loss")),
        "eval_loss": rounded(eval_metrics.get("eval_loss")),
        "steps": trainer.state.global_step,
        "train_runtime_s": round(runtime, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / runtime, 1) if tokens and runtime > 0 else None,
        "hardware": hardware(state.num_processes, tiny_cpu_threads(base_model, on_gpu)),
    })
    run["model"] = {"local_path": display(model_dir, opts.root)}

    # --- the bug regression suite: the previous model and the new one answer each reported bug ----------
    if bugs is not None:
        run.update(bug_suite(bugs, model_dir, opts.root))

    # --- publishing, training_log, model.yaml -----------------------------------------------------------
    return finish(run, model_dir, config, opts)


# --- DPO ----------------------------------------------------------------------------------------------------


def run_dpo(model, tokenizer, pairs: list[dict], config, run_dir: Path, *, on_gpu: bool, base_model: str, state,
            root: Path, run_id: str):
    """TRL's DPOTrainer on the pairs, from ``model``; returns (trainer, training_log's dpo section)."""
    import torch

    if hasattr(model, "merge_and_unload") and not config.oig.get("load_in_4bit"):
        model = model.merge_and_unload()  # the SFT adapters become the weights DPO starts from
    tiny_model = base_model == tiny.NAME
    args, overrides = dpo_config(config, run_dir / "dpo-checkpoints", on_gpu=on_gpu, tiny_model=tiny_model,
                                 bf16=use_bf16(config, on_gpu))
    with state.main_process_first():
        resume = last_checkpoint(run_dir / "dpo-checkpoints", run_id if state.is_main_process else None)
    trainer = dpo.make_trainer(model, tokenizer, pairs, args, config)
    try:
        with cpu_threads(tiny_cpu_threads(base_model, on_gpu)), checkpoint_errors(run_dir / "dpo-checkpoints"):
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.OutOfMemoryError:
        raise TrainError("out of GPU memory in DPO (it holds a reference model too): lower "
                         "per_device_train_batch_size or max_length, or set lora") from None
    return trainer, dpo.summary(trainer, result, display(resume, root) if resume else None, overrides)


def _dpo_only(run: dict, model, tokenizer, pairs: list[dict], config, run_dir: Path, opts: TrainOptions, state,
              on_gpu: bool, base_model: str, started: float, bugs) -> dict:
    """``method: dpo`` with no SFT data: DPO from the base model, then save, publish and log."""
    trainer, run["dpo"] = run_dpo(model, tokenizer, pairs, config, run_dir, on_gpu=on_gpu, base_model=base_model,
                                  state=state, root=opts.root, run_id=run["run_id"])
    model_dir = run_dir / "model"
    save_model(trainer, tokenizer, model_dir, config)
    if not trainer.is_world_process_zero():
        return run
    finished = time.time()
    run.update({
        "finished_at": iso(finished),
        "duration_s": round(finished - started, 2),
        "hyperparameters": hyperparameters(trainer.args, config),
        "data": {"train_examples": 0, "eval_examples": 0, "preference_pairs": len(pairs)},
        "hardware": hardware(state.num_processes, tiny_cpu_threads(base_model, on_gpu)),
    })
    run["model"] = {"local_path": display(model_dir, opts.root)}
    if bugs is not None:
        run.update(bug_suite(bugs, model_dir, opts.root))
    return finish(run, model_dir, config, opts)


# --- training ---------------------------------------------------------------------------------------------


def make_trainer(model, tokenizer, args, train_ds, eval_ds, config):
    from trl import SFTTrainer

    peft_config = lora_config(config) if config.oig.get("lora") or config.oig.get("load_in_4bit") else None
    try:
        return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=peft_config)
    except ValueError as exc:
        raise TrainError(f"the trainer refused the settings: {exc}") from None


def _distributed_state():
    from accelerate import PartialState

    return PartialState()


def _train_on_together(mixture_dir: Path, config, run: dict, opts: TrainOptions, started: float) -> dict:
    """``backend: together``: Together's hosted fine-tuning trains; nothing runs here."""
    from oig.train.together import train_on_together

    # --base-model overrides training.yaml here too.
    result = train_on_together(mixture_dir, replace(config, base_model=run["base_model"]), run)
    finished = time.time()
    run.update({"finished_at": iso(finished), "duration_s": round(finished - started, 2),
                "together_job": result.get("job"), "model": result["model"],
                "published": {"mode": "together"}})
    runlog.write_run_files(opts.root, run, runlog.model_document(result["model"], run))
    return run

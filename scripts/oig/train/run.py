"""oig train: build the mixture, fine-tune with TRL's SFTTrainer, evaluate, save, publish, log.

The run, top to bottom (``train``), each step in the module named after it:

1. configuration: training.yaml, the base model (``--base-model`` or ``base_model``), git commit
   (``configure``); then the run folder is locked for the whole run (a second ``oig train`` there
   stops at once; ``checkpoints``);
2. the mixture: ``oig mix`` into the run folder (or an existing mixture folder); it trains on
   ``mixture.jsonl`` and evaluates on the examples ``oig mix`` held out, ``eval.jsonl`` (``mixture``);
3. the base model and tokenizer (``base``): ``tiny`` is built offline (``oig.train.tiny``), anything
   else loads with ``from_pretrained``; a model without a chat template gets ChatML; text in the data
   that spells one of the tokenizer's special tokens is refused;
4. SFT (``sft``): loss on assistant turns only, and never on an assistant turn with ``weight: 0``;
   checkpoints every ``save_steps``, resuming from the last complete checkpoint in the run folder when
   there is one (an interrupted run, rerun, carries on); then the eval loss;
5. DPO on the preference pairs with ``method: dpo`` (``dpo``), from the SFT model, or from the base
   model when there is no SFT data;
6. one ending for all three: saving, the record (``record``), the eval suites for the new and the
   previous model (``evaluate``), the bug suite, the release gate, publishing (``oig.publish.publish``),
   then ``training_log`` and ``model.yaml`` (``finish``). A model that fails training.yaml's Gate is not
   published over the branch's model (a Hub run uploads it to the branch ``candidate-<branch>``),
   model.yaml stays as it was, and the run exits 1; ``--override-gate`` publishes it anyway, recorded.

The run folder is ``runs/<run_id>`` where the run id is a hash of what determines the run (commit,
training.yaml, slices, base model), so rerunning the same command after a crash finds its
checkpoints (with ``--output DIR``, the same DIR resumes). ``momentum`` goes to the optimizer in use
(``args``): SGD's and RMSprop's momentum, or beta1 of Adam-style optimizers (Lion and LAMB too); for
an optimizer without momentum, such as Adafactor, it is an error.

Under ``accelerate launch`` every process trains; the first one of each machine locks its run folder
and builds the shared files first (the mixture, the base model, the tokenised dataset: ``tokenise``),
and the main one publishes and writes the logs. training.yaml's ``distributed`` (ddp, fsdp, zero2,
zero3) picks the launch (``launch``: ``oig train --print-launch`` prints it), and a run launched
otherwise stops at once. The trainers' settings are built before the model loads, which ZeRO-3 needs to
create the model already split across the GPUs. torch, transformers and TRL are imported inside
functions only. Model code never runs (``base``: ``trust_remote_code=False`` everywhere, a model
that needs its own code refused before it loads, a local folder only with ``--allow-local-base-model``).

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
from oig.eval.stage import for_log
from oig.train import dpo, sft
from oig.train.base import check_base_model, check_special_tokens, load_base
from oig.train.checkpoints import run_folder, save_model
from oig.train.context import RunContext, TrainOptions
from oig.train.errors import TrainError
from oig.train.evaluate import evaluate_run, release_gate
from oig.train.finish import bug_suite, finish, load_bugs
from oig.train.launch import check_launched, describe
from oig.train.mixture import build_mixture, held_out_log, read_eval, read_mixture
from oig.train.record import display, finished, git_branch, git_commit, hardware, iso, make_run_id

PUBLISH_MODES = ("none", "local", "hub")
RUNS_DIR = "runs"


def train(opts: TrainOptions) -> dict:
    """Run ``oig train``; returns the training_log dict (also written to ``results_dir/training_log``)."""
    # --- configuration: every check that needs no run folder, so a mistake costs seconds --------------
    ctx = configure(opts)
    config = ctx.config
    if ctx.log["backend"] == "together":  # hosted fine-tuning: nothing trains here, torch is not needed
        with run_folder(ctx.run_dir):
            return _train_on_together(ctx)
    ctx.state = _distributed_state()  # one process, or one per GPU under `accelerate launch`
    check_launched(config, ctx.state.num_processes)  # as training.yaml's `distributed` asks (oig.train.launch)

    # --- the run folder, locked: a second run there would resume from this one's checkpoints ----------
    with run_folder(ctx.run_dir, lock=ctx.is_local_main):
        # --- the mixture and the preference pairs ----------------------------------------------------
        _build_mixture(ctx)
        # The held-out split is oig mix's: mixture.jsonl is trained on, eval.jsonl evaluated.
        records, pairs = _read_training_data(ctx)
        eval_records = read_eval(ctx.mixture_dir) if records else []

        # --- the base model and tokenizer ------------------------------------------------------------
        import torch

        ctx.on_gpu = torch.cuda.is_available()
        # The trainers' settings come first: under ZeRO-3 they make the model load already split.
        sft_settings = sft.settings(ctx, has_eval=bool(eval_records)) if records else None
        dpo_settings = dpo.settings(ctx) if pairs else None
        conversations = records + eval_records + dpo.as_conversations(pairs)
        with ctx.state.local_main_process_first():  # one download (or tiny build) per machine
            model, tokenizer, template = load_base(ctx.base_model, ctx.run_dir / "base", conversations, config,
                                                   ctx.on_gpu)
        # Text in a slice that spells a special token would become a real one: a contributor forging turns.
        check_special_tokens(conversations, tokenizer)

        # --- SFT: loss on assistant turns with weight 1 (none when DPO trains alone) -------------------
        sft_run = sft.train_sft(ctx, model, tokenizer, template, records, eval_records, sft_settings) if records \
            else None
        trainer = sft_run.trainer if sft_run else None

        # --- DPO on the preference pairs, starting from the SFT model (method: dpo) --------------------
        if pairs:
            trainer, ctx.log["dpo"] = dpo.train_dpo(ctx, trainer.model if sft_run else model, tokenizer, pairs,
                                                    dpo_settings)

        # --- saving ------------------------------------------------------------------------------------
        save_model(trainer, tokenizer, ctx.model_dir, config, sharded=ctx.sharded)
        if not trainer.is_world_process_zero():  # the main process publishes and writes the logs
            return ctx.log

        # --- the record: data, hyperparameters, losses, hardware ---------------------------------------
        fields = sft_run.log_fields(ctx) if sft_run else dpo.log_fields_alone(trainer, config)
        if sft_run:
            fields["data"]["held_out"] = held_out_log(ctx.log["mixture"], ctx.shown(ctx.mixture_dir / "manifest.json"))
        if pairs:
            fields["data"]["preference_pairs"] = len(pairs)
        ctx.log.update({**finished(ctx.started), **fields,
                        "hardware": {**hardware(ctx.state.num_processes, ctx.threads),
                                     "distributed": describe(processes=ctx.state.num_processes)}})
        ctx.log["model"] = {"local_path": ctx.shown(ctx.model_dir)}

        # --- evaluation: the new model and the previous one (model.yaml before this run) on the suites --
        evals = evaluate_run(ctx)
        if evals is not None:
            ctx.log["evals"] = for_log(evals)

        # --- the bug regression suite: the previous model and the new one answer each reported bug ------
        if ctx.bugs is not None:
            ctx.log.update(bug_suite(ctx.bugs, ctx.model_dir, opts.results_dir))

        # --- the release gate: a model that fails it is not published over the branch's model ---------
        gate = release_gate(ctx, evals)
        if gate is not None:
            ctx.log["gate"] = gate

        # --- publishing, training_log, model.yaml ------------------------------------------------------
        return finish(ctx.log, ctx.model_dir, config, opts)


def configure(opts: TrainOptions) -> RunContext:
    """training.yaml, the base model, publishing and the bug list, checked; the run id, folder and the
    start of training_log. Nothing is written yet."""
    from oig.data.config import load_training_config

    started = time.time()
    if opts.publish not in PUBLISH_MODES:
        raise TrainError(f"unknown --publish {opts.publish!r}; expected one of {', '.join(PUBLISH_MODES)}")
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
    if opts.publish == "hub":
        if config.oig.get("load_in_4bit") and (base_model == "tiny" or Path(base_model).exists()):
            raise TrainError("load_in_4bit saves LoRA adapters, published as adapters of their base model: with "
                             "--publish hub the base model must be a Hub id, not a local one")
        check_hub_access(config.oig["hub_repo"], branch)
    run_id = make_run_id(commit, base_model, opts)
    run_dir = Path(opts.output) if opts.output else Path(opts.root) / RUNS_DIR / run_id
    log = {
        "run_id": run_id, "started_at": iso(started), "finished_at": None, "git_commit": commit,
        "git_branch": branch, "base_model": base_model, "backend": config.oig.get("backend", "trl"),
        "config": display(opts.config, opts.root), "output_dir": display(run_dir, opts.root),
    }
    return RunContext(opts=opts, config=config, base_model=base_model, run_dir=run_dir, log=log, started=started,
                      bugs=bugs)


def check_hub_access(repo_id: str, git_branch_name: str | None) -> None:
    """HF_TOKEN set, valid and able to write to ``hub_repo`` on the run's branch, before training."""
    from oig.errors import PublishError
    from oig.publish import hub

    try:
        hub.check_repo_id(repo_id)
        token = hub.token()
        branch = hub.branch_name(git_branch_name)
        hub.check_access(repo_id, branch=branch, token=token, endpoint=hub.endpoint())
    except PublishError as exc:
        raise TrainError(f"--publish hub: {exc}; nothing was trained") from None


def _build_mixture(ctx: RunContext) -> None:
    """``oig mix`` into the run folder unless --mixture names one, by the first process of each machine;
    the others wait, then read what it wrote."""
    with ctx.state.local_main_process_first() if ctx.state is not None else contextlib.nullcontext():
        if not ctx.opts.mixture and ctx.is_local_main:
            build_mixture(ctx.opts, ctx.mixture_dir)


def _read_training_data(ctx: RunContext) -> tuple[list[dict], list[dict]]:
    """The mixture's conversations and, with ``method: dpo``, its preference pairs."""
    method = ctx.config.oig.get("method", "sft")
    manifest, records = read_mixture(ctx.mixture_dir, allow_empty=method == "dpo")
    ctx.log["mixture"] = manifest
    ctx.log["method"] = method
    pairs = dpo.read_preferences(ctx.mixture_dir) if method == "dpo" else []
    if method == "dpo" and not pairs:
        raise TrainError("`method: dpo` needs preference pairs: add a `Preferences:` section to a slice")
    if method != "dpo" and (ctx.mixture_dir / dpo.PREFERENCES_FILE).exists():
        print("oig train: note: the slices' preference pairs are not used; set `method: dpo` to train on them",
              file=sys.stderr)
    return records, pairs


def _train_on_together(ctx: RunContext) -> dict:
    """``backend: together``: Together's hosted fine-tuning trains; nothing runs here."""
    from oig.train.together import train_on_together

    _build_mixture(ctx)
    ctx.log["method"] = ctx.config.oig.get("method", "sft")
    ctx.log["mixture"] = read_mixture(ctx.mixture_dir, allow_empty=ctx.log["method"] == "dpo")[0]
    # --base-model overrides training.yaml here too.
    result = train_on_together(ctx.mixture_dir, replace(ctx.config, base_model=ctx.base_model), ctx.log)
    ctx.log.update({**finished(ctx.started), "together_job": result.get("job"), "model": result["model"],
                    "published": {"mode": "together"}})
    runlog.write_run_files(ctx.opts.results_dir, ctx.log, runlog.model_document(result["model"], ctx.log))
    return ctx.log


def _distributed_state():
    from accelerate import PartialState

    return PartialState()

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
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from oig import files, runlog
from oig.errors import OigError
from oig.train import dpo, tiny
from oig.train.args import OWNED, cpu_threads, dpo_config, lora_config, sft_config, tiny_cpu_threads, use_bf16
from oig.train.errors import TrainError, checkpoint_errors, disk_errors, write_problem
from oig.train.masking import special_token_text, to_dataset, training_template

PUBLISH_MODES = ("none", "local", "hub")
RUNS_DIR = "runs"
DEFAULT_EVAL_FRACTION = 0.1
MAX_DEFAULT_EVAL = 1000  # conversations; a larger held-out set only slows evaluation down

# Fields recorded in training_log besides the ones training.yaml sets.
RECORDED = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "packing", "optim",
    "optim_args", "adam_beta1", "adam_beta2", "weight_decay", "lr_scheduler_type", "warmup_steps",
    "max_grad_norm", "seed", "data_seed", "bf16", "fp16", "activation_checkpointing", "logging_steps",
    "save_steps", "save_total_limit", "eval_strategy", "eval_steps",
)


LOCK_FILE = ".lock"  # in the run folder: held by the `oig train` running there (its pid inside)
# from_pretrained keywords that load code or pickles: model_init_kwargs in training.yaml may not set them.
UNSAFE_INIT_KWARGS = ("trust_remote_code", "code_revision", "weights_only", "use_kernels", "kernel_config",
                      "allow_all_kernels")


@dataclass
class TrainOptions:
    config: Path = Path("training.yaml")
    data: Path = Path("data")
    base_model: str | None = None  # overrides training.yaml's base_model
    publish: str = "local"
    together: bool = False  # deploy on a Together endpoint after publishing to the Hub
    output: Path | None = None  # the run folder; default runs/<run_id>
    mixture: Path | None = None  # a folder `oig mix` wrote; default: mix into the run folder
    root: Path = Path(".")  # where training_log and model.yaml go
    allow_local_sources: bool = False
    allow_local_base_model: bool = False  # a folder as the base model (it may carry code and pickles)
    bugs: Path | None = None  # a bug list file for the regression suite (offline)
    bugs_repo: str | None = None  # or OWNER/NAME: its open issues labelled `bug`


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
        "run_id": run_id, "started_at": _iso(started), "finished_at": None, "git_commit": commit,
        "git_branch": branch, "base_model": base_model, "backend": config.oig.get("backend", "trl"),
        "config": _display(opts.config, opts.root), "output_dir": _display(run_dir, opts.root),
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
    with state.main_process_first():
        model, tokenizer, template = load_base(base_model, run_dir / "base", records + dpo.as_conversations(pairs),
                                               config, on_gpu)
    # Text in a slice that spells a special token would become a real one: a contributor forging turns.
    check_special_tokens(records, pairs, tokenizer)
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
        "finished_at": _iso(finished),
        "duration_s": round(finished - started, 2),
        "resumed_from": _display(resume, opts.root) if resume else None,
        "hyperparameters": hyperparameters(args, config),
        "tiny_overrides": tiny_overrides or None,
        "data": {"train_examples": len(train_records), "eval_examples": len(eval_records),
                 "dropped_without_trainable_tokens": dropped, **({"preference_pairs": len(pairs)} if pairs else {})},
        "metrics": metrics_history(trainer.state.log_history),
        # A rerun of a finished run resumes at its last step and trains nothing: keep the last logged loss.
        "train_loss": _round(result.metrics.get("train_loss") if tokens else _last(trainer.state.log_history, "loss")),
        "eval_loss": _round(eval_metrics.get("eval_loss")),
        "steps": trainer.state.global_step,
        "train_runtime_s": round(runtime, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / runtime, 1) if tokens and runtime > 0 else None,
        "hardware": hardware(state.num_processes, tiny_cpu_threads(base_model, on_gpu)),
    })
    run["model"] = {"local_path": _display(model_dir, opts.root)}

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
    return trainer, dpo.summary(trainer, result, _display(resume, root) if resume else None, overrides)


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
        "finished_at": _iso(finished),
        "duration_s": round(finished - started, 2),
        "hyperparameters": hyperparameters(trainer.args, config),
        "data": {"train_examples": 0, "eval_examples": 0, "preference_pairs": len(pairs)},
        "hardware": hardware(state.num_processes, tiny_cpu_threads(base_model, on_gpu)),
    })
    run["model"] = {"local_path": _display(model_dir, opts.root)}
    if bugs is not None:
        run.update(bug_suite(bugs, model_dir, opts.root))
    return finish(run, model_dir, config, opts)


# --- configuration ---------------------------------------------------------------------------------------


def git_commit(root: Path) -> str | None:
    return _git(root, "rev-parse", "HEAD")


def git_branch(root: Path) -> str | None:
    # Actions checks out a detached HEAD for some events; GITHUB_REF_NAME still names the branch.
    return os.environ.get("GITHUB_REF_NAME") or _git(root, "rev-parse", "--abbrev-ref", "HEAD")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value and value != "HEAD" else None


def make_run_id(commit: str | None, base_model: str, opts: TrainOptions) -> str:
    """A name that is the same when the same run is started again, so it finds its checkpoints."""
    h = hashlib.sha256()
    h.update(f"{commit}\0{base_model}\0".encode())
    for path in (Path(opts.config), *(_slice_files(Path(opts.data)) if not opts.mixture else ()),
                 *((Path(opts.mixture) / "manifest.json",) if opts.mixture else ())):
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"-")
    return "run-" + h.hexdigest()[:12]


def _slice_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*.y*ml") if p.is_file()) if data_dir.is_dir() else []


# --- the run folder: one run at a time, and disk errors in words ------------------------------------------


@contextmanager
def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run folder for the block, or fail at once: a second ``oig train``
    in the same folder would resume from the first one's checkpoints while they are being written.

    ``flock`` on ``LOCK_FILE`` (its pid written inside, for the message); the kernel releases it when
    the process ends, however it ends, so a killed run never leaves the folder locked.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise TrainError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise TrainError(f"another `oig train` is running in {run_dir}" + (f" (pid {pid})" if pid.isdigit() else "")
                             + "; wait for it to finish, or pass --output DIR for a separate run folder") from None
        with contextlib.suppress(OSError):  # only for the message above: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the mixture ------------------------------------------------------------------------------------------


def build_mixture(opts: TrainOptions, out_dir: Path) -> Path:
    """``oig mix`` into ``out_dir``; the same inputs and seed give a byte-identical mixture."""
    from oig.data.mix import mix

    mix(opts.data, opts.config, out_dir, allow_local=opts.allow_local_sources)
    return out_dir


def read_mixture(mixture_dir: Path, allow_empty: bool = False) -> tuple[dict, list[dict]]:
    """The manifest and the records of a mixture folder (``{"slice", "messages"}`` lines)."""
    from oig.records import check_messages

    mixture_dir = Path(mixture_dir)
    try:
        manifest = json.loads((mixture_dir / "manifest.json").read_text(encoding="utf-8"))
        lines = (mixture_dir / "mixture.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise TrainError(f"{mixture_dir} is not a mixture folder: {Path(exc.filename).name} is missing "
                         "(build one with `oig mix --out DIR`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"cannot read the mixture in {mixture_dir}: {exc}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{mixture_dir / 'mixture.jsonl'}:{n}: not JSON ({exc.msg})") from None
        problem = check_messages(record.get("messages") if isinstance(record, dict) else None)
        if problem:
            raise TrainError(f"{mixture_dir / 'mixture.jsonl'}:{n}: {problem}")
        records.append(record)
    if not records and not allow_empty:
        raise TrainError(f"the mixture in {mixture_dir} is empty: add slices to data/ or check the Mixture weights")
    return manifest, records


def _key(record: dict) -> str:
    return json.dumps(record["messages"], sort_keys=True, ensure_ascii=False)


def split_eval(records: list[dict], eval_size: float | None, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out distinct conversations: a repeated example never sits on both sides.

    ``eval_size`` is a count (>= 1) or a fraction (< 1) of the distinct conversations. Unset: 10%,
    at most 1000, and none at all below 10 conversations (too few to spare).
    """
    keys = list(dict.fromkeys(_key(r) for r in records))
    n = len(keys)
    if eval_size is None:
        k = min(max(1, round(DEFAULT_EVAL_FRACTION * n)), MAX_DEFAULT_EVAL) if n >= 10 else 0
    elif eval_size < 1:
        k = max(1, round(eval_size * n))
    elif float(eval_size).is_integer():
        k = int(eval_size)
    else:
        raise TrainError(f"eval_size {eval_size} is neither a whole count nor a fraction below 1")
    if k >= n:
        raise TrainError(f"eval_size {eval_size} holds out {k} of {n} distinct conversations, leaving "
                         "none to train on; make it smaller")
    held = set(random.Random(seed).sample(keys, k))
    train_records = [r for r in records if _key(r) not in held]
    eval_records, seen = [], set()
    for r in records:
        key = _key(r)
        if key in held and key not in seen:
            seen.add(key)
            eval_records.append(r)
    return train_records, eval_records


# --- the base model and tokenizer -------------------------------------------------------------------------


def looks_local(name: str, root: Path = Path(".")) -> bool:
    """Whether ``from_pretrained(name)`` would read a folder on this machine rather than a Hub repo:
    the path exists (here or under the repository root), or it is spelled as a path (``./x``, ``/x``,
    ``~/x``, a backslash or drive, more than the one slash of ORG/NAME)."""
    if name.startswith((".", "/", "~")) or "\\" in name or ":" in name or name.count("/") > 1:
        return True
    return any(p.exists() for p in (Path(name).expanduser(), Path(root) / name))


def _init_kwargs(config) -> dict:
    """training.yaml's model_init_kwargs as a dict (SFTConfig also takes it as a JSON string)."""
    value = config.training.get("model_init_kwargs") or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TrainError(f"training.yaml: model_init_kwargs is not a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise TrainError("training.yaml: model_init_kwargs must be a mapping of from_pretrained keywords")
    return dict(value)


def check_base_model(name: str, config, opts: TrainOptions) -> None:
    """Refuse, before anything runs, a base model that could bring code to this machine: a local
    folder without --allow-local-base-model, or training.yaml keywords that let transformers import
    the model's Python or unpickle its weights."""
    if name != tiny.NAME and not opts.allow_local_base_model and looks_local(name, opts.root):
        raise TrainError(f"the base model {name!r} is a local path; a folder can carry code and pickles, so "
                         "training on one needs --allow-local-base-model (or use a Hub id ORG/NAME, or `tiny`)")
    init = _init_kwargs(config)
    for key in UNSAFE_INIT_KWARGS:
        if key in init:
            raise TrainError(f"training.yaml: model_init_kwargs must not set {key}: oig never runs a model's own "
                             "code or unpickles its weights; remove it")
    attention = init.get("attn_implementation")
    if isinstance(attention, str) and "/" in attention:
        raise TrainError(f"training.yaml: model_init_kwargs attn_implementation {attention!r} names a Hub kernel, "
                         "which is code from the Hub; use eager, sdpa or flash_attention_2")
    if config.training.get("trust_remote_code"):
        raise TrainError("training.yaml: trust_remote_code must not be set: oig never runs a model's own code; "
                         "remove it")


def refuse_model_code(name: str, revision: str | None = None) -> None:
    """Read the model's config.json and tokenizer_config.json (no code runs) and refuse a model that
    needs its own Python: an ``auto_map`` entry, or a ``model_type`` transformers does not know."""
    from transformers import CONFIG_MAPPING, PreTrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        model_config, _ = PreTrainedConfig.get_config_dict(name, revision=revision)
        tokenizer_config = get_tokenizer_config(name, revision=revision)
    except (OSError, ValueError, KeyError) as exc:  # not found, offline, not JSON
        raise TrainError(f"cannot load the base model {name!r}: {_first_line(exc)}") from None
    for file, doc in (("config.json", model_config), ("tokenizer_config.json", tokenizer_config)):
        auto_map = doc.get("auto_map") if isinstance(doc, dict) else None
        if auto_map:
            shown = ", ".join(f"{k}: {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else auto_map
            raise TrainError(f"the base model {name!r} needs its own Python code ({file} auto_map: {shown}); oig "
                             "never runs model code: use a model transformers supports without it")
    model_type = model_config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise TrainError(f"the base model {name!r} has model_type {model_type!r}, which transformers does not know: "
                         "it would need the model's own code, which oig never runs")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def load_base(name: str, base_dir: Path, records: list[dict], config, on_gpu: bool):
    """(model, tokenizer, training chat template) for ``name``: ``tiny``, a Hub id or a folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == tiny.NAME:
        if (base_dir / "config.json").is_file():
            # A resumed run reuses the tokenizer it started with: its checkpoints use those ids.
            refuse_model_code(str(base_dir))
            tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
        else:
            model, tokenizer = tiny.build_tiny(tiny.texts_of(records), base_dir, seed=config.seed)
        return model, tokenizer, tokenizer.chat_template

    kwargs = _init_kwargs(config)
    if "dtype" not in kwargs:
        kwargs["dtype"] = torch.bfloat16 if on_gpu and use_bf16(config, on_gpu) else torch.float32
    if config.oig.get("load_in_4bit"):
        kwargs["quantization_config"] = _quantization(on_gpu)
    revision = kwargs.get("revision")
    refuse_model_code(name, revision)
    for key in UNSAFE_INIT_KWARGS:  # refused by check_base_model already; never passed on in any case
        kwargs.pop(key, None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs, trust_remote_code=False, weights_only=True)
    except (OSError, ValueError, KeyError) as exc:  # not found, offline, refused, an unknown architecture
        raise TrainError(f"cannot load the base model {name!r}: {_first_line(exc)}") from None
    if not tokenizer.chat_template:
        _add_chatml(model, tokenizer)
    return model, tokenizer, training_template(tokenizer)


def check_special_tokens(records: list[dict], pairs: list[dict], tokenizer) -> None:
    """Refuse data whose text spells one of the tokenizer's special tokens (``<|im_start|>`` and the
    like): the chat template would turn it into the real token, letting a slice forge turns."""
    found = special_token_text(records + dpo.as_conversations(pairs), tokenizer)
    if found is None:
        return
    count, slices, first = found
    raise TrainError(f"{count} message(s) in slice(s) {', '.join(slices)} contain the text of the special token "
                     f"{first!r}, which the chat template would turn into a real control token; remove it from "
                     "the data (or reword it)")


def _quantization(on_gpu: bool):
    import importlib.util

    if not on_gpu:
        raise TrainError("load_in_4bit (QLoRA) needs a CUDA GPU; set it to false to train on the CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _add_chatml(model, tokenizer) -> None:
    """Give a model without a chat template ChatML, adding its two special tokens if they are new."""
    new = [t for t in (tiny.IM_START, tiny.IM_END) if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = tiny.CHATML_TEMPLATE
    tokenizer.eos_token = tiny.IM_END  # the model must learn to end its turn, and generation to stop there
    model.config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# --- training ---------------------------------------------------------------------------------------------


def make_trainer(model, tokenizer, args, train_ds, eval_ds, config):
    from trl import SFTTrainer

    peft_config = lora_config(config) if config.oig.get("lora") or config.oig.get("load_in_4bit") else None
    try:
        return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=peft_config)
    except ValueError as exc:
        raise TrainError(f"the trainer refused the settings: {exc}") from None


RUN_MARKER = "RUN_ID"  # beside the checkpoints: which run they belong to


def last_checkpoint(checkpoint_dir: Path, run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint of this run; incomplete ones (a kill while saving) are removed.

    The Trainer writes trainer_state.json last, so a checkpoint whose state reads back is whole. With
    ``run_id``, checkpoints left in the folder by another run (other data, config or commit, reusing
    the same --output) are removed rather than resumed, and the folder is marked as this run's.
    """
    if run_id is not None:
        marker = checkpoint_dir / RUN_MARKER
        try:
            owner = marker.read_text(encoding="utf-8").strip()
        except OSError:
            owner = None
        if checkpoint_dir.is_dir() and owner != run_id and any(checkpoint_dir.glob("checkpoint-*")):
            print(f"oig train: note: the checkpoints in {checkpoint_dir} belong to another run "
                  f"({owner or 'unknown'}); starting this one ({run_id}) from the beginning", file=sys.stderr)
            for old in checkpoint_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if owner != run_id:
            files.write_atomic(marker, run_id + "\n")
    if not checkpoint_dir.is_dir():
        return None
    found = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
    return None


def save_model(trainer, tokenizer, model_dir: Path, config) -> None:
    """The final model, loadable with ``from_pretrained``: LoRA adapters are merged into the weights
    (kept as an adapter for QLoRA, whose 4-bit base cannot be merged exactly)."""
    model = trainer.model
    if hasattr(model, "merge_and_unload") and not config.oig.get("load_in_4bit"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        _replace_folder(model_dir, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    trainer.accelerator.wait_for_everyone()


def _replace_folder(target: Path, write) -> None:
    """``write(tmp)`` into a folder beside ``target``, then swap it in whole: a crash or a full disk
    never leaves half a model where model.yaml may point, and a failed save keeps the previous one."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except Exception as exc:  # safetensors and torch raise their own types
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(old, target)
        why = write_problem(exc, target.parent)
        if why is None:
            raise
        raise TrainError(f"cannot save the model to {target}: {why}; the folder is as it was before") from None
    shutil.rmtree(old, ignore_errors=True)


# --- what goes into training_log ----------------------------------------------------------------------------


def hyperparameters(args, config) -> dict:
    values = args.to_dict()
    keys = [k for k in config.training if k not in OWNED and k in values]
    keys += [k for k in RECORDED if k not in keys and k in values]
    out = {k: values[k] for k in keys}
    if "assistant_only_loss" in config.training:
        out["assistant_only_loss"] = config.training["assistant_only_loss"]
    for key in ("momentum", "eval_size", "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                "load_in_4bit"):
        if key in config.oig:
            out[key] = config.oig[key]
    return out


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _last(log_history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def metrics_history(log_history: list[dict]) -> list[dict]:
    """Loss and eval loss by step, one entry per step that logged either."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = by_step.setdefault(int(step), {"step": int(step)})
        if "loss" in entry:
            row["loss"] = _round(entry["loss"])
            if "learning_rate" in entry:
                row["learning_rate"] = _round(entry["learning_rate"], 10)
            if "epoch" in entry:
                row["epoch"] = _round(entry["epoch"], 4)
        if "eval_loss" in entry:
            row["eval_loss"] = _round(entry["eval_loss"])
    return [row for _, row in sorted(by_step.items()) if len(row) > 1]


def hardware(processes: int = 1, cpu_threads: int | None = None) -> dict:
    import torch

    info: dict = {"accelerator": "cuda" if torch.cuda.is_available() else "cpu", "processes": processes,
                  "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "cpu_threads": cpu_threads or torch.get_num_threads(),
                  "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _display(path: Path | None, root: Path) -> str | None:
    """A path relative to the repository root when it lies inside it (no machine paths in the log)."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _distributed_state():
    from accelerate import PartialState

    return PartialState()


# --- the bug regression suite ----------------------------------------------------------------------------------


def load_bugs(opts: TrainOptions) -> list | None:
    """The reported bugs to check after training (``oig.bugs.suite``), or None when no source was given."""
    if opts.bugs is None and not opts.bugs_repo:
        return None
    from oig.bugs import suite as bugs

    return bugs.load_bugs(opts.bugs, opts.bugs_repo)


def bug_suite(bugs: list, model_dir: Path, root: Path) -> dict:
    """training_log's ``bugs`` and ``bugs_summary``: each bug's answer from the model model.yaml names
    (the one before this run; the reported answer when there is none) and from the model just trained."""
    from oig.bugs import suite as b

    ask_before = None
    if (Path(root) / runlog.MODEL_YAML).is_file():
        try:
            ask_before = b.model_asker(Path(root) / runlog.MODEL_YAML)
        except OigError as exc:  # a broken model.yaml must not cost the run: judge against the report
            print(f"oig train: warning: not asking the previous model: {exc}", file=sys.stderr)
    ask_after = b.section_asker({"local_path": str(Path(model_dir).resolve())})
    return b.log_section(b.run_suite(bugs, ask_before, ask_after))


# --- publishing and the two files -----------------------------------------------------------------------------


def finish(run: dict, model_dir: Path, config, opts: TrainOptions) -> dict:
    """Publish, then write training_log and (when something was published) model.yaml.

    A failed publish still writes training_log, saying so, and leaves model.yaml as it was.
    """
    from oig.publish.publish import publish

    try:
        section = publish(Path(model_dir), mode=opts.publish, run=run, config=config, together=opts.together,
                          data_dir=Path(opts.data))
    except OigError as exc:
        run["published"] = {"mode": opts.publish, "error": str(exc)}
        try:
            runlog.write_training_log(opts.root, run)
        except runlog.RunLogError as log_exc:
            raise TrainError(f"{exc}; and {log_exc}") from None
        raise
    run["published"] = {"mode": opts.publish}
    if section is not None:
        if "local_path" in section:  # relative to the repository root, wherever the command runs
            section = {**section, "local_path": _display(model_dir, opts.root)}
        run["model"] = section
    # Both files or neither: a full disk leaves the previous training_log and model.yaml as they were.
    runlog.write_run_files(opts.root, run, runlog.model_document(section, run) if section is not None else None)
    return run


def _train_on_together(mixture_dir: Path, config, run: dict, opts: TrainOptions, started: float) -> dict:
    """``backend: together``: Together's hosted fine-tuning trains; nothing runs here."""
    from oig.train.together import train_on_together

    # --base-model overrides training.yaml here too.
    result = train_on_together(mixture_dir, replace(config, base_model=run["base_model"]), run)
    finished = time.time()
    run.update({"finished_at": _iso(finished), "duration_s": round(finished - started, 2),
                "together_job": result.get("job"), "model": result["model"],
                "published": {"mode": "together"}})
    runlog.write_run_files(opts.root, run, runlog.model_document(result["model"], run))
    return run

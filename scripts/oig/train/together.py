"""Hosted fine-tuning on Together AI (``backend: together``): upload the mixture as chat JSONL
(``files.upload``; the held-out split as the validation file, the preference pairs for ``method: dpo``),
start a fine-tuning job (``fine_tuning.create``), poll it and return the resulting model for model.yaml.
Every training.yaml setting is mapped to Together's API or refused by name (``fine_tune_arguments``).
Nothing trains on this machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from oig import files
from oig.errors import TogetherError, redact
from oig.together_client import POLL_S, _first_line, call, make_client, wait_for
from oig.train.args import DEFAULT_BETA

TRAIN_FILE = "together_train.jsonl"
EVAL_FILE = "together_eval.jsonl"  # the validation file
PREFERENCE_FILE = "together_preferences.jsonl"
FINE_TUNE_TIMEOUT_S = 12 * 3600.0


def write_training_file(mixture_dir: Path) -> tuple[Path, int]:
    """mixture.jsonl as Together's chat format: one ``{"messages": [...]}`` per line (no ``slice`` key)."""
    source = Path(mixture_dir) / "mixture.jsonl"
    if not source.is_file():
        raise TogetherError(f"{source} does not exist: run `oig mix` (or `oig train`) to build the mixture first")
    target = Path(mixture_dir) / TRAIN_FILE
    count = 0
    # Written beside the target and renamed over it: a bad line or a full disk leaves no half file.
    with source.open(encoding="utf-8") as lines, files.atomic_output(target) as out:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                messages = record["messages"]
            except (ValueError, KeyError, TypeError):
                raise TogetherError(f"{source}:{number}: not a mixture record (a JSON object with "
                                    "messages)") from None
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            count += 1
        if not count:
            raise TogetherError(f"{source} is empty: the mixture has no examples to train on")
    return target, count


# What hosted fine-tuning does with each training.yaml setting (the README's table says the same). A
# setting in none of these lists is refused by name: nothing is accepted and then not done.
HONOURED = {  # training.yaml key -> fine_tuning.create parameter
    "num_train_epochs": "n_epochs", "learning_rate": "learning_rate",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_length": "max_seq_length", "warmup_steps": "warmup_ratio", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "lr_scheduler_type": "lr_scheduler_type", "seed": "random_seed",
    "packing": "packing", "assistant_only_loss": "train_on_inputs",
}
OIG_HONOURED = ("base_model", "backend", "method", "dpo_beta", "eval_size", "lora", "lora_r", "lora_alpha",
                "lora_dropout", "lora_target_modules", "together_model_name", "hub_repo")
# Settings that only shape the run on this machine (logging, checkpoints, data loading, precision): Together
# decides them for its own hardware, and the trained model is the same either way.
LOCAL_ONLY = ("logging_steps", "logging_strategy", "logging_first_step", "save_steps", "save_strategy",
              "save_total_limit", "eval_strategy", "eval_steps", "per_device_eval_batch_size", "report_to",
              "disable_tqdm", "dataloader_num_workers", "dataloader_pin_memory", "bf16", "fp16", "tf32",
              "gradient_checkpointing", "activation_checkpointing", "data_seed")
REFUSED_HERE = {
    "momentum": "Together's fine-tuning API has no optimizer settings (its optimizer's beta1 is fixed)",
    "load_in_4bit": "Together trains LoRA adapters on its own 16-bit base (set `lora: true` instead)",
}


def fine_tune_arguments(config, run: dict, *, validation_file: str | None = None, method: str = "sft") -> dict:
    """``fine_tuning.create`` arguments from training.yaml, every setting mapped to Together's API or
    refused by name (``TogetherError`` listing them all): see ``HONOURED``, ``LOCAL_ONLY``.

    The batch is the total one, as Together counts it: per_device_train_batch_size x
    gradient_accumulation_steps (one process: a local run's per-device batch is the whole batch).
    LoRA is always explicit: local training without ``lora`` is a full fine-tune, and so is this."""
    from oig.train.args import check_refused

    t = dict(getattr(config, "training", None) or {})
    o = dict(getattr(config, "oig", None) or {})
    check_refused(t, TogetherError)
    problems = [f"{key}: {why}" for key, why in REFUSED_HERE.items() if o.get(key)]
    problems += [f"{key}: Together's fine-tuning API has no such setting" for key in sorted(t)
                 if key not in HONOURED and key not in LOCAL_ONLY]
    problems += [f"{key}: not used by hosted fine-tuning" for key in sorted(o)
                 if key not in OIG_HONOURED and key not in REFUSED_HERE and key != "seed"]
    epochs = t.get("num_train_epochs")
    if epochs is not None and float(epochs) != int(float(epochs)):
        problems.append(f"num_train_epochs: Together trains whole epochs; {epochs} is not one")
    warmup = t.get("warmup_steps")
    if isinstance(warmup, int | float) and warmup >= 1:
        problems.append(f"warmup_steps: Together takes warmup as a ratio of the run; {warmup} steps is not one "
                        "(write it below 1)")
    if t.get("lr_scheduler_type") not in (None, "linear", "cosine"):
        problems.append(f"lr_scheduler_type: Together has linear and cosine, not {t['lr_scheduler_type']!r}")
    if problems:
        raise TogetherError("backend: together cannot honour these training.yaml settings; remove them or use "
                            "backend: trl: " + "; ".join(problems))

    args: dict = {"training_method": method}
    if method == "sft":
        # Loss on assistant turns only, as the local trainer does (unless assistant_only_loss: false).
        args["train_on_inputs"] = not t.get("assistant_only_loss", True)
    else:
        args["dpo_beta"] = float(o.get("dpo_beta", DEFAULT_BETA))
    if epochs is not None:
        args["n_epochs"] = int(float(epochs))
    if "learning_rate" in t:
        args["learning_rate"] = float(t["learning_rate"])
    accumulation = int(t.get("gradient_accumulation_steps") or 1)
    if "per_device_train_batch_size" in t:
        args["batch_size"] = int(t["per_device_train_batch_size"]) * accumulation  # Together's is the total
    if "gradient_accumulation_steps" in t:
        args["gradient_accumulation_steps"] = accumulation
    if t.get("max_length"):
        args["max_seq_length"] = int(t["max_length"])
    if isinstance(warmup, int | float):
        args["warmup_ratio"] = float(warmup)  # transformers 5: below 1 is a ratio
    for ours in ("weight_decay", "max_grad_norm"):
        if isinstance(t.get(ours), int | float):
            args[ours] = float(t[ours])
    if t.get("lr_scheduler_type"):
        args["lr_scheduler_type"] = t["lr_scheduler_type"]
    args["packing"] = bool(t.get("packing", False))  # Together packs by default; TRL does not
    seed = t.get("seed", getattr(config, "seed", None))
    if isinstance(seed, int):
        args["random_seed"] = seed
    if validation_file:
        args["validation_file"] = validation_file
        args["n_evals"] = max(1, args.get("n_epochs", 1))  # one evaluation per epoch
    args["lora"] = bool(o.get("lora"))
    if o.get("lora"):
        for key in ("lora_r", "lora_alpha", "lora_dropout"):
            if o.get(key) is not None:
                args[key] = o[key]
        modules = o.get("lora_target_modules")
        if modules:
            args["lora_trainable_modules"] = modules if isinstance(modules, str) else ",".join(modules)
    return args


def write_preference_file(mixture_dir: Path) -> tuple[Path, int] | None:
    """preferences.jsonl as Together's preference format (``input.messages``, ``preferred_output``,
    ``non_preferred_output``); None when the mixture has no pairs."""
    from oig.train.dpo import read_preferences

    pairs = read_preferences(Path(mixture_dir))
    if not pairs:
        return None
    target = Path(mixture_dir) / PREFERENCE_FILE
    with files.atomic_output(target) as out:
        for p in pairs:
            out.write(json.dumps({"input": {"messages": p["prompt"]}, "preferred_output": p["chosen"],
                                  "non_preferred_output": p["rejected"]}, ensure_ascii=False) + "\n")
    return target, len(pairs)


def train_on_together(mixture_dir: Path, config, run: dict, *, client=None,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      timeout_s: float = FINE_TUNE_TIMEOUT_S, poll_s: float = POLL_S) -> dict:
    """Fine-tune on Together's hosted service; returns {"model": model.yaml section, "job": details}.

    ``method: dpo`` runs as it does locally: SFT on the mixture (when it has examples), then DPO on the
    preference pairs from that job's result (``from_checkpoint``); DPO alone when there is no mixture."""
    base_model = getattr(config, "base_model", None) or run.get("base_model")
    if not base_model or base_model == "tiny":
        raise TogetherError("backend: together needs `base_model` in training.yaml set to a model Together "
                            "can fine-tune (the built-in tiny model exists only locally)")
    method = (getattr(config, "oig", None) or {}).get("method", "sft")
    fine_tune_arguments(config, run, method=method)  # every setting checked before anything is uploaded
    started = clock()
    mixture_dir = Path(mixture_dir)

    # --- the files: training, held-out (eval.jsonl, as the validation file), preference pairs ----------
    preferences = write_preference_file(mixture_dir) if method == "dpo" else None
    if method == "dpo" and preferences is None:
        raise TogetherError("`method: dpo` needs preference pairs: add a `Preferences:` section to a slice")
    sft_file = _sft_file(mixture_dir, required=method != "dpo")
    client = client or make_client()

    def upload(path: Path, count: int) -> str:
        return call(f"uploading {path.name} ({count:,} examples) to Together",
                    lambda: client.files.upload(path, purpose="fine-tune")).id

    # --- the jobs: SFT, then DPO from its result ------------------------------------------------------
    jobs = []
    start: dict = {"model": base_model}
    if sft_file:
        training_file = upload(*sft_file)
        eval_file = _eval_file(mixture_dir)
        validation = upload(*eval_file) if eval_file else None
        args = fine_tune_arguments(config, run, validation_file=validation, method="sft")
        jobs.append(_run_job(client, training_file, start, args, sft_file[1], sleep=sleep, clock=clock,
                             timeout_s=timeout_s, poll_s=poll_s))
        start = {"from_checkpoint": jobs[-1]["id"]}
    if preferences:
        args = fine_tune_arguments(config, run, method="dpo")
        jobs.append(_run_job(client, upload(*preferences), start, args, preferences[1], sleep=sleep, clock=clock,
                             timeout_s=timeout_s, poll_s=poll_s))
    job = {**jobs[-1], "base_model": base_model, "duration_s": round(clock() - started, 1)}
    if len(jobs) > 1:
        job["sft_job"] = jobs[0]
    return {
        "model": {"together": {"model": jobs[-1]["output"],
                               "base_url": str(client.base_url).rstrip("/").removesuffix("/v1")}},
        "job": job,
    }


def _sft_file(mixture_dir: Path, *, required: bool) -> tuple[Path, int] | None:
    if not required and not _has_examples(mixture_dir / "mixture.jsonl"):
        return None
    return write_training_file(mixture_dir)


def _has_examples(path: Path) -> bool:
    try:
        return any(line.strip() for line in path.open(encoding="utf-8"))
    except OSError:
        return False


def _eval_file(mixture_dir: Path) -> tuple[Path, int] | None:
    """eval.jsonl (oig mix's held-out split) in Together's chat format; None when nothing is held out."""
    source = mixture_dir / "eval.jsonl"
    if not _has_examples(source):
        return None
    target = mixture_dir / EVAL_FILE
    count = 0
    with source.open(encoding="utf-8") as lines, files.atomic_output(target) as out:
        for line in lines:
            if line.strip():
                out.write(json.dumps({"messages": json.loads(line)["messages"]}, ensure_ascii=False) + "\n")
                count += 1
    return target, count


def _run_job(client, training_file: str, start: dict, args: dict, examples: int, *, sleep, clock, timeout_s,
             poll_s) -> dict:
    """Start one fine-tuning job and wait for it; its details for training_log, with its output model."""
    what = start.get("model") or start.get("from_checkpoint")
    job = call(f"starting {args['training_method']} fine-tuning of {what} on Together",
               lambda: client.fine_tuning.create(training_file=training_file, suffix="oig", **start, **args))
    job_id = job.id
    final: dict = {}

    def job_done() -> tuple[bool, str]:
        current = call(f"checking fine-tuning job {job_id}", lambda: client.fine_tuning.retrieve(job_id))
        status = str(getattr(current.status, "value", current.status))
        if status == "completed":
            final["job"] = current
            return True, status
        if status in ("error", "user_error", "cancelled"):
            raise TogetherError(f"fine-tuning job {job_id} ended as {status}: {_last_event(client, job_id)}")
        return False, status

    wait_for(f"fine-tuning job {job_id}", job_done, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep, clock=clock)
    output = getattr(final["job"], "x_model_output_name", None)
    if not output:
        raise TogetherError(f"fine-tuning job {job_id} completed but Together named no output model")
    return {"id": job_id, "status": "completed", "method": args["training_method"], "training_file": training_file,
            "examples": examples, "arguments": args, "output": output}


def _last_event(client, job_id: str) -> str:
    """The job's last event message: usually why it failed."""
    try:
        events = client.fine_tuning.list_events(job_id)
        data = list(getattr(events, "data", None) or [])
    except Exception:  # the reason is a courtesy; the failure itself is already known
        return "no reason given"
    messages = [getattr(e, "message", None) for e in data]
    messages = [m for m in messages if m]
    return redact(_first_line(messages[-1])) if messages else "no reason given"

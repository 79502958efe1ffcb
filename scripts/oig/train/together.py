"""Hosted fine-tuning on Together AI (``backend: together``): upload the mixture as chat JSONL
(``files.upload``), start a fine-tuning job (``fine_tuning.create``), poll it and return the resulting
model for model.yaml. Nothing trains on this machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from oig import files
from oig.errors import TogetherError, redact
from oig.together_client import POLL_S, _first_line, call, make_client, wait_for

TRAIN_FILE = "together_train.jsonl"
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


def fine_tune_arguments(config, run: dict) -> dict:
    """``fine_tuning.create`` arguments from training.yaml's resolved hyperparameters."""
    t = dict(getattr(config, "training", None) or {})
    o = dict(getattr(config, "oig", None) or {})
    args: dict = {"train_on_inputs": False}  # loss on assistant turns only, as the local trainer does
    if "num_train_epochs" in t:
        args["n_epochs"] = max(1, round(float(t["num_train_epochs"])))
    if "learning_rate" in t:
        args["learning_rate"] = float(t["learning_rate"])
    if "per_device_train_batch_size" in t:
        args["batch_size"] = int(t["per_device_train_batch_size"])
    if "gradient_accumulation_steps" in t:
        args["gradient_accumulation_steps"] = int(t["gradient_accumulation_steps"])
    if "max_length" in t and t["max_length"]:
        args["max_seq_length"] = int(t["max_length"])
    if isinstance(t.get("warmup_steps"), int | float) and 0 < t["warmup_steps"] < 1:
        args["warmup_ratio"] = float(t["warmup_steps"])  # transformers 5: below 1 is a ratio
    for ours, theirs in (("weight_decay", "weight_decay"), ("max_grad_norm", "max_grad_norm")):
        if isinstance(t.get(ours), int | float):
            args[theirs] = float(t[ours])
    if t.get("lr_scheduler_type") in ("linear", "cosine"):
        args["lr_scheduler_type"] = t["lr_scheduler_type"]
    seed = t.get("seed", getattr(config, "seed", None))
    if isinstance(seed, int):
        args["random_seed"] = seed
    if o.get("lora") is not None:
        args["lora"] = bool(o["lora"])
    if o.get("lora"):
        for key in ("lora_r", "lora_alpha", "lora_dropout"):
            if o.get(key) is not None:
                args[key] = o[key]
        modules = o.get("lora_target_modules")
        if modules:
            args["lora_trainable_modules"] = modules if isinstance(modules, str) else ",".join(modules)
    return args


def train_on_together(mixture_dir: Path, config, run: dict, *, client=None,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      timeout_s: float = FINE_TUNE_TIMEOUT_S, poll_s: float = POLL_S) -> dict:
    """Fine-tune on Together's hosted service; returns {"model": model.yaml section, "job": details}."""
    base_model = getattr(config, "base_model", None) or run.get("base_model")
    if not base_model or base_model == "tiny":
        raise TogetherError("backend: together needs `base_model` in training.yaml set to a model Together "
                            "can fine-tune (the built-in tiny model exists only locally)")
    started = clock()

    # --- the training file ---------------------------------------------------------------------------
    path, count = write_training_file(Path(mixture_dir))
    client = client or make_client()
    uploaded = call(f"uploading {path.name} ({count:,} examples) to Together",
                    lambda: client.files.upload(path, purpose="fine-tune"))

    # --- the job ---------------------------------------------------------------------------------------
    args = fine_tune_arguments(config, run)
    job = call(f"starting fine-tuning of {base_model} on Together",
               lambda: client.fine_tuning.create(training_file=uploaded.id, model=base_model, suffix="oig", **args))
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
    return {
        "model": {"together": {"model": output, "base_url": str(client.base_url).rstrip("/").removesuffix("/v1")}},
        "job": {"id": job_id, "status": "completed", "training_file": uploaded.id, "examples": count,
                "base_model": base_model, "arguments": args, "duration_s": round(clock() - started, 1)},
    }


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

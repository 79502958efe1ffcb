"""What training_log records about a run: its identity (git commit and branch, the run id), the
hyperparameters in effect, the loss by step, the hardware, times and paths as written.

The run id is a hash of what determines the run (commit, training.yaml, slices, base model), so the
same command after a crash finds its run folder and checkpoints. Paths inside the repository are
written relative to it: no machine paths in the log.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from oig.train.args import OWNED

# Fields recorded in training_log besides the ones training.yaml sets.
RECORDED = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "packing", "optim",
    "optim_args", "adam_beta1", "adam_beta2", "weight_decay", "lr_scheduler_type", "warmup_steps",
    "max_grad_norm", "seed", "data_seed", "bf16", "fp16", "activation_checkpointing", "logging_steps",
    "save_steps", "save_total_limit", "eval_strategy", "eval_steps",
)
# training.yaml keys oig handles itself that training_log records with the hyperparameters.
RECORDED_OIG = ("momentum", "eval_size", "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                "load_in_4bit")


# --- the run's identity ---------------------------------------------------------------------------------------


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


def make_run_id(commit: str | None, base_model: str, opts) -> str:
    """A name that is the same when the same run is started again, so it finds its checkpoints
    (``opts``: the run's TrainOptions: its training.yaml, and its slices or --mixture)."""
    h = hashlib.sha256()
    h.update(f"{commit}\0{base_model}\0".encode())
    for path in (Path(opts.config), *(_slice_files(Path(opts.data)) if not opts.mixture else ()),
                 *((Path(opts.mixture) / "manifest.json",) if opts.mixture else ())):
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"-")
    return "run-" + h.hexdigest()[:12]


def _slice_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*.y*ml") if p.is_file()) if data_dir.is_dir() else []


# --- what it trained with, and how it went ------------------------------------------------------------------


def hyperparameters(args, config) -> dict:
    values = args.to_dict()
    keys = [k for k in config.training if k not in OWNED and k in values]
    keys += [k for k in RECORDED if k not in keys and k in values]
    out = {k: values[k] for k in keys}
    if "assistant_only_loss" in config.training:
        out["assistant_only_loss"] = config.training["assistant_only_loss"]
    for key in RECORDED_OIG:
        if key in config.oig:
            out[key] = config.oig[key]
    return out


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def run_mean_loss(log_history: list[dict]) -> float | None:
    """The mean training loss over the whole run, from the trainer's log history: each logged ``loss`` is
    the mean over the steps since the one logged before it, so it counts for that many steps. A resumed
    run's history starts with the steps before its checkpoint, so a fresh run and a resumed one of the
    same run report the same number (the steps after the last logging step are not in it)."""
    total = steps = 0.0
    previous = 0
    for entry in sorted((e for e in log_history if "loss" in e and "step" in e), key=lambda e: e["step"]):
        span = entry["step"] - previous
        if span > 0:
            total += float(entry["loss"]) * span
            steps += span
            previous = entry["step"]
    return total / steps if steps else None


def metrics_history(log_history: list[dict]) -> list[dict]:
    """Loss and eval loss by step, one entry per step that logged either."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = by_step.setdefault(int(step), {"step": int(step)})
        if "loss" in entry:
            row["loss"] = rounded(entry["loss"])
            if "learning_rate" in entry:
                row["learning_rate"] = rounded(entry["learning_rate"], 10)
            if "epoch" in entry:
                row["epoch"] = rounded(entry["epoch"], 4)
        if "eval_loss" in entry:
            row["eval_loss"] = rounded(entry["eval_loss"])
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


# --- times and paths as written ----------------------------------------------------------------------------


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(started: float) -> dict:
    """training_log's ``finished_at`` and ``duration_s``, now."""
    now = time.time()
    return {"finished_at": iso(now), "duration_s": round(now - started, 2)}


def display(path: Path | None, root: Path) -> str | None:
    """A path relative to the repository root when it lies inside it (no machine paths in the log)."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()

"""The run folder on disk: one ``oig train`` at a time in it, checkpoints to resume from, and the model
folder replaced whole.

- ``lock_run_dir``: an exclusive ``flock`` for the whole run; a second run in the same folder stops at
  once instead of resuming from checkpoints that are being written.
- ``last_checkpoint``: the newest complete checkpoint of this run (``RUN_MARKER`` says whose they
  are); ``resume_point`` and ``training`` wrap a trainer's ``train()`` with them.
- ``save_model``: the final model written beside the old one, then swapped in, so a crash or a full
  disk never leaves half a model where model.yaml may point.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from oig import files
from oig.train.args import cpu_threads, merge_adapters
from oig.train.errors import TrainError, checkpoint_errors, disk_errors, write_problem

LOCK_FILE = ".lock"  # in the run folder: held by the `oig train` running there (its pid inside)
RUN_MARKER = "RUN_ID"  # beside the checkpoints: which run they belong to


# --- one run at a time --------------------------------------------------------------------------------------


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


@contextmanager
def run_folder(run_dir: Path, *, lock: bool = True):
    """The block that uses the run folder: locked (``lock``: the main process; the others share its
    lock), a full disk or a read-only folder anywhere in it one line naming the path."""
    with lock_run_dir(run_dir) if lock else contextlib.nullcontext(), disk_errors():
        yield


# --- resuming -----------------------------------------------------------------------------------------------


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


def resume_point(checkpoint_dir: Path, run_id: str, state) -> Path | None:
    """The checkpoint a trainer resumes from, for every process: the first of each machine (whose run
    folder it is) first clears another run's checkpoints and marks the folder; the others then find
    what it left."""
    with state.local_main_process_first():
        return last_checkpoint(checkpoint_dir, run_id if state.is_local_main_process else None)


@contextmanager
def training(checkpoint_dir: Path, threads: int | None, out_of_memory: str):
    """The block that trains: torch on ``threads`` CPU threads (None: unchanged); a checkpoint that
    cannot be written, and running out of GPU memory (``out_of_memory`` says what to do), are one line."""
    import torch

    try:
        with cpu_threads(threads), checkpoint_errors(checkpoint_dir):
            yield
    except torch.OutOfMemoryError:
        raise TrainError(out_of_memory) from None


# --- the model folder ---------------------------------------------------------------------------------------


def save_model(trainer, tokenizer, model_dir: Path, config, sharded: bool = False) -> None:
    """The final model: LoRA adapters are merged into the weights (loadable with ``from_pretrained``);
    QLoRA's, whose 4-bit base cannot be merged exactly, are saved as adapters (``adapter_config.json``
    naming the base model, no ``config.json``), which ``oig.publish`` publishes as adapters.

    ``sharded`` (FSDP, ZeRO-3: each process holds a part of the weights): every process takes part in
    ``trainer.save_model``, which gathers the whole model (FSDP's FULL_STATE_DICT, ZeRO-3's 16-bit
    weights) and writes it from the main process into the folder that then replaces ``model_dir``."""
    accelerator = trainer.accelerator
    if sharded:
        gathered = model_dir.with_name(f"{model_dir.name}.gathered")
        if accelerator.is_main_process:
            shutil.rmtree(gathered, ignore_errors=True)
        accelerator.wait_for_everyone()
        trainer.save_model(str(gathered))  # every process: the parts are gathered, the main process writes
        if accelerator.is_main_process:
            tokenizer.save_pretrained(gathered)
            _replace_folder(model_dir, lambda tmp: os.replace(gathered, tmp))
    else:
        model = merge_adapters(trainer.model, config)
        if accelerator.is_main_process:
            _replace_folder(model_dir, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    accelerator.wait_for_everyone()


def _replace_folder(target: Path, write) -> None:
    """``write(tmp)`` into a folder beside ``target``, then swap it in whole (``files.replace_folder``):
    a failed save keeps the previous model, and a disk problem is one line."""
    try:
        files.replace_folder(target, write)
    except Exception as exc:  # safetensors and torch raise their own types
        why = write_problem(exc, target.parent)
        if why is None:
            raise
        raise TrainError(f"cannot save the model to {target}: {why}; the folder is as it was before") from None

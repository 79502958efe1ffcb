"""How training fails: its two exception types, and a failed write (a full disk, a read-only folder, no
permission) turned into one line that names the path and the cause, never a traceback.

safetensors and torch.save wrap the OS error in their own exceptions, and torch.save on a full disk
says only "unexpected pos" or "iostream error": ``write_problem`` recognises all of them.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from oig.errors import OigError

# What a failed write the user can fix looks like: a full disk or quota, a read-only or foreign folder.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
LOW_DISK_BYTES = 64 * 1024**2  # below this much free space a failed torch.save is a full disk


class TrainError(OigError):
    """Training cannot start or failed for a reason the user can fix."""


class DPOError(OigError):
    """The DPO stage cannot start or failed for a reason the user can fix."""


def write_problem(exc: BaseException, where: Path | None = None) -> str | None:
    """The cause in words when ``exc`` is a write the user can fix (a full disk, a read-only folder, no
    permission), else None. safetensors and torch.save wrap the OS error in their own exceptions."""
    if isinstance(exc, OSError):
        return (exc.strerror or os.strerror(exc.errno)) if exc.errno in DISK_ERRNOS else None
    text = str(exc)
    for code in DISK_ERRNOS:
        if os.strerror(code) in text:
            return os.strerror(code)
    # torch.save says only "unexpected pos" or "iostream error"; the partial file it leaves fills the disk.
    if isinstance(exc, RuntimeError) and where is not None and "out of memory" not in text.lower():
        try:
            if shutil.disk_usage(_existing(where)).free < LOW_DISK_BYTES:
                return os.strerror(errno.ENOSPC)
        except OSError:
            pass
    return None


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@contextmanager
def disk_errors():
    """A full disk or a read-only folder anywhere in the run becomes a TrainError naming the path."""
    try:
        yield
    except OSError as exc:
        why = write_problem(exc)
        if why is None:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        raise TrainError(f"cannot write{where}: {why}") from None


@contextmanager
def checkpoint_errors(checkpoint_dir: Path):
    """A checkpoint that cannot be written (full disk, read-only folder) becomes a TrainError."""
    try:
        yield
    except Exception as exc:  # safetensors and torch raise their own types
        why = write_problem(exc, checkpoint_dir)
        if why is None:
            raise
        raise TrainError(f"cannot write a checkpoint in {checkpoint_dir}: {why}; free some space (or make it "
                         "writable) and rerun: it resumes from the last complete checkpoint") from None

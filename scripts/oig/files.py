"""Side effects every stage shares: atomic writes, and how long to wait before retrying a call.

Every file oig writes goes through ``write_atomic`` / ``write_bytes_atomic`` / ``write_all_atomic``
(or, for a stream, ``atomic_output``): the content goes to a temp file beside the target, is flushed
and synced, then renamed over it, so a crash, a full disk or a read-only folder never leaves half a
file where the old one was. A failure is a :class:`WriteError` naming the path and the cause, and no
temp file is left behind.

``replace_folder`` does the same for a folder (a saved model, a pull request's data/).

``backoff_delay`` is the one retry formula: exponential backoff with full jitter (a random wait between
0 and ``base * 2**attempt``, capped), or the server's Retry-After when it sent one (capped too).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from oig.errors import OigError


class WriteError(OigError):
    """A file could not be written (full disk, read-only folder, no permission).

    ``path`` is the file and ``reason`` the cause (``No space left on device``), for callers that put
    the failure in their own words."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot write {path}: {reason}")


def _failed(path: Path, exc: OSError) -> WriteError:
    return WriteError(path, exc.strerror or str(exc))


def _temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _failed(path, exc) from None


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "w", *, encoding: str | None = "utf-8", suffix: str = ".tmp",
                  sync: bool = True) -> Iterator[IO]:
    """A file object whose content replaces ``path`` only when the block ends without an error.

    An OSError inside the block (the caller's own reads included) is a WriteError for ``path``; any
    other exception passes through. Either way the temp file is gone and ``path`` is as it was."""
    path = Path(path)
    fd, tmp = _temp_beside(path, suffix)
    done = False
    try:
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
                yield f
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            done = True
        except OSError as exc:
            raise _failed(path, exc) from None
    finally:
        if not done:
            Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_all_atomic([(Path(path), text)])


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path, "wb") as f:
        f.write(data)


def write_all_atomic(files: list[tuple[Path, str | bytes]]) -> None:
    """Write each ``(path, content)`` via a temp file beside it; every temp file is complete (and synced)
    before the first is renamed into place, so a full disk or a read-only folder leaves all of them as
    they were."""
    pending: list[tuple[Path, str]] = []  # (target, temp file) not yet renamed
    try:
        for path, content in files:
            path = Path(path)
            fd, tmp = _temp_beside(path)
            pending.append((path, tmp))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content.encode("utf-8") if isinstance(content, str) else content)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise _failed(path, exc) from None
        while pending:
            path, tmp = pending[0]
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _failed(path, exc) from None
            pending.pop(0)
    finally:
        for _, tmp in pending:
            Path(tmp).unlink(missing_ok=True)


def replace_folder(target: Path, write: Callable[[Path], object], *, hidden: bool = False) -> None:
    """``write(tmp)`` creates and fills a new folder beside ``target``, which then replaces ``target`` whole: a crash
    or a full disk never leaves half a folder where something points, and a failed ``write`` leaves the
    previous folder as it was. ``write``'s own exceptions pass through (after the clean-up)."""
    target = Path(target)
    prefix = "." if hidden else ""
    tmp = target.with_name(f"{prefix}{target.name}.tmp")
    old = target.with_name(f"{prefix}{target.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)  # creates the folder (save_pretrained does)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def backoff_delay(attempt: int, *, base_s: float = 1.0, cap_s: float = 60.0, retry_after_s: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The server's Retry-After wins when given (never more than ``cap_s``); otherwise full jitter: a
    uniform random wait in [0, min(cap_s, base_s * 2**attempt)], so many callers do not retry in step.
    """
    if retry_after_s is not None:
        return max(0.0, min(cap_s, float(retry_after_s)))
    return (rng or random).uniform(0.0, min(cap_s, base_s * 2.0 ** attempt))

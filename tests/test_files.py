"""oig.files: atomic writes (all or nothing, no temp file left) and the one backoff formula."""

from __future__ import annotations

import os
import random

import pytest

from oig.errors import OigError
from oig.files import WriteError, atomic_output, backoff_delay, write_all_atomic, write_atomic


def test_atomic_output_replaces_only_a_finished_file(tmp_path):
    target = tmp_path / "out" / "a.jsonl"
    with atomic_output(target) as f:
        f.write("one\n")
    assert target.read_text() == "one\n"
    with pytest.raises(ValueError), atomic_output(target) as f:
        f.write("half")
        raise ValueError("the caller failed")
    assert target.read_text() == "one\n" and os.listdir(target.parent) == ["a.jsonl"]


def test_an_os_error_is_a_write_error_naming_the_path(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(WriteError) as info:
        write_atomic(tmp_path / "taken" / "x.json", "{}")
    assert isinstance(info.value, OigError) and info.value.path == tmp_path / "taken" / "x.json"
    assert str(info.value) == f"cannot write {info.value.path}: {info.value.reason}" and info.value.reason
    target = tmp_path / "b.bin"
    with pytest.raises(WriteError, match="b.bin"), atomic_output(target, "wb") as f:
        f.write(b"x")
        (tmp_path / "missing").read_bytes()  # an OSError inside the block is the write's
    assert not target.exists() and os.listdir(tmp_path) == ["taken"]


def test_write_all_atomic_writes_all_or_none(tmp_path):
    (tmp_path / "taken").write_text("x")
    first = tmp_path / "first.txt"
    first.write_text("old")
    with pytest.raises(WriteError):
        write_all_atomic([(first, "new"), (tmp_path / "taken" / "second.txt", b"new")])
    assert first.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["first.txt", "taken"]
    write_all_atomic([(first, "new"), (tmp_path / "second.txt", b"\x00")])
    assert first.read_text() == "new" and (tmp_path / "second.txt").read_bytes() == b"\x00"


class Share(random.Random):
    """A jitter that always draws the same share of its range, so the backoff's growth shows exactly."""

    def __init__(self, share: float):
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + self.share * (b - a)


def test_backoff_is_full_jitter_capped_and_honours_retry_after():
    assert [backoff_delay(n, base_s=1.0, rng=Share(1.0)) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(3, base_s=1.0, rng=Share(0.0)) == 0.0  # full jitter reaches down to no wait
    rng = random.Random(5)
    assert all(0.0 <= backoff_delay(4, base_s=0.5, rng=rng) <= 8.0 for _ in range(200))
    assert backoff_delay(0, retry_after_s=7.5) == 7.5  # the server's wait wins
    assert backoff_delay(0, retry_after_s=900, cap_s=300) == 300 and backoff_delay(0, retry_after_s=-1) == 0.0


def test_replace_folder_swaps_whole_or_keeps_the_old_one(tmp_path):
    from oig.files import replace_folder

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")

    def broken(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_folder(target, broken)
    assert (target / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    replace_folder(target, lambda tmp: (tmp.mkdir(), (tmp / "weights").write_text("new")))
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

"""Records and exports written as they finish: appended in instruction order, checkpointed, resumable.

While a run goes, each finished record is appended, with its SFT, preference and battle rows, to
``records.jsonl.part``, ``sft.jsonl.part``, ``prefs.jsonl.part`` and ``battles.jsonl.part`` (flushed
at once, so a reader or a crash sees every finished record), and ``progress.json`` (atomic) says how
many records the files hold, up to which byte, and the run's counts so far, at most every
``CHECKPOINT_S`` and at the end. Nothing holds more than the records in flight.

When the run ends, each ``.part`` file is renamed over its final name and ``progress.json`` removed:
the finished files appear at once, as a whole. A run that was interrupted (killed, a power cut)
leaves the ``.part`` files and ``progress.json``; the next run of the same plan (same config bytes,
seed and instruction ids, in order) cuts the files back to the checkpoint, a torn last line
included, and goes on after its last record: the records already written are neither recomputed
nor rewritten. Any other plan starts the files again. A finished run that is run again rewrites every
record (from the call store, making only the calls that are missing or failed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from oig.files import write_atomic
from oig.generate import export

FILES = ("records.jsonl", "sft.jsonl", "prefs.jsonl", "battles.jsonl")
PART = ".part"
PROGRESS = "progress.json"
CHECKPOINT_S = 1.0  # seconds between checkpoints; a crash loses at most this much finished work
PROGRESS_VERSION = 1
# Counts over the records, kept in the checkpoint so that a resumed run reports the whole run.
TALLIES = ("records", "responses", "response_errors", "evaluations", "parse_failures", "unscored", "incomplete")


def tally(record: dict) -> dict[str, int]:
    """One record's share of the run's counts."""
    responses = record["responses"]
    return {"records": 1, "responses": len(responses),
            "response_errors": sum(x["error"] is not None for x in responses),
            "evaluations": len(record["evaluations"]),
            "parse_failures": sum(not e["parse_ok"] for e in record["evaluations"]),
            "unscored": int(record["best"] is None), "incomplete": int(not record["verdicts_complete"])}


class Sink:
    """Appends records and their export rows to ``out_dir``; see the module docstring."""

    def __init__(self, out_dir: Path, plan_key: dict, *, prefs_policy: str, prefs_margin: float, seed: int,
                 pairwise: bool, total: int):
        self.out_dir = Path(out_dir)
        self.plan_key, self.total = plan_key, total
        self.prefs = (prefs_policy, prefs_margin, seed)
        self.pairwise = pairwise
        self.counts = dict.fromkeys(TALLIES, 0)
        self.lines = dict.fromkeys(FILES, 0)
        self.first_error: str | None = None
        self.resumed = 0
        self._files: dict[str, object] = {}
        self._last = 0.0

    # --- opening: fresh, or after an interrupted run of the same plan ---------------------------------
    def open(self) -> int:
        """Open the files; returns how many records an interrupted run of this plan already wrote."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_progress()
        resume = state is not None and state.get("plan") == self.plan_key and self._truncate(state["offsets"])
        if resume:
            self.counts.update(state["counts"])
            self.lines.update(state["lines"])
            self.first_error = state.get("first_error")
            self.resumed = self.counts["records"]
        # Held open for the whole run; close() or finish() closes them.
        self._files = {name: open(self._part(name), "ab" if resume else "wb") for name in FILES}  # noqa: SIM115
        self.checkpoint(force=True)
        return self.resumed

    def _part(self, name: str) -> Path:
        return self.out_dir / (name + PART)

    def _read_progress(self) -> dict | None:
        try:
            state = json.loads((self.out_dir / PROGRESS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = (isinstance(state, dict) and state.get("version") == PROGRESS_VERSION
              and isinstance(state.get("offsets"), dict) and isinstance(state.get("counts"), dict)
              and isinstance(state.get("lines"), dict)
              and all(isinstance(state["offsets"].get(n), int) for n in FILES)
              and all(isinstance(state["counts"].get(k), int) for k in TALLIES)
              and all(isinstance(state["lines"].get(n), int) for n in FILES))
        return state if ok else None

    def _truncate(self, offsets: dict[str, int]) -> bool:
        """Cut every part file back to its checkpointed size; False when one is missing or shorter."""
        parts = {name: self._part(name) for name in FILES}
        try:
            if any(parts[n].stat().st_size < offsets[n] for n in FILES):
                return False
        except OSError:
            return False
        for name, path in parts.items():
            os.truncate(path, offsets[name])
        return True

    # --- appending ------------------------------------------------------------------------------------
    def write(self, record: dict) -> None:
        rows = {"records.jsonl": [record], "sft.jsonl": list(export.sft_rows([record])),
                "prefs.jsonl": list(export.pref_rows([record], *self.prefs)),
                "battles.jsonl": list(export.battle_rows([record], self.pairwise))}
        for name, items in rows.items():
            if items:
                f = self._files[name]
                f.write("".join(export.dumps(r) for r in items).encode("utf-8"))
                f.flush()
                self.lines[name] += len(items)
        for key, value in tally(record).items():
            self.counts[key] += value
        if self.first_error is None:
            self.first_error = next((f"{x['model']}: {x['error']}" for x in record["responses"] if x["error"]), None)
        self.checkpoint()

    def checkpoint(self, force: bool = False) -> None:
        """progress.json: the files' sizes at a record boundary, the counts, the progress."""
        now = time.monotonic()
        if not force and now - self._last < CHECKPOINT_S:
            return
        self._last = now
        for f in self._files.values():
            os.fsync(f.fileno())  # the data on disk before the checkpoint that points past it
        offsets = {name: f.tell() for name, f in self._files.items()}
        write_atomic(self.out_dir / PROGRESS, json.dumps(
            {"version": PROGRESS_VERSION, "plan": self.plan_key, "total": self.total, "offsets": offsets,
             "counts": self.counts, "lines": self.lines, "first_error": self.first_error,
             "updated": time.time()}, ensure_ascii=False) + "\n")

    # --- the end --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the files, leaving them as parts with their checkpoint (an interrupted run)."""
        if self._files and not next(iter(self._files.values())).closed:
            self.checkpoint(force=True)
            for f in self._files.values():
                f.close()

    def finish(self) -> dict[str, int]:
        """Sync every part to disk and rename it over its final name; returns file name -> lines."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for name in FILES:
            os.replace(self._part(name), self.out_dir / name)
        (self.out_dir / PROGRESS).unlink(missing_ok=True)
        return dict(self.lines)

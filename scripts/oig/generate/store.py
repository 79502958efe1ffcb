"""Every finished model and judge call, in SQLite, keyed by a hash of what was asked.

A call's key is the sha256 of the canonical JSON of everything that decides its answer (kind, provider,
model, settings, messages, judge prompt version): an interrupted run resumes with no finished call
repeated, and changing one model's settings changes only that model's keys. Only finished calls are
stored; a call that failed after all its tries is not, so a rerun tries it again.

WAL mode with ``synchronous=NORMAL``: each call is committed as it finishes and survives the process
being killed (not a power cut, which costs at most the last calls). One connection, used from the
event loop's thread only. Values never hold API keys: they are what the model answered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = 1


def call_key(content: dict) -> str:
    """The sha256 of a call's canonical JSON: sorted keys, no spaces, Unicode as is."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; each put is its own small transaction.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                        "model TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # Batch mode: every submitted batch, and which calls it holds (a call in a live batch is not resubmitted).
        self.db.execute("CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, provider TEXT NOT NULL, "
                        "status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS batch_calls (key TEXT NOT NULL, batch_id TEXT NOT NULL, "
                        "kind TEXT NOT NULL, model TEXT NOT NULL, PRIMARY KEY (key, batch_id))")
        row = self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            from oig.errors import OigError

            raise OigError(f"{self.path} was written by another version of oig generate (store schema {row[0]}, "
                           f"this one reads {SCHEMA_VERSION}); use another --out folder")
        self.writes = 0
        self.write_s = 0.0  # time spent in put(), for the overhead report

    @classmethod
    def open_readonly(cls, path: Path) -> CallStore:
        """The store for a dry run: the real one when it exists, else an empty one in memory (no file made)."""
        return cls(path) if Path(path).exists() else cls(Path(":memory:"))

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None  # a damaged row is asked again, then replaced
        return value if isinstance(value, dict) else None

    def has(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` are stored (for --dry-run), in chunks under SQLite's parameter limit."""
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT key FROM calls WHERE key IN ({marks})", chunk))
        return found

    def put(self, key: str, kind: str, model: str, value: dict) -> None:
        start = time.perf_counter()
        now = time.time()
        self.db.execute(
            "INSERT INTO calls (key, kind, model, value, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (key, kind, model, json.dumps(value, ensure_ascii=False, separators=(",", ":")), now, now))
        self.write_s += time.perf_counter() - start
        self.writes += 1

    # --- batches -------------------------------------------------------------------------------------
    def put_batch(self, batch_id: str, provider: str, status: str, calls: list[tuple[str, str, str]]) -> None:
        """A submitted batch and its calls, (key, kind, model) each, in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?)", (batch_id, provider, status, now, now))
            self.db.executemany("INSERT OR IGNORE INTO batch_calls VALUES (?, ?, ?, ?)",
                                [(key, batch_id, kind, model) for key, kind, model in calls])

    def set_batch_status(self, batch_id: str, status: str) -> None:
        self.db.execute("UPDATE batches SET status = ?, updated = ? WHERE id = ?", (status, time.time(), batch_id))

    def live_batch(self, key: str, provider: str, dead: frozenset[str]) -> str | None:
        """The newest batch of ``provider`` holding the call ``key`` whose status is not in ``dead``."""
        marks = ",".join("?" * len(dead))
        row = self.db.execute(
            f"SELECT b.id FROM batch_calls c JOIN batches b ON b.id = c.batch_id WHERE c.key = ? AND b.provider = ? "
            f"AND b.status NOT IN ({marks}) ORDER BY b.created DESC LIMIT 1", (key, provider, *sorted(dead))).fetchone()
        return row[0] if row else None

    def batch_calls(self, batch_id: str) -> dict[str, tuple[str, str]]:
        """key -> (kind, model) of every call in the batch."""
        return {k: (kind, model) for k, kind, model in
                self.db.execute("SELECT key, kind, model FROM batch_calls WHERE batch_id = ?", (batch_id,))}

    def batches(self) -> list[tuple[str, str, str]]:
        """(id, provider, status) of every batch, oldest first."""
        return list(self.db.execute("SELECT id, provider, status FROM batches ORDER BY created"))

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CallStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

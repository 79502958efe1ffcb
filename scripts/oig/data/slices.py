"""Slice files: ``data/<name>.yaml``. Parsing a validated document into typed entries.

A slice file holds any of three sections, alone or together::

    IOPairs:      [{input, output}, ...]        # inline pairs, become user/assistant turns
    HuggingFace:  [{link, revision?, config?, split?, columns?, limit?, on_bad_rows?, max_bad_rows?}, ...]
    OpenAIJsonl:  [{link, sha256?, limit?, on_bad_rows?, max_bad_rows?}, ...]
    Preferences:  [{prompt, chosen, rejected} | {link, sha256?, limit?, ...}, ...]   # DPO pairs, not SFT

``on_bad_rows: skip`` with ``max_bad_rows: N`` leaves out up to N rows that do not convert, counted.

plus optional metadata: description, license, source, fixes (issue numbers this slice fixes), and
``holdout: false`` to keep every example in training (none held out for evaluation, ``oig.data.split``).
Validation (``oig.data.validate``) checks the document against ``schemas/slice.schema.json`` first; the
functions here assume a valid document and only shape it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("IOPairs", "HuggingFace", "OpenAIJsonl", "Preferences")
METADATA = ("description", "license", "source", "fixes", "holdout")

# Column roles an explicit Hugging Face `columns` mapping may name (role -> column in the dataset).
COLUMN_ROLES = (
    "messages",
    "conversations",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "question",
    "answer",
    "text",
    "system",
)


@dataclass(frozen=True)
class HFEntry:
    """A Hugging Face dataset: ``link`` is https://huggingface.co/datasets/ORG/NAME (or ORG/NAME)."""

    link: str
    revision: str | None = None  # a commit sha pins the content; unpinned links warn with the pin
    config: str | None = None
    split: str = "train"
    columns: dict[str, str] | None = None  # role -> column name; None means detect the layout
    limit: int | None = None  # take at most this many rows, in dataset order
    max_bad_rows: int | None = None  # None: a bad row is an error; N (on_bad_rows: skip): skip up to N


@dataclass(frozen=True)
class JsonlEntry:
    """An OpenAI fine-tuning JSONL file (chat ``messages`` or legacy ``prompt``/``completion``)."""

    link: str
    sha256: str | None = None  # pins the content; a mismatch is an error
    limit: int | None = None
    max_bad_rows: int | None = None  # None: a bad row is an error; N (on_bad_rows: skip): skip up to N


@dataclass
class Slice:
    name: str
    path: Path
    io_pairs: list[dict[str, str]] = field(default_factory=list)
    huggingface: list[HFEntry] = field(default_factory=list)
    openai_jsonl: list[JsonlEntry] = field(default_factory=list)
    preferences: list[dict[str, str]] = field(default_factory=list)  # inline {prompt, chosen, rejected}
    preference_links: list[JsonlEntry] = field(default_factory=list)  # JSONL files of preference pairs
    description: str | None = None
    license: str | None = None
    source: str | None = None
    fixes: list[int] = field(default_factory=list)
    holdout: bool = True  # False: nothing of this slice is held out for evaluation

    @property
    def is_local(self) -> bool:
        """True when every example is inline (no link to fetch)."""
        return not self.huggingface and not self.openai_jsonl and not self.preference_links

    @property
    def has_preferences(self) -> bool:
        return bool(self.preferences or self.preference_links)


def slice_from_document(path: Path, doc: dict) -> Slice:
    """Shape a schema-valid slice document into a Slice."""
    return Slice(
        name=path.stem,
        path=path,
        io_pairs=[{"input": p["input"], "output": p["output"]} for p in doc.get("IOPairs") or []],
        huggingface=[
            HFEntry(
                link=e["link"],
                revision=e.get("revision"),
                config=e.get("config"),
                split=e.get("split", "train"),
                columns=dict(e["columns"]) if e.get("columns") else None,
                limit=e.get("limit"),
                max_bad_rows=_max_bad_rows(e),
            )
            for e in doc.get("HuggingFace") or []
        ],
        openai_jsonl=[
            JsonlEntry(link=e["link"], sha256=e.get("sha256"), limit=e.get("limit"), max_bad_rows=_max_bad_rows(e))
            for e in doc.get("OpenAIJsonl") or []
        ],
        preferences=[
            {"prompt": e["prompt"], "chosen": e["chosen"], "rejected": e["rejected"]}
            for e in doc.get("Preferences") or []
            if "link" not in e
        ],
        preference_links=[
            JsonlEntry(link=e["link"], sha256=e.get("sha256"), limit=e.get("limit"), max_bad_rows=_max_bad_rows(e))
            for e in doc.get("Preferences") or []
            if "link" in e
        ],
        description=doc.get("description"),
        license=doc.get("license"),
        source=doc.get("source"),
        fixes=list(doc.get("fixes") or []),
        holdout=doc.get("holdout", True),
    )


def _max_bad_rows(entry: dict) -> int | None:
    return entry.get("max_bad_rows", 0) if entry.get("on_bad_rows") == "skip" else None

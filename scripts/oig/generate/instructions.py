"""The instructions ``oig generate`` asks about: every row of every source, as a prompt and its reference.

Sources are data files (by their extension) and Hugging Face datasets, read through the slice
converters (``oig.data.formats``), so a row means here what it means in a slice. A row that holds a
whole conversation gives its last assistant message as the reference answer and the rest as the
prompt; a row with only a prompt has no reference.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from urllib.parse import urlsplit

from oig.data import fetch, formats, hf
from oig.data.fetch import SourceOptions
from oig.data.slices import HFEntry
from oig.errors import FetchError, InvalidInput, Problem
from oig.generate.config import GenerateConfig

MAX_ROW_PROBLEMS = 20
PLACEHOLDER = "x"  # a prompt-only row gets this as its answer while formats checks it, then loses it


@dataclass(frozen=True)
class Instruction:
    id: str
    source: dict  # dataset, split, config, row, revision
    messages: list[dict]  # the prompt: ends with a user message
    reference: str | None = None  # the row's own answer, when it had one


def load_instructions(cfg: GenerateConfig, opts: SourceOptions, limit: int | None = None,
                      seed: int | None = None) -> list[Instruction]:
    """Every instruction of every source, in order; ``limit`` of them sampled with ``seed`` if more."""
    found: list[Instruction] = []
    problems: list[Problem] = []
    display = str(cfg.path)
    for i, src in enumerate(cfg.sources):
        where = f"instructions[{i}] {src.link}"
        try:
            rows, revision, split = _source_rows(src, opts)
            seen = 0
            for n, (at, row) in enumerate(islice(rows, src.limit)):
                seen += 1
                try:
                    messages, reference = prompt_of(row, src.columns)
                except ValueError as exc:
                    problems.append(Problem(display, 0, 0, "error", f"{where}: {at}: {exc}"))
                    if len(problems) >= MAX_ROW_PROBLEMS:
                        problems.append(Problem(display, 0, 0, "error", f"stopped after {MAX_ROW_PROBLEMS} problems"))
                        raise InvalidInput(problems) from None
                    continue
                source = {"dataset": src.link, "config": src.config, "split": split, "row": n, "revision": revision}
                found.append(Instruction(instruction_id(source, messages), source, messages, reference))
            if seen == 0:
                problems.append(Problem(display, 0, 0, "error", f"{where}: no rows"))
        except FetchError as exc:
            raise FetchError(f"{where}: {exc}") from None
    if problems:
        raise InvalidInput(problems)
    if limit is not None and limit < len(found):
        keep = sorted(random.Random(seed).sample(range(len(found)), limit))
        found = [found[k] for k in keep]
    return found


def _source_rows(src, opts: SourceOptions) -> tuple[Iterator[tuple[str, object]], str, str | None]:
    """(rows, revision, split) of one source: a data file by its extension, else a Hugging Face dataset."""
    fmt = formats.file_format(urlsplit(src.link).path)
    if fmt is not None:
        blob = fetch.fetch_to_cache(src.link, opts, expected_sha256=src.sha256)
        return _readable(formats.iter_rows(blob, fmt)), blob.name, None
    resolved = hf.resolve(HFEntry(link=src.link, revision=src.revision, config=src.config, split=src.split,
                                  columns=src.columns, limit=src.limit), opts)
    return _readable(hf.iter_rows(resolved, opts)), resolved.revision, src.split


def _readable(rows: Iterator[tuple[str, object]]) -> Iterator[tuple[str, object]]:
    try:
        yield from rows
    except ValueError as exc:
        raise FetchError(str(exc)) from None


def instruction_id(source: dict, messages: list[dict]) -> str:
    content = [source["dataset"], source["split"], source["row"], source["revision"], messages]
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_of(row: object, columns: dict | None) -> tuple[list[dict], str | None]:
    """(prompt messages, reference answer or None) of one row, through the slice converters.

    A whole conversation gives its last assistant message as the reference; a row with only a prompt
    is given a placeholder answer so that ``formats.convert_row`` checks it like any other row."""
    if isinstance(row, formats.BadRow):
        raise row
    reference: str | None = None
    try:
        messages = formats.convert_row(row, columns)["messages"]  # type: ignore[arg-type]
        reference = messages[-1]["content"]
    except ValueError as first:
        padded = _with_placeholder(row, columns)
        if padded is None:
            raise
        try:
            messages = formats.convert_row(padded, columns)["messages"]
        except ValueError:
            raise first from None
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    if not prompt[-1]["content"].strip():
        raise ValueError("the last user message is empty")
    return prompt, reference


def _with_placeholder(row: object, columns: dict | None) -> dict | None:
    """The row with a placeholder answer where its layout has an empty or missing answer, or None."""
    if not isinstance(row, dict):
        return None
    col = dict(columns or {})
    layout = formats.layout_of_columns(col) if col else None
    keys = set(row)
    order = ("messages", "conversations", "prompt", "instruction", "question", "text")
    layout = layout or next((k for k in order if col.get(k, k) in keys), None)
    padded = dict(row)
    if layout in ("messages", "conversations"):
        name = col.get(layout, layout)
        turns = row.get(name)
        if not isinstance(turns, list):
            return None
        padded[name] = [*turns, {"role": "assistant", "content": PLACEHOLDER}]
    elif layout in ("prompt", "prompt_completion"):
        prompt = row.get(col.get("prompt", "prompt"))
        padded[col.get("completion", "completion")] = (
            [{"role": "assistant", "content": PLACEHOLDER}] if isinstance(prompt, list) else PLACEHOLDER)
    elif layout in ("instruction", "alpaca"):
        padded[col.get("output", "output")] = PLACEHOLDER
    elif layout in ("question", "question_answer"):
        padded[col.get("answer", "answer")] = PLACEHOLDER
    elif layout == "text":
        name = col.get("text", "text")
        if not isinstance(row.get(name), str):
            return None
        padded[name] = row[name].rstrip() + f"\n<bot>: {PLACEHOLDER}"
    else:
        return None
    return padded

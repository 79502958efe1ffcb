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
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class Plan:
    """What a run will ask, from one reading of every source, holding no instruction: the count, the
    sources at their revisions, a hash of every instruction id in order, and the sample's positions."""

    count: int
    sources: list[str]  # "dataset@revision", sorted: for the provenance line
    ids_sha256: str  # of the instruction ids in order: the plan's identity, for resuming
    keep: array | None = None  # with ``limit``: the sampled positions among all instructions, ascending
    opened: list = field(default_factory=list, repr=False)  # per source: (handle, revision, split)


def plan_instructions(cfg: GenerateConfig, opts: SourceOptions, limit: int | None = None,
                      seed: int | None = None) -> Plan:
    """Read every source once, checking every row (all problems at once); keep only what the run needs."""
    problems: list[Problem] = []
    opened = [_open(i, src, opts) for i, src in enumerate(cfg.sources)]
    total, digest, sources = _digest(_walk(cfg, opened, problems))
    if problems:
        raise InvalidInput(problems)
    plan = Plan(count=total, sources=sources, ids_sha256=digest, opened=opened)
    if limit is not None and limit < total:
        plan.keep = array("q", sorted(random.Random(seed).sample(range(total), limit)))  # 8 bytes a kept row
        plan.count, plan.ids_sha256, plan.sources = _digest(iter_instructions(cfg, plan))
    return plan


def _digest(instructions: Iterator[Instruction]) -> tuple[int, str, list[str]]:
    """(count, sha256 of the ids in order, sorted DATASET@REVISION) of instructions, holding none."""
    count, digest, sources = 0, hashlib.sha256(), set()
    for inst in instructions:
        count += 1
        digest.update(inst.id.encode() + b"\n")
        sources.add(f"{inst.source['dataset']}@{inst.source['revision'][:12]}")
    return count, digest.hexdigest(), sorted(sources)


def iter_instructions(cfg: GenerateConfig, plan: Plan, skip: int = 0) -> Iterator[Instruction]:
    """The plan's instructions in source order, after the first ``skip``, read again from the same files
    (cached blobs, resolved revisions). A source that changed since it was planned is an error."""
    problems: list[Problem] = []
    rows = _walk(cfg, plan.opened, problems)
    if plan.keep is not None:
        rows = _sampled(rows, plan.keep)
    yield from islice(rows, skip, None)
    if problems:
        raise FetchError(f"{problems[0].message} (the source changed after the run planned it; run again)")


def load_instructions(cfg: GenerateConfig, opts: SourceOptions, limit: int | None = None,
                      seed: int | None = None) -> list[Instruction]:
    """Every instruction of every source, in order; ``limit`` of them sampled with ``seed`` if more."""
    return list(iter_instructions(cfg, plan_instructions(cfg, opts, limit, seed)))


def _sampled(rows: Iterator[Instruction], keep: array) -> Iterator[Instruction]:
    wanted = iter(keep)
    target = next(wanted, None)
    for position, inst in enumerate(rows):
        if target is None:
            return
        if position == target:
            yield inst
            target = next(wanted, None)


def _open(i: int, src, opts: SourceOptions) -> tuple:
    """(handle, revision, split) of one source: a cached data file, or a resolved Hugging Face dataset."""
    try:
        fmt = formats.file_format(urlsplit(src.link).path)
        if fmt is not None:
            blob = fetch.fetch_to_cache(src.link, opts, expected_sha256=src.sha256)
            return (blob, fmt, None), blob.name, None
        resolved = hf.resolve(HFEntry(link=src.link, revision=src.revision, config=src.config, split=src.split,
                                      columns=src.columns, limit=src.limit), opts)
        return (None, None, (resolved, opts)), resolved.revision, src.split
    except FetchError as exc:
        raise FetchError(f"instructions[{i}] {src.link}: {exc}") from None


def _walk(cfg: GenerateConfig, opened: list, problems: list[Problem]) -> Iterator[Instruction]:
    """Every instruction of every source, in order; rows that hold no prompt go to ``problems``."""
    display = str(cfg.path)
    for i, (src, (handle, revision, split)) in enumerate(zip(cfg.sources, opened, strict=True)):
        where = f"instructions[{i}] {src.link}"
        blob, fmt, hub = handle
        rows = _readable(formats.iter_rows(blob, fmt) if hub is None else hf.iter_rows(*hub))
        seen = 0
        try:
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
                yield Instruction(instruction_id(source, messages), source, messages, reference)
        except FetchError as exc:
            raise FetchError(f"{where}: {exc}") from None
        if seen == 0:
            problems.append(Problem(display, 0, 0, "error", f"{where}: no rows"))


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

"""Exports beside records.jsonl: SFT conversations, preference pairs, battles, and a slice file.

- ``sft.jsonl``: ``{"messages": prompt + [the best answer]}``, the pipeline's one record type.
- ``prefs.jsonl``: TRL's conversational preference format, ``prompt`` / ``chosen`` / ``rejected``
  (message lists), plus the record id, both models, both scores and the policy that paired them.
- ``battles.jsonl``: ``model_a``, ``model_b``, ``winner`` (model_a | model_b | tie) with the prompt,
  for training routers or reward models: the pairwise judges' verdicts when there are pairwise
  judges, otherwise every pair of scored answers compared by score (judge ``aggregate``).
- ``--emit-slice``: the SFT export as a slice file of inline IOPairs (single-turn prompts only), or,
  for a large dataset pushed with ``--push-to-hub``, a ``HuggingFace:`` entry pinned to the commit.

Every row of sft, prefs and battles carries its record's ``verdicts_complete`` and
``missing_verdicts`` (judge, response_id, model), so incomplete judging can be filtered out.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from oig import yamlsafe
from oig.errors import InvalidInput, OigError, Problem
from oig.files import write_atomic

SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/slice.schema.json"


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def read_jsonl(path: Path) -> Iterator[dict]:
    """The rows of a JSONL file this module wrote, one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _usable(record: dict) -> list[dict]:
    """The record's answers that can be trained on: text, no error, a score; in response order."""
    scores = record.get("scores") or {}
    return [r for r in record["responses"]
            if r["error"] is None and r["text"] and r["text"].strip() and r["response_id"] in scores]


def _by_id(record: dict, response_id: str) -> dict:
    return next(r for r in record["responses"] if r["response_id"] == response_id)


def _flags(record: dict) -> dict:
    """Whether every judge read every answer of the record, and the verdicts missing: on every row."""
    return {"verdicts_complete": record["verdicts_complete"], "missing_verdicts": record["missing_verdicts"]}


def sft_rows(records: list[dict]) -> Iterable[dict]:
    for record in records:
        best = record.get("best")
        if best is None:
            continue
        text = _by_id(record, best["response_id"])["text"]
        yield {"messages": [*record["messages"], {"role": "assistant", "content": text}], **_flags(record)}


def pref_rows(records: list[dict], policy: str, margin: float, seed: int) -> Iterable[dict]:
    for record in records:
        usable = _usable(record)
        scores = record["scores"]
        if len(usable) < 2:
            continue
        pairs: list[tuple[dict, dict]] = []
        best = _by_id(record, record["best"]["response_id"])
        if policy == "best_vs_worst":
            pairs = [(best, _by_id(record, record["worst"]["response_id"]))]
        elif policy == "best_vs_random":
            others = [r for r in usable if r["response_id"] != best["response_id"]]
            # One generator per record, seeded by the record: a pair does not depend on other rows.
            pairs = [(best, random.Random(f"{seed}:{record['id']}").choice(others))]
        else:
            for a, b in itertools.combinations(usable, 2):
                pairs.append((a, b) if scores[a["response_id"]] >= scores[b["response_id"]] else (b, a))
        for chosen, rejected in pairs:
            diff = scores[chosen["response_id"]] - scores[rejected["response_id"]]
            if diff <= margin or diff <= 0:
                continue
            yield {"id": record["id"], "prompt": record["messages"],
                   "chosen": [{"role": "assistant", "content": chosen["text"]}],
                   "rejected": [{"role": "assistant", "content": rejected["text"]}],
                   "chosen_model": chosen["model"], "rejected_model": rejected["model"],
                   "score_chosen": scores[chosen["response_id"]], "score_rejected": scores[rejected["response_id"]],
                   "policy": policy, **_flags(record)}


def battle_rows(records: list[dict], pairwise: bool) -> Iterable[dict]:
    for record in records:
        models = {r["response_id"]: r["model"] for r in record["responses"]}
        if pairwise:
            for b in record["battles"]:
                if b["winner"] is None:
                    continue
                winner = {"a": "model_a", "b": "model_b", "tie": "tie"}[b["winner"]]
                yield {"id": record["id"], "prompt": record["messages"], "model_a": models[b["a"]],
                       "model_b": models[b["b"]], "winner": winner, "judge": b["judge"], **_flags(record)}
            continue
        scores = record.get("scores") or {}
        for a, b in itertools.combinations(_usable(record), 2):
            sa, sb = scores[a["response_id"]], scores[b["response_id"]]
            winner = "model_a" if sa > sb else "model_b" if sb > sa else "tie"
            yield {"id": record["id"], "prompt": record["messages"], "model_a": a["model"], "model_b": b["model"],
                   "winner": winner, "judge": "aggregate", **_flags(record)}


# --- a slice file ---------------------------------------------------------------------------------


_MAYBE_TYPED = frozenset("0123456789+-.~nNtTfF")


class _SliceDumper(yaml.SafeDumper):
    """Quotes text that oig's YAML reader (the YAML 1.2 core schema) would read as a number or null."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = None
    # Only plain text starting with one of these can read as a number, boolean or null; quoting a few
    # more than needed is harmless, and the round trip in slice_text checks the result.
    if not value or value[0] in _MAYBE_TYPED:
        style = '"'
    elif "\n" in value:
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SliceDumper.add_representer(str, _represent_str)


def slice_text(sft: Iterable[dict], *, name: str, description: str, license: str, source: str) -> tuple[str, int, int]:
    """(the slice file's text, pairs written, prompts skipped as multi-turn or with a system message),
    from SFT rows (``sft_rows`` of records, or sft.jsonl read back)."""
    pairs, skipped = [], 0
    for row in sft:
        prompt, answer = row["messages"][:-1], row["messages"][-1]["content"]
        if len(prompt) != 1 or prompt[0]["role"] != "user" or not prompt[0]["content"].strip() or not answer.strip():
            skipped += 1
            continue
        pairs.append({"input": prompt[0]["content"], "output": answer})
    if not pairs:
        raise OigError("no single-turn answers to put in a slice (IOPairs holds one user message and one answer)")
    doc = {"description": description, "license": license, "source": source, "IOPairs": pairs}
    return _dump(doc, name, "answers chosen by judges among several models"), len(pairs), skipped


def link_slice_text(*, name: str, link: str, revision: str, rows: int, description: str, license: str,
                    source: str) -> str:
    """A slice linking the pushed dataset's ``sft`` config at its commit, instead of inline pairs."""
    doc = {"description": description, "license": license, "source": source,
           "HuggingFace": [{"link": link, "revision": revision, "config": "sft", "split": "train"}]}
    return _dump(doc, name, f"{rows} answers chosen by judges among several models, on the Hub")


def _dump(doc: dict, name: str, what: str) -> str:
    body = yaml.dump(doc, Dumper=_SliceDumper, sort_keys=False, allow_unicode=True, width=100_000)
    text = f"{SCHEMA_LINE}\n# {name}: {what} (oig generate); check it with `oig validate`.\n" + body
    # What oig's reader sees must be exactly what was meant: refuse to write anything else.
    if yamlsafe.load(text) != doc:
        raise OigError("the slice file would not read back as written; this is a bug in oig generate")
    return text


def emit_slice(path: Path, sft: Iterable[dict], *, description: str, license: str | None, source: str,
               link: tuple[str, str, int] | None = None, allow_local: bool = False) -> tuple[int, int]:
    """Write the SFT export as the slice ``path``, checked by ``oig validate``'s rules first: inline
    IOPairs, or with ``link`` (dataset link, commit sha, rows) a ``HuggingFace:`` entry pinned to it."""
    from oig.data.validate import ValidateOptions, check_slice

    if not license:
        raise OigError("--emit-slice needs the data's license: add `license: <SPDX id>` to the config "
                       "(check the models' terms and the instructions' license)")
    if link is None:
        text, count, skipped = slice_text(sft, name=path.stem, description=description, license=license,
                                          source=source)
    else:
        text = link_slice_text(name=path.stem, link=link[0], revision=link[1], rows=link[2], description=description,
                               license=license, source=source)
        count, skipped = link[2], 0
    _, problems = check_slice(text.encode("utf-8"), path, str(path), ValidateOptions(allow_local=allow_local))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise InvalidInput([Problem(str(path), p.line, p.col, p.severity, p.message) for p in errors])
    write_atomic(path, text)
    return count, skipped

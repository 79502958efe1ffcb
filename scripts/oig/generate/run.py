"""The ``oig generate`` pipeline: instructions -> answers from several models -> judges -> exports.

Per instruction, as one asyncio task: every model answers; the aggregator (if any) reads those
answers and writes its own; every judge judges every answer; scores give the best and the worst.
Every call goes through the store first (``_call``): a finished call is never made twice. Records
are kept in instruction order and written at the end, all files atomically; a call that fails is
recorded on its answer or verdict and never shifts a row.

``--dry-run`` runs the same pipeline with placeholder answers (``max_tokens`` long) for every call
not in the store, counting instead of calling: the plan and its cost are an upper bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from urllib.parse import urlsplit

from oig.data import fetch, formats, hf
from oig.data.fetch import SourceOptions
from oig.data.slices import HFEntry
from oig.errors import FetchError, InvalidInput, OigError, Problem
from oig.files import write_atomic
from oig.generate import export, judges
from oig.generate.clients import CallResult, ProviderClient
from oig.generate.config import GenerateConfig, JudgeSpec, ModelSpec
from oig.generate.store import CallStore, call_key

MAX_ROW_PROBLEMS = 20
CHARS_PER_TOKEN = 4  # for --dry-run estimates of prompts not yet sent
PLACEHOLDER = "x"  # a prompt-only row gets this as its answer while formats checks it, then loses it

AGGREGATOR_SYSTEM = (
    "You have been provided with a set of responses from various models to the latest user query. Your task "
    "is to synthesize these responses into a single, high-quality response. Critically evaluate the "
    "information they provide, recognizing that some of it may be biased or incorrect. Do not simply copy "
    "the given answers: offer a refined, accurate and comprehensive reply to the instruction, well-structured "
    "and coherent.\n\nResponses from models:")


@dataclass(frozen=True)
class Instruction:
    id: str
    source: dict  # dataset, split, config, row, revision
    messages: list[dict]  # the prompt: ends with a user message
    reference: str | None = None  # the row's own answer, when it had one


@dataclass
class Summary:
    out_dir: Path
    records: int = 0
    responses: int = 0
    response_errors: int = 0
    evaluations: int = 0
    parse_failures: int = 0
    unscored: int = 0  # records with no best answer
    first_error: str | None = None  # of an answer, for a run where every call failed
    files: dict[str, int] = field(default_factory=dict)  # file name -> lines
    stats: dict = field(default_factory=dict)
    budget_reached: bool = False
    slice_pairs: int | None = None
    slice_skipped: int = 0
    dry_run: bool = False
    plan_text: str = ""


# --- instructions ----------------------------------------------------------------------------------


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


# --- the run's shared state ------------------------------------------------------------------------


class Progress:
    """A one-line bar on stderr when it is a terminal; otherwise silent until one summary line."""

    def __init__(self, total: int, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.start, self.last = total, 0, time.monotonic(), 0.0

    def update(self, done: int, note: str) -> None:
        self.done = done
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 24
        filled = int(width * done / self.total) if self.total else width
        rate = done / (now - self.start) if now > self.start else 0.0
        eta = f" eta {int((self.total - done) / rate)}s" if rate > 0 and done < self.total else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} records  {note}{eta}\x1b[K")
        self.stream.flush()

    def close(self, summary: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(summary + "\n")
        self.stream.flush()


@dataclass
class Ctx:
    cfg: GenerateConfig
    store: CallStore
    clients: dict[str, ProviderClient]
    reward_models: dict[str, judges.RewardModel]
    dry_run: bool = False
    budget_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0  # the most the calls in flight can cost
    budget_reached: bool = False
    calls: int = 0
    cached: int = 0
    stats: dict = field(default_factory=dict)  # "role\tmodel" -> counters
    planned: list[str] = field(default_factory=list)  # --dry-run: the first planned calls, as lines

    def count(self, role: str, label: str, value: dict, cached: bool) -> None:
        s = self.stats.setdefault(f"{role}\t{label}", {"role": role, "name": label, "calls": 0, "cached": 0,
                                                      "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                      "cost_usd": 0.0, "priced": True})
        s["calls"] += 1
        s["errors"] += value.get("error") is not None
        if cached:  # tokens and cost count what this run spent; a stored answer costs nothing now
            s["cached"] += 1
            return
        usage = value.get("usage") or {}
        s["prompt_tokens"] += usage.get("prompt_tokens") or 0
        s["completion_tokens"] += usage.get("completion_tokens") or 0
        if value.get("cost_usd") is not None:
            s["cost_usd"] += value["cost_usd"]
        elif value.get("error") is None:
            s["priced"] = False  # answered, but the model has no price

    def cost(self, model: str, usage: dict | None) -> float | None:
        price = self.cfg.price(model)
        if price is None or not usage:
            return None
        return round(((usage.get("prompt_tokens") or 0) * price[0] + (usage.get("completion_tokens") or 0) * price[1])
                     / 1e6, 8)


async def _call(ctx: Ctx, role: str, label: str, provider: str, model: str, messages: list[dict], settings: dict,
                response_format: dict | None = None, note: str = "") -> dict:
    """A stored answer, or a fresh call (then stored if it succeeded). Never raises for a failed call.

    ``role`` (generate, aggregate, judge) and ``label`` (the model's or judge's name) only group the
    counts; the store key holds what decides the answer."""
    content = {"kind": "judge" if role == "judge" else "chat", "provider": provider, "model": model,
               "settings": settings, "messages": messages, "response_format": response_format}
    if role == "judge":
        content["judge_prompt_version"] = judges.JUDGE_PROMPT_VERSION
    key = call_key(content)
    hit = ctx.store.get(key)
    if hit is not None:
        ctx.cached += 1
        ctx.count(role, label, hit, cached=True)
        return hit
    if ctx.dry_run:
        # Planned, not made: an answer as long as it may be, so the estimate is an upper bound.
        prompt_chars = sum(len(m["content"]) for m in messages)
        out_tokens = settings.get("max_tokens", 512)
        value = {"text": PLACEHOLDER * (CHARS_PER_TOKEN * out_tokens), "finish_reason": "length", "error": None,
                 "usage": {"prompt_tokens": prompt_chars // CHARS_PER_TOKEN + 8, "completion_tokens": out_tokens}}
        value["cost_usd"] = ctx.cost(model, value["usage"])
        ctx.calls += 1
        ctx.count(role, label, value, cached=False)
        if len(ctx.planned) < 10:
            ctx.planned.append(f"  {role} {label}: {note}")
        return value
    # The budget counts calls in flight at their most (max_tokens), so concurrency cannot overshoot it.
    if ctx.budget_usd is not None and ctx.spent_usd + ctx.reserved_usd >= ctx.budget_usd:
        ctx.budget_reached = True
        value = CallResult(error=f"not called: the budget of ${ctx.budget_usd:g} was reached").to_dict()
        value["cost_usd"] = None
        ctx.count(role, label, value, cached=False)
        return value
    reserve = ctx.cost(model, {"prompt_tokens": sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + 8,
                               "completion_tokens": settings.get("max_tokens", 512)}) or 0.0
    ctx.reserved_usd += reserve
    try:
        result = await ctx.clients[provider].complete(model, messages, settings, response_format)
    finally:
        ctx.reserved_usd -= reserve
    value = result.to_dict()
    value["cost_usd"] = ctx.cost(model, result.usage)
    ctx.calls += 1
    ctx.spent_usd += value["cost_usd"] or 0.0
    ctx.count(role, label, value, cached=False)
    if result.ok:
        ctx.store.put(key, content["kind"], model, value)
    return value


async def _reward(ctx: Ctx, judge: JudgeSpec, messages: list[dict]) -> dict:
    rm = ctx.reward_models[judge.name]
    key = call_key({"kind": "reward", "model": rm.identity(), "messages": messages})
    role = "judge"
    hit = ctx.store.get(key)
    if hit is not None:
        ctx.cached += 1
        ctx.count(role, judge.name, hit, cached=True)
        return hit
    if ctx.dry_run:
        ctx.calls += 1
        ctx.count(role, judge.name, {"error": None, "cost_usd": 0.0}, cached=False)
        return {"score": 0.0, "error": None}
    try:
        value = {"score": await asyncio.to_thread(rm.score, messages), "error": None, "cost_usd": 0.0}
    except OigError:
        raise
    except Exception as exc:  # a reward model failing on one input is that input's error, not the run's
        value = {"score": None, "error": f"{type(exc).__name__}: {exc}", "cost_usd": 0.0}
    ctx.calls += 1
    ctx.count(role, judge.name, value, cached=False)
    if value["error"] is None:
        ctx.store.put(key, "reward", rm.identity(), value)
    return value


# --- one instruction -------------------------------------------------------------------------------


def response_id(record_id: str, label: str) -> str:
    return "r_" + hashlib.sha256(f"{record_id}\0{label}".encode()).hexdigest()[:16]


def _response(inst: Instruction, spec: ModelSpec, value: dict, references: list[str] | None) -> dict:
    return {"response_id": response_id(inst.id, spec.name), "model": spec.name, "model_id": spec.model,
            "provider": spec.provider, "settings": spec.settings,
            "kind": "aggregator" if references is not None else "model", "references": references or [],
            "text": value.get("text"), "finish_reason": value.get("finish_reason"), "usage": value.get("usage"),
            "latency_s": value.get("latency_s"), "cost_usd": value.get("cost_usd"), "error": value.get("error"),
            "provider_id": value.get("provider_id")}


async def _answer(ctx: Ctx, inst: Instruction, spec: ModelSpec) -> dict:
    value = await _call(ctx, "generate", spec.name, spec.provider, spec.model, inst.messages, spec.settings,
                        note=f"row {inst.source['row']}: {inst.messages[-1]['content'][:40]!r}")
    return _response(inst, spec, value, None)


async def _aggregate(ctx: Ctx, inst: Instruction, spec: ModelSpec, answers: list[dict]) -> dict:
    usable = [a for a in answers if a["error"] is None and a["text"] and a["text"].strip()]
    refs = [a["response_id"] for a in usable]
    if not usable:
        return _response(inst, spec, {"error": "not called: no model answered, so there is nothing to aggregate"}, refs)
    listing = "\n".join(f"{i}. {a['text']}" for i, a in enumerate(usable, 1))
    system = f"{AGGREGATOR_SYSTEM}\n{listing}"
    own = [m for m in inst.messages if m["role"] == "system"]
    if own:
        system = "\n\n".join(m["content"] for m in own) + "\n\n" + system
    messages = [{"role": "system", "content": system}, *[m for m in inst.messages if m["role"] != "system"]]
    value = await _call(ctx, "aggregate", spec.name, spec.provider, spec.model, messages, spec.settings,
                        note=f"row {inst.source['row']}")
    return _response(inst, spec, value, refs)


def _evaluation(judge: JudgeSpec, rid: str, aspect: str, score: float | None, scale: list | None,
                rationale: str | None, raw: str | None, error: str | None, **extra) -> dict:
    return {"response_id": rid, "judge": judge.name, "kind": judge.kind, "aspect": aspect, "score": score,
            "scale": scale, "rationale": rationale, "raw": raw, "parse_ok": error is None, "error": error, **extra}


async def _judge_score(ctx: Ctx, judge: JudgeSpec, inst: Instruction, answer: dict) -> list[dict]:
    rid, scale = answer["response_id"], [1, judge.scale]
    if judge.kind == "score":
        messages = judges.score_messages(judge, inst.messages, answer["text"])
    else:
        messages = judges.reference_messages(judge, inst.messages, answer["text"], inst.reference or "")
    value = await _call(ctx, "judge", judge.name, judge.provider or "", judge.model, messages, judge.settings,
                        judges.response_format(judge), note=f"row {inst.source['row']} {answer['model']}")
    aspects = judge.aspects if judge.kind == "score" else ("correctness",)
    if value.get("error"):
        return [_evaluation(judge, rid, a, None, scale, None, None, f"the judge call failed: {value['error']}")
                for a in aspects]
    raw = value["text"]
    try:
        if judge.kind == "score":
            scores, rationale = judges.parse_score(raw, judge.aspects, judge.scale)
        else:
            score, rationale = judges.parse_reference(raw, judge.scale)
            scores = {"correctness": score}
    except ValueError as exc:
        return [_evaluation(judge, rid, a, None, scale, None, raw, f"unreadable verdict: {exc}") for a in aspects]
    return [_evaluation(judge, rid, a, scores[a], scale, rationale, raw, None) for a in aspects]


async def _judge_pair(ctx: Ctx, judge: JudgeSpec, inst: Instruction, a: dict, b: dict) -> tuple[list[dict], dict]:
    """Both orders of one pair: two evaluations (each from the first-shown answer's side) and the battle."""

    async def one(first: dict, second: dict) -> tuple[dict, float | None]:
        messages = judges.pairwise_messages(inst.messages, first["text"], second["text"])
        value = await _call(ctx, "judge", judge.name, judge.provider or "", judge.model, messages, judge.settings,
                            judges.response_format(judge),
                            note=f"row {inst.source['row']} {first['model']} vs {second['model']}")
        extra = {"against": second["response_id"], "position": "first"}
        if value.get("error"):
            return _evaluation(judge, first["response_id"], "preference", None, [0, 1], None, None,
                               f"the judge call failed: {value['error']}", **extra), None
        try:
            winner, rationale = judges.parse_pairwise(value["text"])
        except ValueError as exc:
            return _evaluation(judge, first["response_id"], "preference", None, [0, 1], None, value["text"],
                               f"unreadable verdict: {exc}", **extra), None
        score = {"A": 1.0, "B": 0.0, "tie": 0.5}[winner]
        return _evaluation(judge, first["response_id"], "preference", score, [0, 1], rationale, value["text"],
                           None, **extra), score

    (e1, s1), (e2, s2) = await asyncio.gather(one(a, b), one(b, a))
    winner, consistent = judges.battle(s1, None if s2 is None else 1.0 - s2)
    return [e1, e2], {"judge": judge.name, "a": a["response_id"], "b": b["response_id"], "winner": winner,
                      "consistent": consistent}


async def _judge_reward(ctx: Ctx, judge: JudgeSpec, inst: Instruction, answer: dict) -> list[dict]:
    value = await _reward(ctx, judge, [*inst.messages, {"role": "assistant", "content": answer["text"]}])
    return [_evaluation(judge, answer["response_id"], "reward", value.get("score"), None, None, None,
                        value.get("error") and f"the reward model failed: {value['error']}")]


async def process(ctx: Ctx, inst: Instruction) -> dict:
    """One instruction's record: answers, aggregate answer, verdicts, scores, best and worst."""
    cfg = ctx.cfg
    # --- answers, then the aggregator's ---------------------------------------------------------
    responses = list(await asyncio.gather(*(_answer(ctx, inst, m) for m in cfg.models)))
    if cfg.aggregator is not None:
        responses.append(await _aggregate(ctx, inst, cfg.aggregator, responses))
    usable = [r for r in responses if r["error"] is None and r["text"] and r["text"].strip()]

    # --- every judge on every usable answer ------------------------------------------------------
    jobs = []
    for judge in cfg.judges:
        if judge.kind == "score" or (judge.kind == "reference" and inst.reference is not None):
            jobs += [_judge_score(ctx, judge, inst, r) for r in usable]
        elif judge.kind == "reward_model":
            jobs += [_judge_reward(ctx, judge, inst, r) for r in usable]
        elif judge.kind == "pairwise":
            jobs += [_judge_pair(ctx, judge, inst, a, b) for a, b in itertools.combinations(usable, 2)]
    evaluations: list[dict] = []
    battles: list[dict] = []
    for result in await asyncio.gather(*jobs):
        if isinstance(result, tuple):
            evaluations += result[0]
            battles.append(result[1])
        else:
            evaluations += result

    # --- scores, best and worst -------------------------------------------------------------------
    ids = [r["response_id"] for r in usable]
    per_judge = {j.name: judges.judge_scores(j, evaluations, battles, ids) for j in cfg.judges}
    scores = judges.combine(cfg.judges, per_judge, ids)
    ranked = [r for r in usable if r["response_id"] in scores]
    best = worst = None
    if ranked:
        top = max(ranked, key=lambda r: scores[r["response_id"]])  # the first of equals
        low = min(reversed(ranked), key=lambda r: scores[r["response_id"]])  # the last of equals
        best = {"response_id": top["response_id"], "model": top["model"], "score": scores[top["response_id"]]}
        worst = {"response_id": low["response_id"], "model": low["model"], "score": scores[low["response_id"]]}
    return {"id": inst.id, "source": inst.source, "messages": inst.messages, "reference": inst.reference,
            "responses": responses, "evaluations": evaluations, "battles": battles,
            "scores_by_judge": per_judge, "scores": scores, "best": best, "worst": worst}


# --- the whole run ---------------------------------------------------------------------------------


async def _run_all(ctx: Ctx, instructions: list[Instruction], progress: Progress) -> list[dict]:
    records: list[dict | None] = [None] * len(instructions)
    total_concurrency = sum(c.provider.concurrency for c in ctx.clients.values()) or 8
    # Instructions in flight: enough to keep every provider busy, few enough to finish rows in order.
    window = asyncio.Semaphore(max(4, 2 * total_concurrency))
    done = 0

    async def one(i: int, inst: Instruction) -> None:
        nonlocal done
        try:
            records[i] = await process(ctx, inst)
        finally:
            window.release()
        done += 1
        progress.update(done, f"{ctx.calls} calls, {ctx.cached} stored, ${ctx.spent_usd:.4f}")

    try:
        async with asyncio.TaskGroup() as group:
            for i, inst in enumerate(instructions):
                await window.acquire()
                group.create_task(one(i, inst))
    except BaseExceptionGroup as group_error:
        # One instruction failed the run (a reward model that cannot load): raise that, not a group.
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        for client in ctx.clients.values():
            await client.aclose()
    return [r for r in records if r is not None]


def generate(cfg: GenerateConfig, out_dir: Path, *, allow_local: bool = False, limit: int | None = None,
             seed: int | None = None, dry_run: bool = False, budget_usd: float | None = None,
             emit_slice: Path | None = None, store_path: Path | None = None, progress_stream=None) -> Summary:
    """Run the pipeline; write DIR/records.jsonl, sft.jsonl, prefs.jsonl, battles.jsonl and run.json."""
    out_dir = Path(out_dir)
    seed = cfg.seed if seed is None else seed
    limit = cfg.limit if limit is None else limit
    store_path = store_path or out_dir / "calls.sqlite"

    # --- checks before anything is fetched or called ------------------------------------------------
    if budget_usd is not None:
        unpriced = sorted({m.model for m in _chat_models(cfg)} - set(cfg.prices))
        if unpriced:
            raise OigError(f"--budget-usd needs a price for every model; add these to `prices` (a free local model "
                           f"is {{input: 0, output: 0}}): {', '.join(unpriced)}")

    # --- instructions ------------------------------------------------------------------------------
    opts = SourceOptions(allow_local=allow_local, base_dir=cfg.base_dir)
    instructions = load_instructions(cfg, opts, limit, seed)

    # --- the pipeline ------------------------------------------------------------------------------
    store = CallStore.open_readonly(store_path) if dry_run else CallStore(store_path)
    summary = Summary(out_dir=out_dir, dry_run=dry_run)
    progress = Progress(len(instructions), progress_stream, enabled=False if dry_run else None)
    try:
        reward_models = {j.name: judges.RewardModel(_local_or_hub(cfg, j.model), j.revision)
                         for j in cfg.judges if j.kind == "reward_model"}

        async def main() -> list[dict]:
            clients: dict[str, ProviderClient] = {}
            if not dry_run:
                try:
                    for name in sorted({m.provider for m in _chat_models(cfg)}):
                        clients[name] = ProviderClient(cfg.providers[name])
                except BaseException:
                    for client in clients.values():
                        await client.aclose()
                    raise
            ctx = Ctx(cfg, store, clients, reward_models, dry_run=dry_run, budget_usd=budget_usd)
            records = await _run_all(ctx, instructions, progress)
            summary.stats = {"calls": ctx.calls, "stored": ctx.cached, "spent_usd": round(ctx.spent_usd, 6),
                             "by_model": list(ctx.stats.values()), "store_writes": store.writes,
                             "store_ms_per_write": round(1000 * store.write_s / store.writes, 4) if store.writes else None}
            summary.budget_reached = ctx.budget_reached
            if dry_run:
                summary.plan_text = _plan_text(ctx, len(instructions), budget_usd)
            return records

        records = asyncio.run(main())
    finally:
        store.close()
    if dry_run:
        progress.close(f"oig generate: dry run, {summary.stats['calls']} calls planned, nothing written")
        return summary

    # --- files ---------------------------------------------------------------------------------------
    summary.records = len(records)
    for r in records:
        summary.responses += len(r["responses"])
        summary.response_errors += sum(x["error"] is not None for x in r["responses"])
        summary.first_error = summary.first_error or next(
            (f"{x['model']}: {x['error']}" for x in r["responses"] if x["error"]), None)
        summary.evaluations += len(r["evaluations"])
        summary.parse_failures += sum(not e["parse_ok"] for e in r["evaluations"])
        summary.unscored += r["best"] is None
    pairwise = any(j.kind == "pairwise" for j in cfg.judges)
    summary.files = {
        "records.jsonl": export.write_jsonl(out_dir / "records.jsonl", records),
        "sft.jsonl": export.write_jsonl(out_dir / "sft.jsonl", export.sft_rows(records)),
        "prefs.jsonl": export.write_jsonl(out_dir / "prefs.jsonl",
                                          export.pref_rows(records, cfg.prefs_policy, cfg.prefs_margin, seed)),
        "battles.jsonl": export.write_jsonl(out_dir / "battles.jsonl", export.battle_rows(records, pairwise)),
    }
    if emit_slice is not None:
        summary.slice_pairs, summary.slice_skipped = export.emit_slice(
            emit_slice, records, description=cfg.description or _default_description(cfg), license=cfg.license,
            source=provenance(cfg, instructions))
    run_info = {"config": str(cfg.path), "config_sha256": cfg.sha256, "instructions": len(instructions),
                "limit": limit, "seed": seed, "budget_usd": budget_usd, "budget_reached": summary.budget_reached,
                "files": summary.files, "provenance": provenance(cfg, instructions), **summary.stats}
    write_atomic(out_dir / "run.json", json.dumps(run_info, indent=1, ensure_ascii=False) + "\n")
    progress.close(summary_line(summary))
    return summary


def _chat_models(cfg: GenerateConfig) -> list:
    """Everything called through a provider: models, the aggregator, LLM judges."""
    out: list = [*cfg.models, *([cfg.aggregator] if cfg.aggregator else [])]
    out += [j for j in cfg.judges if j.kind != "reward_model"]
    return out


def _local_or_hub(cfg: GenerateConfig, ref: str) -> str:
    local = cfg.base_dir / ref
    return str(local) if local.is_dir() else ref


def _default_description(cfg: GenerateConfig) -> str:
    return f"Answers chosen by judges among {', '.join(m.name for m in cfg.models)}."


def provenance(cfg: GenerateConfig, instructions: list[Instruction]) -> str:
    """One line naming what made the data: instructions and their revisions, models, judges, config."""
    sources = sorted({f"{i.source['dataset']}@{i.source['revision'][:12]}" for i in instructions})
    parts = [f"oig generate with {cfg.path.name} (sha256 {cfg.sha256})",
             f"instructions: {', '.join(sources)}",
             f"models: {', '.join(f'{m.name} ({m.provider})' for m in cfg.models)}"]
    if cfg.aggregator:
        parts.append(f"aggregator: {cfg.aggregator.name} ({cfg.aggregator.provider})")
    if cfg.judges:
        parts.append(f"judges: {', '.join(f'{j.kind} {j.model}' for j in cfg.judges)}")
    return "; ".join(parts)


def summary_line(s: Summary) -> str:
    st = s.stats
    parts = [f"oig generate: {s.records} records, {s.responses} answers ({s.response_errors} failed)",
             f"{s.evaluations} verdicts ({s.parse_failures} unreadable)",
             f"{st['calls']} calls made, {st['stored']} from the store", f"${st['spent_usd']:.4f}"]
    if s.unscored:
        parts.append(f"{s.unscored} records with no scored answer")
    if s.budget_reached:
        parts.append("BUDGET REACHED: calls after it were not made (rerun with a larger --budget-usd to finish)")
    return ", ".join(parts)


def _plan_text(ctx: Ctx, n: int, budget_usd: float | None) -> str:
    order = {"generate": 0, "aggregate": 1, "judge": 2}
    rows = sorted(ctx.stats.values(), key=lambda s: order.get(s["role"], 3))
    width = max([len(s["name"]) for s in rows] + [4])
    lines = [f"Plan for {n} instructions (estimates: prompts at {CHARS_PER_TOKEN} characters a token, every answer "
             "at max_tokens, so costs are an upper bound; stored answers are free):",
             f"  {'role':<9} {'name':<{width}} {'calls':>6} {'stored':>6} {'~in tok':>9} {'~out tok':>9} {'~USD':>9}"]
    total_cost, unpriced = 0.0, False
    for s in rows:
        new = s["calls"] - s["cached"]
        cost = f"{s['cost_usd']:.4f}" if s["priced"] else "?"
        total_cost += s["cost_usd"]
        unpriced |= not s["priced"] and new > 0
        lines.append(f"  {s['role']:<9} {s['name']:<{width}} {new:>6} {s['cached']:>6} {s['prompt_tokens']:>9,} "
                     f"{s['completion_tokens']:>9,} {cost:>9}")
    lines.append(f"Total: {ctx.calls} calls to make, {ctx.cached} answers already stored; estimated cost at most "
                 f"${total_cost:.4f}" + (" plus models with no price (?)" if unpriced else ""))
    if budget_usd is not None:
        verdict = "within" if total_cost <= budget_usd else "OVER"
        lines.append(f"Budget: ${budget_usd:g} ({verdict} the estimate; the run stops cleanly when it is spent)")
    if ctx.planned:
        lines.append("First planned calls:")
        lines += ctx.planned
    return "\n".join(lines)

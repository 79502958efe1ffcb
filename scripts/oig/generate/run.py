"""The ``oig generate`` pipeline: instructions -> answers from several models -> judges -> exports.

``generate`` reads as that pipeline: the instructions (``oig.generate.instructions``); one asyncio
task per instruction making its record (``oig.generate.record``: every model answers, the aggregator
reads them, every judge judges, scores give the best and the worst); every call through the store
first (``oig.generate.calls``), so a finished call is never made twice. Records go to disk as they
finish, in instruction order, with their export rows (``oig.generate.stream``: appended, checkpointed,
resumed after an interruption, renamed into place at the end); memory holds only the records in
flight, whatever the number of instructions. A call that fails is recorded on its answer or verdict
and never shifts a row.

``--dry-run`` runs the same pipeline with placeholder answers (``max_tokens`` long) for every call
not in the store, counting instead of calling: the plan and its cost are an upper bound.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oig.data.fetch import SourceOptions
from oig.errors import OigError, secret
from oig.files import write_atomic
from oig.generate import export, hub, judges
from oig.generate.batch import BatchClient
from oig.generate.calls import CHARS_PER_TOKEN, Ctx
from oig.generate.clients import ProviderClient
from oig.generate.config import GenerateConfig
from oig.generate.instructions import Instruction, iter_instructions, plan_instructions
from oig.generate.local import VLLMClient
from oig.generate.record import process
from oig.generate.store import CallStore
from oig.generate.stream import Sink

SLICE_MODES = ("auto", "inline", "link")
# A slice "large" enough to link the pushed dataset instead of holding its pairs inline (auto mode):
# inline YAML is read whole, and slice files are capped at 64 MiB.
LINK_ROWS = 5_000  # SFT rows
LINK_BYTES = 8 * 1024**2  # of sft.jsonl


@dataclass
class Summary:
    out_dir: Path
    records: int = 0
    responses: int = 0
    response_errors: int = 0
    evaluations: int = 0
    parse_failures: int = 0
    unscored: int = 0  # records with no best answer
    incomplete: int = 0  # records where some judge gave no verdict on some answer
    first_error: str | None = None  # of an answer, for a run where every call failed
    files: dict[str, int] = field(default_factory=dict)  # file name -> lines
    stats: dict = field(default_factory=dict)
    budget_reached: bool = False
    slice_pairs: int | None = None
    slice_skipped: int = 0
    resumed: int = 0  # records an interrupted run had written, kept as they were
    hub_link: str | None = None  # --push-to-hub: the dataset's link and the commit it was pushed as
    hub_revision: str | None = None
    slice_linked: bool = False  # the slice links the Hub dataset instead of holding pairs
    dry_run: bool = False
    plan_text: str = ""


# --- progress --------------------------------------------------------------------------------------


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


# --- the whole run ---------------------------------------------------------------------------------


async def _run_all(ctx: Ctx, instructions: Iterator[Instruction], progress: Progress, sink: Sink | None,
                   done: int = 0) -> None:
    """One task per instruction, a bounded window of them; finished records go to ``sink`` in order."""
    # A batch provider's calls wait in batches, batch_size of them at a time, in place of concurrency.
    total_concurrency = sum(c.provider.batch_size if c.provider.mode == "batch" or c.provider.kind == "vllm"
                            else c.provider.concurrency for c in ctx.clients.values()) or 8
    # Records in flight or waiting for an earlier one: enough to keep every provider busy past a slow
    # record, and the only records in memory (a slot is freed when its record is written).
    window = asyncio.Semaphore(max(8, 4 * total_concurrency))
    finished: dict[int, dict] = {}
    next_out = 0

    async def one(i: int, inst: Instruction) -> None:
        nonlocal next_out, done
        finished[i] = await process(ctx, inst)
        while next_out in finished:
            record = finished.pop(next_out)
            next_out += 1
            if sink is not None:
                sink.write(record)
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


def generate(cfg: GenerateConfig, out_dir: Path, *, allow_local: bool = False, limit: int | None = None,
             seed: int | None = None, dry_run: bool = False, budget_usd: float | None = None,
             emit_slice: Path | None = None, store_path: Path | None = None, progress_stream=None,
             push_to_hub: str | None = None, hub_private: bool | None = None, slice_mode: str = "auto") -> Summary:
    """Run the pipeline; write DIR/records.jsonl, sft.jsonl, prefs.jsonl, battles.jsonl and run.json.

    ``push_to_hub`` (ORG/NAME): also upload them as a Hub dataset (``oig.generate.hub``). ``slice_mode``
    for ``emit_slice``: inline (IOPairs), link (a ``HuggingFace:`` entry at the pushed commit), or auto
    (link when the dataset is pushed and large: over LINK_ROWS SFT rows or LINK_BYTES of sft.jsonl)."""
    out_dir = Path(out_dir)
    seed = cfg.seed if seed is None else seed
    limit = cfg.limit if limit is None else limit
    store_path = store_path or out_dir / "calls.sqlite"

    # --- checks before anything is fetched or called ------------------------------------------------
    if slice_mode not in SLICE_MODES:
        raise OigError(f"slice mode {slice_mode!r}: expected one of {', '.join(SLICE_MODES)}")
    if slice_mode == "link" and not push_to_hub:
        raise OigError("--slice-mode link links the dataset pushed to the Hub: add --push-to-hub ORG/NAME")
    if slice_mode != "auto" and emit_slice is None:
        raise OigError(f"--slice-mode {slice_mode} applies to the slice file: add --emit-slice data/NAME.yaml")
    if push_to_hub:
        hub.check_repo_id(push_to_hub)
        if not dry_run:
            secret("HF_TOKEN", OigError, "--push-to-hub needs a write token")  # now, not after the calls
    if budget_usd is not None:
        unpriced = sorted({m.model for m in _chat_models(cfg)} - set(cfg.prices))
        if unpriced:
            raise OigError(f"--budget-usd needs a price for every model; add these to `prices` (a free local model "
                           f"is {{input: 0, output: 0}}): {', '.join(unpriced)}")

    # --- instructions: every source read once to plan, then again as the run goes ------------------
    opts = SourceOptions(allow_local=allow_local, base_dir=cfg.base_dir)
    plan = plan_instructions(cfg, opts, limit, seed)

    # --- the pipeline, records streamed to disk ------------------------------------------------------
    store = CallStore.open_readonly(store_path) if dry_run else CallStore(store_path)
    summary = Summary(out_dir=out_dir, dry_run=dry_run)
    sink = None
    if not dry_run:
        sink = Sink(out_dir, {"config_sha256": cfg.sha256, "seed": seed, "limit": limit, "count": plan.count,
                              "instructions_sha256": plan.ids_sha256}, prefs_policy=cfg.prefs_policy,
                    prefs_margin=cfg.prefs_margin, seed=seed, pairwise=any(j.kind == "pairwise" for j in cfg.judges),
                    total=plan.count)
    progress = Progress(plan.count, progress_stream, enabled=False if dry_run else None)
    try:
        reward_models = {j.name: judges.RewardModel(_local_or_hub(cfg, j.model), j.revision)
                         for j in cfg.judges if j.kind == "reward_model"}
        resumed = sink.open() if sink is not None else 0

        async def main() -> None:
            clients: dict[str, ProviderClient | BatchClient | VLLMClient] = {}
            if not dry_run:
                try:
                    for name in sorted({m.provider for m in _chat_models(cfg)}):
                        p = cfg.providers[name]
                        clients[name] = (VLLMClient(p) if p.kind == "vllm" else BatchClient(p, store)
                                         if p.mode == "batch" else ProviderClient(p))
                except BaseException:
                    for client in clients.values():
                        await client.aclose()
                    raise
            ctx = Ctx(cfg, store, clients, reward_models, dry_run=dry_run, budget_usd=budget_usd)
            await _run_all(ctx, iter_instructions(cfg, plan, skip=resumed), progress, sink, done=resumed)
            summary.stats = {"calls": ctx.calls, "stored": ctx.cached, "spent_usd": round(ctx.spent_usd, 6),
                             "by_model": list(ctx.stats.values()), "store_writes": store.writes,
                             "store_ms_per_write": round(1000 * store.write_s / store.writes, 4) if store.writes else None}
            batches = {n: {"submitted": c.submitted, "resumed": c.resumed} for n, c in clients.items()
                       if isinstance(c, BatchClient)}
            if batches:  # batch ids and their status are in the store's `batches` table
                summary.stats["batches"] = batches
            summary.budget_reached = ctx.budget_reached
            if dry_run:
                summary.plan_text = _plan_text(ctx, plan.count, budget_usd)
                if push_to_hub:
                    summary.plan_text += (f"\nThen: push the exports to the Hub dataset {push_to_hub} (parquet and a "
                                          "dataset card; HF_TOKEN is checked when the run starts)")

        asyncio.run(main())
        if sink is not None:
            summary.files = sink.finish()
    finally:
        store.close()
        if sink is not None:
            sink.close()  # after finish() a no-op; after an error the parts stay, checkpointed, to resume
    if dry_run:
        progress.close(f"oig generate: dry run, {summary.stats['calls']} calls planned, nothing written")
        return summary

    # --- the slice and run.json ----------------------------------------------------------------------
    for key, value in sink.counts.items():
        setattr(summary, key, value)
    summary.first_error, summary.resumed = sink.first_error, sink.resumed
    source = provenance(cfg, plan.sources)
    description = cfg.description or _default_description(cfg)
    if push_to_hub:
        summary.hub_link, summary.hub_revision = hub.publish(
            cfg, out_dir, push_to_hub, sources=plan.sources, lines=summary.files, description=description,
            private=hub_private)
    if emit_slice is not None:
        large = (summary.files["sft.jsonl"] > LINK_ROWS or (out_dir / "sft.jsonl").stat().st_size > LINK_BYTES)
        link = None
        if slice_mode == "link" or (slice_mode == "auto" and push_to_hub and large):
            link = (summary.hub_link, summary.hub_revision, summary.files["sft.jsonl"])
        summary.slice_linked = link is not None
        summary.slice_pairs, summary.slice_skipped = export.emit_slice(
            emit_slice, export.read_jsonl(out_dir / "sft.jsonl"), description=description, license=cfg.license,
            source=source, link=link, allow_local=allow_local)
    run_info = {"config": str(cfg.path), "config_sha256": cfg.sha256, "instructions": plan.count,
                "limit": limit, "seed": seed, "budget_usd": budget_usd, "budget_reached": summary.budget_reached,
                "resumed_records": summary.resumed, "files": summary.files, "provenance": source,
                "hub": {"dataset": summary.hub_link, "revision": summary.hub_revision} if push_to_hub else None,
                **summary.stats}
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


def provenance(cfg: GenerateConfig, sources: list[str]) -> str:
    """One line naming what made the data: instructions (DATASET@REVISION), models, judges, config."""
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
    if s.incomplete:
        parts.append(f"{s.incomplete} records with missing verdicts (scored by the judges that read every answer; "
                     "see missing_verdicts)")
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

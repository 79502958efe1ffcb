"""Every call of a run goes through here: a stored answer, or a fresh call, counted, priced and stored.

``call`` (chat models and LLM judges) and ``reward_score`` (local reward models) look in the store
first, so a finished call is never made twice; a call that fails is returned as a value with its
error and never raises. ``Ctx`` is the run's shared state: the store, the clients, the budget and
the counts per role and model. Under ``--dry-run`` nothing is called: each call not in the store is
planned with an answer as long as it may be (``max_tokens``), so the plan's cost is an upper bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from oig.errors import OigError
from oig.generate import judges
from oig.generate.batch import BatchClient
from oig.generate.clients import CallResult
from oig.generate.config import GenerateConfig, JudgeSpec
from oig.generate.store import CallStore, call_key

CHARS_PER_TOKEN = 4  # for --dry-run estimates of prompts not yet sent
PLANNED_CHAR = "x"  # a planned answer is this, repeated to max_tokens' length


@dataclass
class Ctx:
    cfg: GenerateConfig
    store: CallStore
    clients: dict  # provider name -> ProviderClient, BatchClient or VLLMClient
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


async def call(ctx: Ctx, role: str, label: str, provider: str, model: str, messages: list[dict], settings: dict,
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
        value = {"text": PLANNED_CHAR * (CHARS_PER_TOKEN * out_tokens), "finish_reason": "length", "error": None,
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
    client = ctx.clients[provider]
    # A batch client sends the call as a line of a batch, identified by its store key.
    extra = {"key": key, "kind": content["kind"]} if isinstance(client, BatchClient) else {}
    try:
        result = await client.complete(model, messages, settings, response_format, **extra)
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


async def reward_score(ctx: Ctx, judge: JudgeSpec, messages: list[dict]) -> dict:
    rm = ctx.reward_models[judge.name]
    key = call_key({"kind": "reward", "model": rm.identity(), "messages": messages,
                    "encoding": judges.REWARD_ENCODING_VERSION})
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

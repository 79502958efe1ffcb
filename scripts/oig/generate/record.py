"""One instruction's record: every model answers, the aggregator reads them, every judge judges, scores rank.

As one asyncio task per instruction: the models answer at once; the aggregator (if any) reads those
answers and writes its own; every judge judges every usable answer (score and reference judges one
answer at a time, pairwise judges every pair in both orders, reward models one answer at a time);
``judges.combine`` turns the verdicts of the judges that read every answer into scores, which give
the best and the worst answer; missing verdicts are listed on the record (``verdicts_complete``,
``missing_verdicts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools

from oig.generate import judges
from oig.generate.calls import Ctx, call, reward_score
from oig.generate.config import JudgeSpec, ModelSpec
from oig.generate.instructions import Instruction

AGGREGATOR_SYSTEM = (
    "You have been provided with a set of responses from various models to the latest user query. Your task "
    "is to synthesize these responses into a single, high-quality response. Critically evaluate the "
    "information they provide, recognizing that some of it may be biased or incorrect. Do not simply copy "
    "the given answers: offer a refined, accurate and comprehensive reply to the instruction, well-structured "
    "and coherent.\n\nResponses from models:")


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
    value = await call(ctx, "generate", spec.name, spec.provider, spec.model, inst.messages, spec.settings,
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
    value = await call(ctx, "aggregate", spec.name, spec.provider, spec.model, messages, spec.settings,
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
    value = await call(ctx, "judge", judge.name, judge.provider or "", judge.model, messages, judge.settings,
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
        value = await call(ctx, "judge", judge.name, judge.provider or "", judge.model, messages, judge.settings,
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
    value = await reward_score(ctx, judge, [*inst.messages, {"role": "assistant", "content": answer["text"]}])
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
    # Only judges that read every answer count, alike for all answers (see oig.generate.judges).
    ids = [r["response_id"] for r in usable]
    per_judge = {j.name: judges.judge_scores(j, evaluations, battles, ids) for j in cfg.judges}
    missing = judges.missing_verdicts(evaluations, battles)
    counted = judges.counted_judges(cfg.judges, per_judge, ids, missing)
    scores = judges.combine(counted, per_judge, ids)
    models = {r["response_id"]: r["model"] for r in responses}
    ranked = [r for r in usable if r["response_id"] in scores]
    best = worst = None
    if ranked:
        top = max(ranked, key=lambda r: scores[r["response_id"]])  # the first of equals
        low = min(reversed(ranked), key=lambda r: scores[r["response_id"]])  # the last of equals
        best = {"response_id": top["response_id"], "model": top["model"], "score": scores[top["response_id"]]}
        worst = {"response_id": low["response_id"], "model": low["model"], "score": scores[low["response_id"]]}
    return {"id": inst.id, "source": inst.source, "messages": inst.messages, "reference": inst.reference,
            "responses": responses, "evaluations": evaluations, "battles": battles,
            "scores_by_judge": per_judge, "judges_counted": [j.name for j in counted], "scores": scores,
            "best": best, "worst": worst, "verdicts_complete": not missing,
            "missing_verdicts": [{"judge": j, "response_id": rid, "model": models[rid]} for j, rid in missing]}

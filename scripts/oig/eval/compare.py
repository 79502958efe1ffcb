"""The judged comparison with the previous model (AlpacaEval / MT-Bench style): training.yaml's Eval.judge.

Both models answer the prompts of one eval suite (``Eval.comparison_suite``; ``oig eval`` already has
both answers to every case). An LLM judge on an OpenAI-compatible server compares each pair with
``oig generate``'s pairwise judge (``generate.judges``: its prompt, its JSON verdict, its calls through
``generate.clients``) in BOTH orders, the new model's answer first and then second, because judges
favour a position. As in ``oig generate`` the two verdicts must agree: agreeing verdicts give a win, a
loss or a tie; disagreeing ones a tie (counted in ``inconsistent`` too). Identical answers are a tie
without asking.

The win rate is the new model's share of the readable pairs, a tie counting half. Its 95% interval is
Wilson's on that win share (``eval.stats.wilson``, ties as half a win each). A pair whose verdict is
unreadable in either order, or whose judge call failed, is not in the win rate: it is counted
(``unreadable``, ``failed``) and listed in ``pairs`` with the judge's raw output, never dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from oig.data.config import JudgeConfig
from oig.errors import OigError
from oig.eval import stats
from oig.generate import judges
from oig.generate.clients import ProviderClient
from oig.generate.config import JudgeSpec, Provider

DEFAULT_CONCURRENCY = 8
JUDGE_SETTINGS = {"temperature": 0.0, "max_tokens": 512}  # room for the rationale: a cut-off JSON is unreadable
RAW_CHARS = 500  # of a judge's output kept per unreadable verdict
CI_METHOD = "wilson on the win share (ties count half a win)"
_NEW_SCORE = ({"A": 1.0, "B": 0.0, "tie": 0.5}, {"A": 0.0, "B": 1.0, "tie": 0.5})  # new shown first, second


def judged_comparison(prompts: Sequence[Sequence[dict]], new_answers: Sequence[str | None],
                      old_answers: Sequence[str | None], judge: JudgeConfig, *, ids: Sequence[str] | None = None,
                      concurrency: int = DEFAULT_CONCURRENCY, suite: str | None = None) -> dict:
    """Judge every (new, previous) answer pair in both orders; the win rate of the new model.

    ``prompts[i]`` is the conversation both answered (a list of {"role", "content"}). Returns
    ``{"suite", "judge", "pairs_judged", "wins", "losses", "ties", "inconsistent", "identical",
    "unreadable", "failed", "skipped", "win_rate", "ci95", "ci_method", "pairs": [...]}`` where
    ``win_rate`` is None when no pair was readable.
    """
    if not len(prompts) == len(new_answers) == len(old_answers):
        raise ValueError("prompts, new_answers and old_answers differ in length")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(prompts))]
    provider = Provider(name="judge", kind="openai", base_url=judge.base_url, api_key_env=judge.api_key_env,
                        concurrency=max(1, concurrency))
    spec = JudgeSpec(name="judge", kind="pairwise", model=judge.model, provider="judge", json_mode="off",
                     settings=dict(JUDGE_SETTINGS))
    pairs = asyncio.run(_judge_all(provider, spec, list(prompts), list(new_answers), list(old_answers), ids))
    return summarize(pairs, suite=suite, judge=judge.model)


def comparer(suite, judge: JudgeConfig, *, concurrency: int = DEFAULT_CONCURRENCY) -> Callable[[dict], dict]:
    """``run_eval(..., comparison=comparer(suite, judge))``: the comparison on the answers in the results."""

    def compare(results: dict) -> dict:
        entry = results["suites"].get(suite.name)
        if entry is None or entry.get("previous") is None:
            raise OigError(f"the judged comparison needs both models' answers to suite {suite.name}: "
                           "evaluate it with the previous model (Eval.compare: true)")
        new = {r["id"]: r["answer"] for r in entry["results"]}
        old = {r["id"]: r["answer"] for r in entry["previous"]["results"]}
        cases = list(suite.cases)
        return judged_comparison([list(c.messages) for c in cases], [new.get(c.id) for c in cases],
                                 [old.get(c.id) for c in cases], judge, ids=[c.id for c in cases],
                                 concurrency=concurrency, suite=suite.name)

    return compare


async def _judge_all(provider: Provider, spec: JudgeSpec, prompts: list, new: list, old: list,
                     ids: list[str]) -> list[dict]:
    client = ProviderClient(provider)
    try:
        return list(await asyncio.gather(*(_judge_pair(client, spec, p, a, b, i)
                                           for p, a, b, i in zip(prompts, new, old, ids, strict=True))))
    finally:
        await client.aclose()


async def _judge_pair(client: ProviderClient, spec: JudgeSpec, prompt: list[dict], new: str | None,
                      old: str | None, case_id: str) -> dict:
    """One pair: ``winner`` "new" | "previous" | "tie", or None with ``status`` saying why."""
    pair = {"id": case_id, "winner": None, "status": "ok", "verdicts": [None, None], "consistent": None}
    if new is None or old is None:
        return {**pair, "status": "skipped", "error": "an answer is missing"}
    if new == old:
        return {**pair, "winner": "tie", "status": "identical"}

    async def one(order: int) -> tuple[float | None, str | None, str | None, str | None]:
        first, second = (new, old) if order == 0 else (old, new)
        result = await client.complete(spec.model, judges.pairwise_messages(prompt, first, second), spec.settings,
                                       judges.response_format(spec))
        if not result.ok:
            return None, None, "failed", result.error
        try:
            verdict, _ = judges.parse_pairwise(result.text or "")
        except ValueError as exc:
            return None, (result.text or "")[:RAW_CHARS], "unreadable", str(exc)
        return _NEW_SCORE[order][verdict], None, None, None

    (s1, raw1, bad1, why1), (s2, raw2, bad2, why2) = await asyncio.gather(one(0), one(1))
    pair["verdicts"] = [s1, s2]  # the new model's score in each order: 1 won, 0.5 tie, 0 lost
    if bad1 or bad2:
        status = "failed" if "failed" in (bad1, bad2) else "unreadable"
        return {**pair, "status": status, "error": "; ".join(w for w in (why1, why2) if w),
                "raw": [raw1, raw2]}
    winner, consistent = judges.battle(s1, s2)
    return {**pair, "winner": {"a": "new", "b": "previous", "tie": "tie"}[winner], "consistent": consistent}


def summarize(pairs: list[dict], *, suite: str | None = None, judge: str | None = None) -> dict:
    """Counts, the win rate (ties half) and its Wilson interval from judged pairs."""
    wins = sum(p["winner"] == "new" for p in pairs)
    losses = sum(p["winner"] == "previous" for p in pairs)
    ties = sum(p["winner"] == "tie" for p in pairs)
    judged = wins + losses + ties
    share = wins + ties / 2
    return {
        "suite": suite, "judge": judge, "pairs_judged": judged,
        "wins": wins, "losses": losses, "ties": ties,
        "inconsistent": sum(p.get("consistent") is False for p in pairs),
        "identical": sum(p["status"] == "identical" for p in pairs),
        "unreadable": sum(p["status"] == "unreadable" for p in pairs),
        "failed": sum(p["status"] == "failed" for p in pairs),
        "skipped": sum(p["status"] == "skipped" for p in pairs),
        "win_rate": round(share / judged, 4) if judged else None,
        "ci95": stats.wilson(share, judged) if judged else None,
        "ci_method": CI_METHOD,
        "pairs": pairs,
    }

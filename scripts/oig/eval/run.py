"""``oig eval``: ask a model every case of every suite, check the answers, score each suite.

:func:`run_eval` returns the results as one dict, the stable shape ``oig eval --format json`` prints
(README: Evaluation)::

    {"model": str, "previous": str | None,
     "suites": {NAME: {"cases", "passed", "failed", "unreadable", "score", "ci95",
                       "previous": {the same keys and "results"} | None, "delta", "delta_ci95",
                       "results": [{"id", "passed", "answer", "detail"}]}},
     "lm_eval": dict | None, "comparison": dict | None}

``score`` is passed / (cases - unreadable) (null when every case was unreadable), ``ci95`` its Wilson
interval, ``delta`` the score minus the previous model's and ``delta_ci95`` a paired bootstrap over the
cases both were scored on (``oig.eval.stats``). ``lm_eval`` and ``comparison`` are filled by the
callables given for them (benchmarks, the judged comparison), None without.

A suite that cannot run is an :class:`EvalError` naming it, never a score of zero: a judged suite with
no judge model, a model that does not answer a case, a judge that fails (a judge reply with no verdict
is only unreadable).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from oig import checks
from oig.data.evals import Case, Suite
from oig.errors import redact
from oig.eval import stats
from oig.eval.models import EvalError, Model, judge_model

DEFAULT_CONCURRENCY = 8
ERROR_CHARS = 300


@dataclass
class Outcome:
    answer: str | None = None
    passed: bool | None = None
    detail: str = ""
    error: str | None = None  # the model (or the judge) could not be asked


def run_eval(suites: Sequence[Suite], model: Model, *, previous: Model | None = None, judge: Model | None = None,
             concurrency: int = DEFAULT_CONCURRENCY, progress: bool | None = None,
             lm_eval: Callable[[], dict] | None = None,
             comparison: Callable[[dict], dict] | None = None) -> dict:
    """Run ``suites`` against ``model`` (and ``previous``), scoring each; see the module doc for the dict.

    ``judge`` overrides each suite's own judge model. ``progress``: a bar on stderr (default: when
    stderr is a terminal). ``lm_eval()`` and ``comparison(results)`` fill their keys when given.
    """
    # --- every judged suite has a judge, before any model is asked -----------------------------------
    judges = _judges(suites, judge, concurrency)
    models = [model] + ([previous] if previous is not None else [])

    # --- load in-process weights with one question, so that a model that cannot load fails first ----
    work = [(m, s, c) for m in models for s in suites for c in s.cases]
    outcomes: dict[tuple[int, str, str], Outcome] = {}
    for m in models:
        if not m.parallel and suites and suites[0].cases:
            first = (m, suites[0], suites[0].cases[0])
            outcome = _one(m, suites[0], suites[0].cases[0], judges.get(suites[0].name))
            if outcome.error and outcome.answer is None:
                raise EvalError(f"the model {m.label} cannot be asked: {outcome.error}")
            outcomes[_key(first)] = outcome
            work.remove(first)

    # --- every other case, up to `concurrency` at once (weights here are batched by their engine) -----
    bar = _bar(len(work) + len(outcomes), len(outcomes), progress)

    def task(item: tuple[Model, Suite, Case]) -> tuple[tuple, Outcome]:
        m, s, c = item
        return _key(item), _one(m, s, c, judges.get(s.name))

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="oig-eval") as pool:
        for key, outcome in pool.map(task, work):
            outcomes[key] = outcome
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    # --- a suite with a case nobody could ask is an error, not a score -------------------------------
    failures = []
    for s in suites:
        for m in models:
            broken = [(c.id, outcomes[(id(m), s.name, c.id)].error) for c in s.cases
                      if outcomes[(id(m), s.name, c.id)].error]
            if broken:
                failures.append(f"suite {s.name}: {len(broken)} of {len(s.cases)} case(s) could not be checked "
                                f"with {m.label} (case {broken[0][0]}: {broken[0][1]})")
    if failures:
        raise EvalError("; ".join(failures))

    # --- scores, intervals and deltas -----------------------------------------------------------------
    results: dict = {"model": model.label, "previous": previous.label if previous is not None else None,
                     "suites": {}, "lm_eval": None, "comparison": None}
    for s in suites:
        now = _score([outcomes[(id(model), s.name, c.id)] for c in s.cases], s.cases)
        before = _score([outcomes[(id(previous), s.name, c.id)] for c in s.cases], s.cases) if previous else None
        head = {k: v for k, v in now.items() if k != "results"}
        results["suites"][s.name] = {**head, **_delta(now, before), "results": now["results"]}
    if lm_eval is not None:
        results["lm_eval"] = lm_eval()
    if comparison is not None:
        results["comparison"] = comparison(results)
    return results


def _key(item: tuple[Model, Suite, Case]) -> tuple[int, str, str]:
    m, s, c = item
    return id(m), s.name, c.id


def _judges(suites: Sequence[Suite], override: Model | None, concurrency: int) -> dict[str, Model]:
    judges, missing = {}, []
    for s in suites:
        if not s.needs_judge:
            continue
        if override is not None:
            judges[s.name] = override
        elif s.judge is not None:
            judges[s.name] = judge_model(s.judge.model, s.judge.base_url, concurrency=concurrency)
        else:
            missing.append(s.name)
    if missing:
        raise EvalError(f"suite(s) {', '.join(missing)} have judged cases but no judge model: add `judge: "
                        "{model: NAME, base_url: URL}` to the suite, or pass --judge-model (and --judge-base-url)")
    return judges


def _one(model: Model, suite: Suite, case: Case, judge: Model | None) -> Outcome:
    """Ask one case and check the answer; failures are recorded, not raised."""
    try:
        answer = model.ask(list(case.messages))
    except Exception as exc:
        return Outcome(error=redact(f"{type(exc).__name__}: {exc}")[:ERROR_CHARS])
    if not isinstance(answer, str):
        return Outcome(error=f"the model returned {type(answer).__name__}, not text")
    pass_score = suite.judge.pass_score if suite.judge is not None else checks.DEFAULT_PASS_SCORE
    try:
        verdict = checks.check(case.check, answer, case.reference, choices=case.choices, question=case.question,
                               rubric=case.rubric, judge_ask=judge.ask if judge is not None else None,
                               pass_score=pass_score)
    except Exception as exc:
        return Outcome(answer=answer, error=redact(f"judge: {type(exc).__name__}: {exc}")[:ERROR_CHARS])
    return Outcome(answer=answer, passed=verdict.passed, detail=verdict.detail)


def _score(outcomes: list[Outcome], cases: Sequence[Case]) -> dict:
    passed = sum(o.passed is True for o in outcomes)
    failed = sum(o.passed is False for o in outcomes)
    unreadable = sum(o.passed is None for o in outcomes)
    readable = len(outcomes) - unreadable
    return {
        "cases": len(outcomes), "passed": passed, "failed": failed, "unreadable": unreadable,
        "score": round(passed / readable, 4) if readable else None,
        "ci95": stats.wilson(passed, readable),
        "results": [{"id": c.id, "passed": o.passed, "answer": o.answer, "detail": o.detail}
                    for c, o in zip(cases, outcomes, strict=True)],
    }


def _delta(now: dict, before: dict | None) -> dict:
    if before is None:
        return {"previous": None, "delta": None, "delta_ci95": None}
    pairs = [(a["passed"], b["passed"]) for a, b in zip(now["results"], before["results"], strict=True)
             if a["passed"] is not None and b["passed"] is not None]
    delta = round(now["score"] - before["score"], 4) if None not in (now["score"], before["score"]) else None
    ci = stats.paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs])
    return {"previous": before, "delta": delta, "delta_ci95": ci}


def _bar(total: int, done: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="case", desc="oig eval", file=sys.stderr, leave=False)

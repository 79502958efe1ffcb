"""oig.eval.run: scores, intervals, deltas, the judge, concurrency, and suites that cannot run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from oig.data.evals import check_suite
from oig.eval import stats
from oig.eval.models import EvalError, Model
from oig.eval.run import run_eval

SUITE = """\
check: contains
cases:
  - {id: a, input: "say Paris", reference: Paris}
  - {id: b, input: "say Rome", reference: Rome}
  - {id: c, input: "say Oslo", reference: Oslo}
  - {id: d, input: "say Lima", reference: Lima}
"""


def suite(text: str = SUITE, name: str = "caps"):
    s, problems = check_suite(text.encode(), Path(f"evals/{name}.yaml"), f"evals/{name}.yaml")
    assert s is not None, problems
    return s


def answering(mapping: dict[str, str], parallel: bool = True, label: str = "m") -> Model:
    return Model(label, lambda messages: mapping.get(messages[-1]["content"], "no idea"), parallel)


def test_scores_counts_and_the_wilson_interval():
    m = answering({"say Paris": "Paris!", "say Rome": "It is Rome", "say Oslo": "Bergen"})
    out = run_eval([suite()], m)
    s = out["suites"]["caps"]
    assert (s["cases"], s["passed"], s["failed"], s["unreadable"], s["score"]) == (4, 2, 2, 0, 0.5)
    assert s["ci95"] == stats.wilson(2, 4)
    assert [r["id"] for r in s["results"]] == ["a", "b", "c", "d"]
    assert s["results"][0] == {"id": "a", "passed": True, "answer": "Paris!", "detail": "contains the reference"}
    assert (s["previous"], s["delta"], s["delta_ci95"]) == (None, None, None)
    assert (out["model"], out["previous"], out["lm_eval"], out["comparison"]) == ("m", None, None, None)


def test_compare_gives_the_delta_and_a_paired_bootstrap_interval():
    new = answering({"say Paris": "Paris", "say Rome": "Rome", "say Oslo": "Oslo"}, label="new")
    old = answering({"say Paris": "Paris"}, label="old")
    out = run_eval([suite()], new, previous=old)
    s = out["suites"]["caps"]
    assert s["score"] == 0.75 and s["previous"]["score"] == 0.25 and s["delta"] == 0.5
    assert s["delta_ci95"] == stats.paired_bootstrap([True, True, True, False], [True, False, False, False])
    assert s["delta_ci95"][0] <= 0.5 <= s["delta_ci95"][1]
    assert list(s) == ["cases", "passed", "failed", "unreadable", "score", "ci95", "previous", "delta", "delta_ci95",
                       "results"]
    assert out["previous"] == "old"
    again = run_eval([suite()], new, previous=old)
    assert again["suites"]["caps"]["delta_ci95"] == s["delta_ci95"]  # fixed seed


def test_bootstrap_and_wilson_edges():
    assert stats.paired_bootstrap([], []) is None
    assert stats.paired_bootstrap([True, False], [True, False]) == [0.0, 0.0]
    assert stats.wilson(0, 0) == [0.0, 1.0]
    lo, hi = stats.wilson(50, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60


JUDGED = """\
judge: {model: j, pass_score: 6}
cases:
  - {id: good, input: "q1", check: judge, rubric: "says yes"}
  - {id: bad, input: "q2", check: judge, rubric: "says yes"}
  - {id: huh, input: "q3", check: judge, rubric: "says yes"}
"""


def test_judge_verdicts_and_unreadable_replies_are_counted_apart():
    replies = {"q1": '{"score": 8}', "q2": '{"pass": false}', "q3": "I think it is fine"}
    judge = Model("judge", lambda messages: next(v for k, v in replies.items() if f"<<<\n{k}\n>>>" in
                                                 messages[1]["content"]), True)
    out = run_eval([suite(JUDGED, "judged")], answering({}), judge=judge)
    s = out["suites"]["judged"]
    assert (s["passed"], s["failed"], s["unreadable"], s["score"]) == (1, 1, 1, 0.5)
    assert s["ci95"] == stats.wilson(1, 2)
    assert s["results"][0]["detail"] == "judge score 8 >= 6"
    assert s["results"][2]["passed"] is None and s["results"][2]["detail"].startswith("unreadable")


def test_a_judged_suite_without_a_judge_is_an_error_naming_it():
    text = "cases:\n  - {input: q, check: judge, rubric: r}\n"
    with pytest.raises(EvalError, match="suite\\(s\\) nojudge have judged cases but no judge model"):
        run_eval([suite(), suite(text, "nojudge")], answering({}))


def test_a_model_that_does_not_answer_is_an_error_not_a_zero():
    def ask(messages):
        raise ConnectionError("connection refused")

    with pytest.raises(EvalError, match="suite caps: 4 of 4 case\\(s\\) could not be checked with down "
                                        "\\(case a: ConnectionError: connection refused\\)"):
        run_eval([suite()], Model("down", ask, True))


def test_weights_that_cannot_load_fail_at_the_first_question():
    calls = []

    def ask(messages):
        calls.append(1)
        raise OSError("no model here")

    with pytest.raises(EvalError, match="the model old cannot be asked: OSError: no model here"):
        run_eval([suite()], answering({}), previous=Model("old", ask, False))
    assert calls == [1]


def test_servers_and_weights_here_get_up_to_concurrency_questions_at_once():
    text = "cases:\n" + "".join(f"  - {{id: c{i}, input: q{i}, reference: q{i}}}\n" for i in range(32))
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(messages):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return messages[-1]["content"]

    start = time.perf_counter()
    out = run_eval([suite(text, "many")], Model("srv", slow, True), concurrency=8)
    assert out["suites"]["many"]["passed"] == 32 and state["max"] == 8
    assert time.perf_counter() - start < 32 * 0.02 / 2
    state["max"] = 0
    # Weights here too: their engine batches the questions that wait (oig.serve.engine).
    run_eval([suite(text, "many")], Model("local", slow, False), concurrency=8)
    assert state["max"] == 8


def test_hooks_for_benchmarks_and_the_judged_comparison():
    seen = []
    out = run_eval([suite()], answering({}), lm_eval=lambda: {"arc_easy": {"acc": 0.5}},
                   comparison=lambda results: seen.append(results) or {"wins": 1})
    assert out["lm_eval"] == {"arc_easy": {"acc": 0.5}} and out["comparison"] == {"wins": 1}
    assert seen[0]["suites"]["caps"]["score"] == 0.0

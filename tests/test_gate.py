"""oig.eval.gate: training.yaml's Gate on a results dict and the bug suite's summary."""

from oig.data.config import GateConfig
from oig.eval.gate import apply_gate


def suite(score, previous, ci=(-0.2, 0.0)):
    before = None if previous is None else {"score": previous}
    delta = None if previous is None or score is None else round(score - previous, 4)
    return {"cases": 20, "score": score, "previous": before, "delta": delta,
            "delta_ci95": list(ci) if before else None}


def results(**suites):
    comparison = suites.pop("comparison", None)
    return {"model": "new", "previous": "old", "suites": suites, "lm_eval": None, "comparison": comparison}


COMPARISON = {"win_rate": 0.4, "ci95": [0.3, 0.5], "pairs_judged": 40, "unreadable": 2, "failed": 0}


def test_a_gate_that_fails_says_every_reason():
    gate = GateConfig(max_drop={"math": 0.02, "default": 0.05, "safety": 0.0}, max_bugs_regressed=0,
                      min_win_rate=0.5)
    passed, reasons = apply_gate(gate, results(math=suite(0.7, 0.75), chat=suite(0.6, 0.64), code=suite(None, 0.5),
                                               comparison=COMPARISON), {"regressed": 2})
    assert not passed
    assert reasons == [
        "suite safety: Gate.max_drop limits it, but it was not evaluated",
        "suite code: no score for the new model (every case unreadable), so its drop cannot be checked against "
        "Gate.max_drop 0.05",
        "suite math: the score fell from 0.7500 to 0.7000 (-0.0500, 95% CI of the change [-0.2000, +0.0000]), "
        "more than Gate.max_drop allows (0.02)",
        "bugs: 2 bug report(s) pass on the previous model and fail on the new one, more than "
        "Gate.max_bugs_regressed (0)",
        "comparison: the new model's win rate is 0.4000, 95% CI [0.3000, 0.5000] over 40 judged pair(s) "
        "(2 unreadable), below Gate.min_win_rate (0.5)",
    ]


def test_a_gate_that_passes():
    gate = GateConfig(max_drop={"default": 0.05}, max_bugs_regressed=1, min_win_rate=0.4)
    passed, reasons = apply_gate(gate, results(math=suite(0.70, 0.75), chat=suite(0.9, 0.6), comparison=COMPARISON),
                                 {"regressed": 1})
    assert (passed, reasons) == (True, [])  # a drop exactly at the limit and a win rate exactly at it pass


def test_the_default_gate_limits_only_regressed_bugs():
    gate = GateConfig()
    assert apply_gate(gate, results(math=suite(0.1, 0.9))) == (True, [])
    assert apply_gate(gate, results(math=suite(0.1, 0.9)), {"regressed": 0}) == (True, [])
    assert apply_gate(gate, results(), {"regressed": 1})[0] is False


def test_a_first_release_has_nothing_to_drop_from_but_a_missing_comparison_fails_when_there_is_one():
    gate = GateConfig(max_drop={"default": 0.0}, min_win_rate=0.5)
    first = {"model": "new", "previous": None, "suites": {"math": suite(0.5, None)}, "comparison": None}
    assert apply_gate(gate, first) == (True, [])
    passed, reasons = apply_gate(gate, results(math=suite(0.5, 0.5)))
    assert reasons == ["comparison: no judged comparison ran, and Gate.min_win_rate is 0.5"]
    unread = {**COMPARISON, "win_rate": None, "ci95": None, "unreadable": 3, "failed": 1}
    passed, reasons = apply_gate(gate, results(math=suite(0.5, 0.5), comparison=unread))
    assert reasons == ["comparison: no readable verdict (3 unreadable, 1 failed), so Gate.min_win_rate 0.5 cannot "
                       "be checked"]

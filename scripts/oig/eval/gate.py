"""The release gate: training.yaml's Gate applied to ``oig eval``'s results and the bug suite's summary.

Three checks, each against the previous model:

- ``max_drop``: no suite's score may fall by more than its allowed drop (scores are shares from 0 to
  1; the point estimates are compared, and the reason shows the change's 95% interval). A suite the
  gate limits that has no score, or that was not evaluated, fails: what was not measured did not pass.
- ``max_bugs_regressed``: at most this many bug reports that passed on the previous model fail on the
  new one (``{"regressed": n}`` from the bug suite).
- ``min_win_rate``: the judged comparison's win rate (ties half) must reach it; no comparison, or one
  with no readable verdict, fails.

With no previous model (a first release) the drop and win-rate checks have nothing to compare and pass.
"""

from __future__ import annotations

from oig.data.config import GateConfig

EPS = 1e-9  # scores are rounded to 4 places: a drop exactly at the limit passes


def apply_gate(gate: GateConfig, results: dict, bugs: dict | None = None) -> tuple[bool, list[str]]:
    """(passed, reasons): every reason the gate fails, each naming the check and the numbers."""
    reasons: list[str] = []
    has_previous = results.get("previous") is not None

    # --- suite scores against the previous model ---------------------------------------------------
    suites = results.get("suites") or {}
    if has_previous:
        for name in sorted(set(gate.max_drop) - {"default"} - set(suites)):
            reasons.append(f"suite {name}: Gate.max_drop limits it, but it was not evaluated")
        for name, entry in sorted(suites.items()):
            allowed = gate.allowed_drop(name)
            before = entry.get("previous")
            if allowed is None or before is None:
                continue
            score, old = entry.get("score"), before.get("score")
            if score is None or old is None:
                which = "the new model" if score is None else "the previous model"
                reasons.append(f"suite {name}: no score for {which} (every case unreadable), so its drop "
                               f"cannot be checked against Gate.max_drop {allowed:g}")
                continue
            if old - score > allowed + EPS:
                ci = entry.get("delta_ci95")
                interval = f", 95% CI of the change [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
                reasons.append(f"suite {name}: the score fell from {old:.4f} to {score:.4f} ({score - old:+.4f}"
                               f"{interval}), more than Gate.max_drop allows ({allowed:g})")

    # --- bug reports that regressed --------------------------------------------------------------------
    if bugs is not None:
        regressed = int(bugs.get("regressed") or 0)
        if regressed > gate.max_bugs_regressed:
            reasons.append(f"bugs: {regressed} bug report(s) pass on the previous model and fail on the new one, "
                           f"more than Gate.max_bugs_regressed ({gate.max_bugs_regressed})")

    # --- the judged comparison -------------------------------------------------------------------------
    if gate.min_win_rate is not None and has_previous:
        comparison = results.get("comparison")
        if comparison is None:
            reasons.append(f"comparison: no judged comparison ran, and Gate.min_win_rate is {gate.min_win_rate:g}")
        elif comparison.get("win_rate") is None:
            reasons.append(f"comparison: no readable verdict ({comparison.get('unreadable', 0)} unreadable, "
                           f"{comparison.get('failed', 0)} failed), so Gate.min_win_rate "
                           f"{gate.min_win_rate:g} cannot be checked")
        elif comparison["win_rate"] < gate.min_win_rate - EPS:
            ci = comparison.get("ci95")
            interval = f", 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
            reasons.append(f"comparison: the new model's win rate is {comparison['win_rate']:.4f}{interval} over "
                           f"{comparison.get('pairs_judged')} judged pair(s) ({comparison.get('unreadable', 0)} "
                           f"unreadable), below Gate.min_win_rate ({gate.min_win_rate:g})")
    return not reasons, reasons

"""``oig eval``'s results as a text table or Markdown (the JSON is the results dict itself)."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(pair: list[float] | None, signed: bool = False) -> str:
    if pair is None:
        return "-"
    fmt = (lambda v: f"{100 * v:+.1f}") if signed else (lambda v: f"{100 * v:.1f}")
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} pts"


def rows(results: dict) -> list[list[str]]:
    out = []
    for name, s in results["suites"].items():
        prev = s.get("previous")
        out.append([name, str(s["cases"]), str(s["passed"]), str(s["unreadable"]), _pct(s["score"]), _ci(s["ci95"]),
                    _pct(prev["score"]) if prev else "-", _delta(s.get("delta")), _ci(s.get("delta_ci95"), True)])
    return out


HEADER = ["suite", "cases", "passed", "unreadable", "score", "95% CI", "previous", "delta", "delta 95% CI"]


def render_text(results: dict) -> str:
    table = [HEADER] + rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = [f"model: {results['model']}" + (f"  (previous: {results['previous']})" if results["previous"] else "")]
    for r in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True))))
    return "\n".join(lines) + "\n"


def render_markdown(results: dict) -> str:
    lines = [f"**Model:** `{results['model']}`" + (f" (previous: `{results['previous']}`)" if results["previous"] else ""),
             "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines) + "\n"

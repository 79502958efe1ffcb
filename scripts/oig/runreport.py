"""The last training run as a report: ``oig report training-log``, and the train workflow's job summary.

What it shows: the run, its base model and steps; the final train and eval loss, speed and duration;
where the model went; the loss curve (Markdown: a Mermaid chart of at most ``CHART_POINTS`` evenly
spaced steps, the last one always among them); and a table of a sample of ``TABLE_ROWS`` steps plus
the last ``TABLE_ROWS`` evaluations, which are the numbers that matter; the release gate's verdict and
a table of the eval suites (score, previous model's score, the change, with 95% intervals) when the run
has them.

It reads only training_log (``oig.runlog.RunLog``), so it sits in the core beside it: any stage may
render a run (the model card, the end of ``oig train``) without importing another stage.
"""

from __future__ import annotations

from oig.runlog import ModelRef, RunLog

CHART_POINTS = 50
TABLE_ROWS = 20


def _sample(points: list, n: int) -> list:
    """Evenly spaced, always keeping the last point: the summary stays short for long runs."""
    if len(points) <= n:
        return points
    picked = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in picked]


def _number(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _curve(log: RunLog) -> tuple[list[dict], list[tuple[int, float]], dict[int, float], list[dict]]:
    """(rows with a step, (step, loss) points, eval loss by step, the rows a table shows)."""
    rows = [r for r in log.metrics or [] if isinstance(r, dict) and isinstance(r.get("step"), int)]
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), int | float)]
    evals = {r["step"]: r["eval_loss"] for r in rows if isinstance(r.get("eval_loss"), int | float)}
    shown = {r["step"] for r in _sample(rows, TABLE_ROWS)} | set(list(evals)[-TABLE_ROWS:])
    return rows, train, evals, [r for r in rows if r["step"] in shown]


def _where(log: RunLog) -> tuple[str, str | None]:
    model = log.model or ModelRef()
    return model.hub_repo or model.local_path or "not published", model.revision


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def _interval(pair: object, signed: bool = False) -> str:
    if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair)):
        return ""
    fmt = "{:+.1%}" if signed else "{:.1%}"
    return f" [{fmt.format(pair[0])}, {fmt.format(pair[1])}]"


def evaluation_rows(log: RunLog) -> list[tuple[str, str, str, str]]:
    """(suite, score [95% CI], previous score, change [95% CI]) for each eval suite of the run."""
    evals = log.extra.get("evals") if isinstance(log.extra, dict) else None
    suites = evals.get("suites") if isinstance(evals, dict) else None
    rows = []
    for name, entry in sorted((suites or {}).items()):
        if not isinstance(entry, dict):
            continue
        before = entry.get("previous") if isinstance(entry.get("previous"), dict) else {}
        delta = entry.get("delta")
        rows.append((str(name), f"{_pct(entry.get('score'))}{_interval(entry.get('ci95'))} of {entry.get('cases')}",
                     _pct(before.get("score")) if before else "-",
                     (f"{delta:+.1%}" if isinstance(delta, int | float) else "-")
                     + _interval(entry.get("delta_ci95"), signed=True)))
    return rows


def _gate_line(log: RunLog) -> str | None:
    gate = log.extra.get("gate") if isinstance(log.extra, dict) else None
    if not isinstance(gate, dict):
        return None
    if gate.get("passed"):
        return "- release gate: passed"
    reasons = "; ".join(str(r) for r in gate.get("reasons") or [])
    verdict = "failed, overridden by a maintainer (published anyway)" if gate.get("overridden") else \
        "failed: the model was not published over the branch's model"
    return f"- release gate: {verdict}" + (f" ({reasons})" if reasons else "")


def training_markdown(log: RunLog) -> str:
    """The run as Markdown for a GitHub job summary."""
    rows, train, evals, table = _curve(log)
    where, revision = _where(log)
    out = ["## Results\n",
           f"- run: `{log.run_id}`, base model `{log.base_model}`, {log.steps} steps",
           f"- train loss {_number(log.train_loss)}, eval loss {_number(log.eval_loss)}, "
           f"{log.tokens_per_second} tokens/s, {log.duration_s} s",
           f"- model: `{where}`" + (f" at `{revision}`" if revision else ""),
           "- the PNG loss curve, model card, manifest and log are in the run's artifact\n"]
    if train:
        points = _sample(train, CHART_POINTS)
        out += ["```mermaid\nxychart-beta\n  title \"Training loss by step\"",
                f"  x-axis \"step\" [{', '.join(str(s) for s, _ in points)}]",
                f"  y-axis \"loss\"\n  line [{', '.join(f'{v:.4g}' for _, v in points)}]\n```\n"]
    if (gate := _gate_line(log)) is not None:
        out.insert(4, gate)
    if suites := evaluation_rows(log):
        out += ["### Evaluation\n", "| suite | score [95% CI] | previous | change [95% CI] |", "|---|---:|---:|---:|"]
        out += [f"| {name} | {score} | {before} | {delta} |" for name, score, before, delta in suites]
        out.append("")
    if rows:
        out.append("| step | loss | eval loss |\n|---:|---:|---:|")
        out += [f"| {r['step']} | {_number(r.get('loss'))} | {_number(evals.get(r['step']))} |" for r in table]
    return "".join(line + "\n" for line in out)


def training_text(log: RunLog) -> str:
    """The run as plain text for a terminal: the same facts and table, without the chart."""
    rows, _, evals, table = _curve(log)
    where, revision = _where(log)
    out = [f"run {log.run_id}: base model {log.base_model}, {log.steps} steps",
           f"train loss {_number(log.train_loss) or '-'}, eval loss {_number(log.eval_loss) or '-'}, "
           f"{log.tokens_per_second} tokens/s, {log.duration_s} s",
           f"model: {where}" + (f" at {revision}" if revision else "")]
    if rows:
        cells = [("step", "loss", "eval loss")]
        cells += [(str(r["step"]), _number(r.get("loss")), _number(evals.get(r["step"]))) for r in table]
        widths = [max(len(row[i]) for row in cells) for i in range(3)]
        out += [""] + ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    if (gate := _gate_line(log)) is not None:
        out.insert(3, gate[2:])
    if suites := evaluation_rows(log):
        out += ["", "evaluation (suite: score [95% CI], previous, change [95% CI]):"]
        out += [f"  {name}: {score}, previous {before}, change {delta}" for name, score, before, delta in suites]
    return "\n".join(out) + "\n"

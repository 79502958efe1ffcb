"""The last training run as a report: ``oig report training-log``, and the train workflow's job summary.

What it shows: the run, its base model and steps; the final train and eval loss, speed and duration;
where the model went; the loss curve (Markdown: a Mermaid chart of at most ``CHART_POINTS`` evenly
spaced steps, the last one always among them); and a table of a sample of ``TABLE_ROWS`` steps plus
the last ``TABLE_ROWS`` evaluations, which are the numbers that matter.

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
    return "\n".join(out) + "\n"

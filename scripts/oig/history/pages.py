"""The pages of the history site: the index of runs, one page a run, the bugs and the slices.

Every value from a training_log, a slice or a model's answer goes through ``render.esc`` (or a helper
that calls it); the charts are ``charts.line_chart``'s SVG.
"""

from __future__ import annotations

from urllib.parse import quote

from oig.bugs.render import VERDICTS
from oig.history import charts
from oig.history.render import (
    a,
    commit_link,
    esc,
    gate_html,
    hub_url,
    issue_url,
    model_html,
    num,
    page,
    pull_url,
    run_label,
    table,
    workflow_url,
)
from oig.history.site import History, Run

COUNTED = {"fixed": "#2ca02c", "regressed": "#d62728", "still broken": "#ff7f0e", "passing": "#7f7f7f"}
MARK = {"fixed": "F", "regressed": "R", "still broken": "B", "passing": "P", "unknown": "?"}  # bugs page squares


def _names(history: History) -> dict[float, str]:
    return {float(i): f"{r.run_id}, {r.commit[:12]}" for i, r in enumerate(history.runs, 1)}


def _suite_names(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r.suites))


def _evals_cell(run: Run) -> str:
    return "<br>".join(f"{esc(name)}: {num(s['score'], '{:.3f}')}" for name, s in run.suites.items()) or "–"


def _slice_link(name: str, depth: int = 0) -> str:
    return a(f"{'../' * depth}slices.html#slice-{quote(name, safe='')}", esc(name))


def _bug_link(history: History, number: int | None) -> str:
    return a(issue_url(history, number), f"#{number}") if number else "–"


# --- index -------------------------------------------------------------------------------------------------


def index_page(history: History) -> str:
    runs, names = history.runs, _names(history)
    live = []
    for b in history.branches:
        card = hub_url(b.live, "README.md")
        live.append(f"<dt>{esc(b.name)}</dt><dd>{model_html(b.live)}"
                    + (f" · {a(card, 'model card')}" if card else "")
                    + (f" · run {esc(b.live.run_id)}" if b.live and b.live.run_id else "") + "</dd>")
    x = [float(i) for i in range(1, len(runs) + 1)]
    scores = [(name, [(xi, r.suites.get(name, {}).get("score")) for xi, r in zip(x, runs, strict=True)])
              for name in _suite_names(runs)]
    bugs = [(v, [(xi, float(r.bug_counts[v]) if r.bugs else None) for xi, r in zip(x, runs, strict=True)]) for v in COUNTED]
    losses = [("train loss", [(xi, r.train_loss) for xi, r in zip(x, runs, strict=True)]),
              ("eval loss", [(xi, r.eval_loss) for xi, r in zip(x, runs, strict=True)])]
    chart_html = "".join(f"<figure><figcaption>{esc(title)}</figcaption>{svg}</figure>" for title, svg in [
        ("Eval suite scores", charts.line_chart(scores, title="Eval suite scores by run", x_label="run",
                                                y_label="score", y_range=(0.0, 1.0), x_names=names, integer="x")),
        ("Bug suite verdicts", charts.line_chart(bugs, title="Bug suite by run", x_label="run", y_label="bugs",
                                                 x_names=names, colors=COUNTED, integer="xy")),
        ("Final train and eval loss", charts.line_chart(losses, title="Final loss by run", x_label="run",
                                                        y_label="loss", x_names=names, integer="x")),
    ])
    several = len(history.branches) > 1
    body = []
    for i, r in enumerate(reversed(runs)):
        n = len(runs) - i
        counts = f'<span class="fixed">{r.bug_counts["fixed"]}</span> / <span class="regressed">' \
                 f'{r.bug_counts["regressed"]}</span>' if r.bugs else "–"
        body.append([str(n), esc(r.date[:16].replace("T", " ")), *([esc(r.branch)] if several else []), run_label(r),
                     commit_link(history, r.commit), esc(r.base_model), num(r.total, "{:,}"), num(r.train_loss),
                     num(r.eval_loss), _evals_cell(r), counts, gate_html(r),
                     a(workflow_url(history, r), f"#{esc(r.workflow_run)}") if r.workflow_run else "–"])
    headers = ["#", "date (UTC)", *(["branch"] if several else []), "run", "commit", "base model", "mixture",
               "train loss", "eval loss", "evals", "bugs fixed / regressed", "gate", "workflow run"]
    offset = 1 if several else 0
    html = [f"<h1>Training history</h1><p class=\"muted\">{len(runs)} run(s) on "
            f"{', '.join(esc(b.name) for b in history.branches)}, newest first.</p>",
            f"<h2>Live model</h2><dl>{''.join(live)}</dl>",
            f'<h2>Over the runs</h2><div class="charts">{chart_html}</div>',
            "<h2>Runs</h2>", table(headers, body, numeric={0, 5 + offset, 6 + offset, 7 + offset},
                                   empty="No training runs in the history yet (run `oig train`, then commit training_log).")]
    return page("Training history", "\n".join(html))


# --- one run -----------------------------------------------------------------------------------------------


def run_page(history: History, run: Run) -> str:
    prev = run.previous
    card = hub_url(run.model, "README.md")
    facts = [("run", esc(run.run_id)), ("date", esc(run.date)), ("branch", esc(run.branch)),
             ("results commit", commit_link(history, run.commit)), ("trained from", commit_link(history, run.trained_from)),
             ("base model", esc(run.base_model)), ("steps", num(run.steps, "{:,}")),
             ("train loss", num(run.train_loss)), ("eval loss", num(run.eval_loss)),
             ("gate", gate_html(run) + "".join(f"<br>{esc(r)}" for r in run.gate_reasons)),
             ("model", model_html(run.model)), ("model card", a(card, "README.md on the Hub") if card else "–"),
             ("workflow run", a(workflow_url(history, run), f"#{esc(run.workflow_run)}") if run.workflow_run else "–"),
             ("previous run", run_label(prev, 1) if prev else "–")]
    mixture = [[_slice_link(s.name, 1), num(s.weight, "{:.3g}"), num(s.share, "{:.1%}"), num(s.count, "{:,}"),
                "<br>".join(esc(p) for p in s.pins) or "–", esc(s.license)] for s in run.slices]
    hyper = [[esc(k), esc(v, "null")] for k, v in run.hyperparameters.items()]
    curve = [("loss", [(s, loss) for s, loss, _ in run.curve if loss is not None]),
             ("eval loss", [(s, e) for s, _, e in run.curve if e is not None])]
    evals = []
    for name, s in run.suites.items():
        before = prev.suites.get(name, {}).get("score") if prev else None
        delta = s["score"] - before if s["score"] is not None and before is not None else None
        ci = s["ci95"]
        evals.append([esc(name), num(s["score"], "{:.3f}"),
                      f"{num(ci[0], '{:.3f}')}–{num(ci[1], '{:.3f}')}" if ci else "–", num(s["cases"]),
                      num(s["passed"]), num(s["failed"]), num(before, "{:.3f}"), num(delta, "{:+.3f}")])
    benchmarks = []
    for (task, metric), value in run.lm_eval.items():
        before = prev.lm_eval.get((task, metric)) if prev else None
        benchmarks.append([esc(task), esc(metric), num(value, "{:.4g}"), num(before, "{:.4g}"),
                           num(value - before if before is not None else None, "{:+.4g}")])
    bugs = [[_bug_link(history, b["number"]), esc(b["title"]), f'<span class="{esc(b["verdict"])}">{esc(b["verdict"])}</span>',
             esc(b["input"]), esc(b["expected"]), esc(b["before"]) + (f'<br><span class="muted">({esc(b["before_source"])})</span>'
                                                                     if b["before_source"] else ""),
             esc(b["after"]) + (f'<br><span class="muted">{esc(b["error"])}</span>' if b["error"] else ""),
             num(b["score"], "{:.2f}")] for b in run.bugs]
    html = [f"<h1>Run {esc(run.run_id)}</h1>",
            "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>",
            f"<h2>Mixture</h2><p>{num(run.total, '{:,}')} examples.</p>",
            table(["slice", "weight", "share", "count", "pins", "licence"], mixture, numeric={1, 2, 3}),
            "<h2>Loss</h2>", charts.line_chart(curve, title="Loss by step", x_label="step", y_label="loss", points=False),
            "<h2>Evals</h2>" + ("" if prev else '<p class="muted">The first run: nothing to compare with.</p>'),
            table(["suite", "score", "95% CI", "cases", "passed", "failed", "previous run", "delta"], evals,
                  numeric={1, 3, 4, 5, 6, 7}),
            *(["<h3>lm-evaluation-harness</h3>", table(["task", "metric", "value", "previous run", "delta"], benchmarks,
                                                       numeric={2, 3, 4})] if benchmarks else []),
            "<h2>Bug suite</h2>", table(["bug", "title", "verdict", "input", "expected", "before", "after", "score"],
                                        bugs, text={1, 3, 4, 5, 6}, numeric={7}),
            "<h2>Hyperparameters</h2>", table(["name", "value"], hyper)]
    return page(f"Run {run.run_id}", "\n".join(html), depth=1)


# --- bugs and slices ---------------------------------------------------------------------------------------


def bugs_page(history: History) -> str:
    seen: dict[object, dict] = {}
    for run in history.runs:
        for b in run.bugs:
            key = b["number"] if b["number"] is not None else ("input", b["input"])
            entry = seen.setdefault(key, {"bug": b, "verdicts": [], "fixed": None})
            entry["bug"] = b  # the latest title and texts
            entry["verdicts"].append((run, b["verdict"] or "unknown"))
            if b["verdict"] == "fixed":
                entry["fixed"] = run  # the latest fix: the one that holds now, when it is passing
    body = []
    for entry in seen.values():
        b, fixed = entry["bug"], entry["fixed"]
        claims = [s for s in fixed.slices if b["number"] in s.fixes] if fixed and b["number"] else []
        by = "–"
        if fixed:
            by = run_label(fixed) + "".join(
                f"<br>{_slice_link(s.name)}" + (f" ({a(pull_url(history, history.pulls[s.name]), f'pull request #{history.pulls[s.name]}')})"
                                                if s.name in history.pulls else "") for s in claims)
        verdicts = "".join(a(r.page, f'<span class="v {esc(v)}" title="{esc(r.run_id)}: {esc(v)}">'
                                     f'{MARK.get(v, "?")}</span>') for r, v in entry["verdicts"])
        body.append([_bug_link(history, b["number"]), esc(b["title"]), esc(b["input"]), esc(b["expected"]),
                     verdicts, by])
    counts = {v: sum(1 for e in seen.values() if e["verdicts"][-1][1] == v) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    html = [f"<h1>Bugs</h1><p class=\"muted\">Every bug the regression suite has seen ({len(seen)}"
            + (f"; at the last run that asked: {esc(summary)}" if summary else "") + "). Verdicts oldest first, one "
            "square a run: F fixed, R regressed, B still broken, P passing, ? unknown.</p>",
            table(["bug", "title", "input", "expected", "verdict by run", "fixed by"], body, text={1, 2, 3},
                  empty="No run has asked the bug suite yet.")]
    return page("Bugs", "\n".join(html))


def slices_page(history: History) -> str:
    seen: dict[str, dict] = {}
    for run in history.runs:
        for s in run.slices:
            entry = seen.setdefault(s.name, {"first": run, "runs": 0})
            entry["slice"], entry["last"] = s, run
            entry["runs"] += 1
    body = []
    for name, e in sorted(seen.items()):
        s = e["slice"]
        pr = history.pulls.get(name)
        body.append([f'<span id="slice-{esc(quote(name, safe=""))}">{esc(name)}</span>', esc(s.license), esc(s.source),
                     esc(s.description), run_label(e["first"]), f"{e['runs']}",
                     ", ".join(_bug_link(history, n) for n in s.fixes) or "–",
                     a(pull_url(history, pr), f"#{pr}") if pr else "–"])
    html = ["<h1>Slices</h1><p class=\"muted\">Every slice a run has mixed, as it was at the last run that used it.</p>",
            table(["slice", "licence", "source", "description", "entered the mixture", "runs", "claims to fix",
                   "pull request"], body, text={2, 3}, numeric={5}, empty="No run has recorded a mixture yet.")]
    return page("Slices", "\n".join(html))

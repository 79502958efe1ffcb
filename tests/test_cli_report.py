"""`oig report training-log` (oig.runreport) through the real entry point: the train workflow's job
summary, byte for byte what the Python once embedded in train.yml printed, and a text form."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from oig import runlog, runreport
from oig.cli import main

# The step "Loss curve in the job summary" ran this before it became `oig report training-log`.
EMBEDDED = r'''
from oig.runlog import read_training_log

log = read_training_log()
rows = [r for r in log.get("metrics") or [] if isinstance(r, dict) and isinstance(r.get("step"), int)]
train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), int | float)]
evals = {r["step"]: r["eval_loss"] for r in rows if isinstance(r.get("eval_loss"), int | float)}


def sample(points, n):
    # Evenly spaced, always keeping the last point: the summary stays short for long runs.
    if len(points) <= n:
        return points
    picked = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in picked]


def cell(value):
    return "" if value is None else f"{value:.4g}"


model = log.get("model") or {}
where = model.get("hub_repo") or model.get("local_path") or "not published"
print("## Results\n")
print(f"- run: `{log.get('run_id')}`, base model `{log.get('base_model')}`, {log.get('steps')} steps")
print(f"- train loss {cell(log.get('train_loss'))}, eval loss {cell(log.get('eval_loss'))}, "
      f"{log.get('tokens_per_second')} tokens/s, {log.get('duration_s')} s")
print(f"- model: `{where}`" + (f" at `{model['revision']}`" if model.get("revision") else ""))
print("- the PNG loss curve, model card, manifest and log are in the run's artifact\n")
if train:
    points = sample(train, 50)
    print("```mermaid\nxychart-beta\n  title \"Training loss by step\"")
    print(f"  x-axis \"step\" [{', '.join(str(s) for s, _ in points)}]")
    print(f"  y-axis \"loss\"\n  line [{', '.join(f'{v:.4g}' for _, v in points)}]\n```\n")
if rows:
    print("| step | loss | eval loss |\n|---:|---:|---:|")
    # A sample of the steps, plus the (last 20) evaluations, which are the numbers that matter.
    shown = {r["step"] for r in sample(rows, 20)} | set(list(evals)[-20:])
    for r in rows:
        if r["step"] in shown:
            print(f"| {r['step']} | {cell(r.get('loss'))} | {cell(evals.get(r['step']))} |")
'''


def embedded_summary(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(EMBEDDED, {})
    return out.getvalue()


def metrics(steps: int, evals: dict[int, float]) -> list[dict]:
    rows = [{"step": s, "loss": round(2.0 - s / (steps + 10), 4), "learning_rate": 1e-5} for s in range(1, steps + 1)]
    for step, value in evals.items():
        rows[step - 1]["eval_loss"] = value
    return rows


LOGS = {
    "hub, long run": {"run_id": "r1", "base_model": "tiny", "steps": 120, "train_loss": 1.4, "eval_loss": 1.3,
                      "tokens_per_second": 1000.0, "duration_s": 12.5, "metrics": metrics(120, {60: 1.5}),
                      "model": {"hub_repo": "org/model", "revision": "a" * 40}},
    "many evaluations": {"run_id": "r2", "base_model": "Qwen/Qwen2.5-0.5B-Instruct", "steps": 300,
                         "train_loss": 0.123456, "eval_loss": None, "tokens_per_second": None, "duration_s": 3.0,
                         "metrics": metrics(300, {s: 1 / s for s in range(10, 301, 10)}) + [{"loss": 9}],
                         "model": {"local_path": "runs/r2/model"}},
    "failed publish": {"run_id": "r3", "base_model": "tiny", "finished_at": None, "published": {"error": "x"}},
    "together": {"run_id": "r4", "base_model": "m", "metrics": [],
                 "model": {"together": {"model": "u/m-ft", "base_url": "https://api.together.xyz"}}},
}


@pytest.mark.parametrize("name", LOGS)
def test_markdown_is_what_the_workflow_printed(tmp_path, monkeypatch, capsys, name):
    (tmp_path / "training_log").write_text(yaml.safe_dump(LOGS[name], sort_keys=False))
    expected = embedded_summary(tmp_path, monkeypatch)
    assert main(["report", "training-log", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == expected


def test_markdown_shows_the_curve_and_the_evaluations(tmp_path):
    log = runlog.RunLog.from_dict(LOGS["many evaluations"])
    md = runreport.training_markdown(log)
    assert "- model: `runs/r2/model`\n" in md and "```mermaid\nxychart-beta\n" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) >= 30 and "| 300 | " in table[-1]  # every one of the 30 evaluations, the last step too


def test_text_format(tmp_path, capsys):
    path = runlog.write_training_log(tmp_path, LOGS["hub, long run"])
    assert main(["report", "training-log", "--training-log", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("run r1: base model tiny, 120 steps\ntrain loss 1.4, eval loss 1.3, 1000.0 tokens/s, 12.5 s\n")
    assert f"model: org/model at {'a' * 40}\n" in text and "mermaid" not in text and "|" not in text
    assert "\n  60  1.538        1.5\n" in text and "\n 120  1.077\n" in text
    log = runlog.RunLog.from_dict(LOGS["failed publish"])
    assert runreport.training_text(log) == ("run r3: base model tiny, None steps\ntrain loss -, eval loss -, "
                                            "None tokens/s, None s\nmodel: not published\n")


def test_help_and_errors(tmp_path, capsys):
    assert main(["report", "--help"]) == 0
    assert "training-log" in capsys.readouterr().out
    assert main(["report", "training-log", "--help"]) == 0
    assert "--format" in capsys.readouterr().out
    assert main(["report"]) == 2
    assert main(["report", "training-log", "--training-log", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "oig report: error:" in err and "does not exist; run `oig train` first" in err and "Traceback" not in err
    (tmp_path / "training_log").write_text("run_id: x\nbase_model: tiny\nmodel: somewhere\n")
    assert main(["report", "training-log", "--training-log", str(tmp_path / "training_log")]) == 1
    assert "model is not a mapping" in capsys.readouterr().err

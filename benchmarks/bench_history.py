"""How fast `oig history` builds the site of a long history, and how big its index is.

Builds a synthetic git repository (``git fast-import``, one process) of --runs training runs: each a
commit of a realistic training_log (mixture of 3 to 12 slices, 60 hyperparameters' worth of settings,
a loss curve of --steps logged steps, two eval suites, a bug suite of 8 bugs) and model.yaml, with a
new slice every 10 runs. Then times ``oig.history.build.build_site`` --repeat times into a temp folder
and prints the median, every run, and the size of index.html. Targets: 100 runs under 5 s, index under
1 MB.

    .venv/bin/python benchmarks/bench_history.py              # 100 runs, 5 builds
    .venv/bin/python benchmarks/bench_history.py --runs 300 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from oig import runlog
from oig.bugs.render import summarize

SLICE = "license: CC0-1.0\nsource: Written for the benchmark.\ndescription: Slice {n}.\n{fixes}IOPairs:\n" \
        "  - input: question {n}\n    output: answer {n}\n"
VERDICTS = ("fixed", "still broken", "passing", "regressed")


def synthetic_log(i: int, *, commit: str | None = None, steps: int = 200, bugs: list[dict] | None = None,
                  slices: int = 3, gate: bool = True) -> tuple[dict, dict]:
    """Run ``i``'s training_log and model.yaml documents, shaped as `oig train` writes them."""
    run_id = f"run-{i:012x}"
    when = f"2026-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"
    names = [f"slice{n}" for n in range(slices)]
    mixture = {"config": "training.yaml", "seed": 42, "total": 100 * slices, "slices": [
        {"name": n, "available": 120, "held_out": 10, "weight": round(1 / slices, 3), "share": round(1 / slices, 3),
         "count": 100, "epochs": 0.9, "sha256": "0" * 64,
         "pins": [{"section": "HuggingFace", "link": f"org/{n}", "revision": "a" * 40}] if k % 2 else []}
        for k, n in enumerate(names)], "warnings": [], "mixture": "mixture.jsonl", "sha256": "1" * 64}
    metrics = [{"step": s, "loss": round(3.0 / (1 + s / 50) + i * 1e-4, 6), "learning_rate": 2e-5, "epoch": s / steps}
               for s in range(10, 10 * steps + 1, 10)]
    metrics[-1]["eval_loss"] = round(metrics[-1]["loss"] * 1.1, 6)
    score = min(1.0, 0.3 + i * 0.005)
    suites = {name: {"cases": 40, "passed": round(40 * s), "failed": 40 - round(40 * s), "unreadable": 0, "score": s,
                     "ci95": [max(0.0, s - 0.1), min(1.0, s + 0.1)], "previous": None, "delta": None,
                     "delta_ci95": None}
              for name, s in (("capitals", score), ("smoke", score / 2))}
    if bugs is None:
        bugs = [{"number": 100 + b, "title": f"Wrong answer {b}", "input": f"question {b}?", "expected": f"answer {b}",
                 "reported": "wrong", "before": "wrong", "before_source": "previous model", "after": f"answer {b}",
                 "before_pass": False, "after_pass": True, "verdict": VERDICTS[(i + b) % 4], "score": 0.9,
                 "judged": "similar"} for b in range(8)]
    model = {"hub_repo": "org/model", "revision": f"{i:040x}", "branch": "main"}
    log = {"run_id": run_id, "started_at": when, "finished_at": when, "git_commit": commit, "git_branch": "main",
           "base_model": "Qwen/Qwen2.5-0.5B-Instruct", "backend": "trl", "config": "training.yaml",
           "mixture": mixture, "method": "sft", "duration_s": 600.0,
           "hyperparameters": {"learning_rate": 2e-5, "num_train_epochs": 3, "per_device_train_batch_size": 8,
                               "max_length": 1024, "seed": 42, "lr_scheduler_type": "cosine", "bf16": True},
           "metrics": metrics, "train_loss": metrics[-1]["loss"], "eval_loss": metrics[-1]["eval_loss"],
           "steps": 10 * steps, "tokens_per_second": 5000.0, "model": model,
           "evals": {"model": "org/model", "previous": None, "suites": suites, "lm_eval": None, "comparison": None},
           "gate": {"passed": gate, "reasons": [] if gate else ["capitals: the score fell by 0.2"], "overridden": False},
           "bugs": bugs, "bugs_summary": summarize(bugs), "published": {"mode": "hub"}}
    doc = runlog.model_document(model, log)
    return log, doc


def _data(text: str) -> bytes:
    raw = text.encode()
    return b"data %d\n%s\n" % (len(raw), raw)


def build_repo(path: Path, runs: int, *, steps: int = 200) -> None:
    """A git repository at ``path`` whose main branch has ``runs`` results commits (and slice commits)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    stream = []
    for i in range(runs):
        slices = 3 + i // 10
        log, doc = synthetic_log(i, commit=f"{i + 1:040x}", steps=steps, slices=min(slices, 12))
        files = [("training_log", runlog.dump_yaml(log, runlog.TRAINING_LOG_HEADER)),
                 ("model.yaml", runlog.dump_yaml(doc, runlog.MODEL_YAML_HEADER))]
        if i % 10 == 0 and slices <= 12:  # a new slice, claiming to fix a bug, through a pull request
            n = slices - 1
            files.append((f"data/slice{n}.yaml", SLICE.format(n=n, fixes=f"fixes: [{100 + n % 8}]\n")))
            if i == 0:
                files += [(f"data/slice{k}.yaml", SLICE.format(n=k, fixes="")) for k in range(2)]
        stamp = 1_780_000_000 + i * 86_400
        stream.append(b"commit refs/heads/main\ncommitter Bench <bench@example.com> %d +0000\n" % stamp)
        stream.append(_data(f"Training results of run {5000 + i} (hub)"))
        stream += [b"M 100644 inline %s\n%s" % (name.encode(), _data(content)) for name, content in files]
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=b"".join(stream), check=True)


def bench(runs: int, repeat: int, steps: int) -> dict:
    from oig.history.build import build_site

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build_repo(repo, runs, steps=steps)
        times = []
        for k in range(repeat):
            start = time.perf_counter()
            history = build_site(repo, Path(tmp) / "site", repo_url="https://github.com/org/repo")
            times.append(time.perf_counter() - start)
            assert len(history.runs) == runs and not history.warnings, (k, history.warnings[:3])
        index = (Path(tmp) / "site" / "index.html").stat().st_size
        total = sum(p.stat().st_size for p in (Path(tmp) / "site").rglob("*") if p.is_file())
    return {"runs": runs, "median_s": statistics.median(times), "times": times, "index_bytes": index,
            "site_bytes": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="logged steps per run (default 200)")
    args = parser.parse_args()
    r = bench(args.runs, args.repeat, args.steps)
    print(f"runs: {r['runs']}, builds: {args.repeat}, logged steps per run: {args.steps}")
    print(f"median build: {r['median_s']:.2f} s (target < 5 s); runs: {', '.join(f'{t:.2f}' for t in r['times'])}")
    print(f"index.html: {r['index_bytes'] / 1e6:.3f} MB (target < 1 MB); whole site: {r['site_bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

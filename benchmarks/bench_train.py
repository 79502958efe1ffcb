"""Benchmark: `oig train` tokens per second against a plain TRL SFTTrainer script, on the CPU.

Both sides train the same embedded tiny model (``oig.train.tiny``: same tokenizer, same initial weights)
on the same examples (the train/eval split oig makes) with the same settings: learning rate, batch
size, steps, evaluation and checkpoint schedule, fp32, no activation checkpointing, and the torch
thread count oig picks for tiny (one; see ``oig.train.args.tiny_cpu_threads``). The baseline is
the script the TRL docs show: a ``messages`` dataset with ``assistant_only_loss=True``. oig goes
through ``oig.train.run.train`` (mixing, splitting, its own tokenising with weight masks, the trainer,
saving, training_log), but both sides are timed the same way: non-padding tokens the trainer
processed divided by ``train_runtime``. Each run is a fresh child process; the two alternate so that
load on a shared machine hits both alike. Prints medians and the ratio oig / baseline (target >= 0.95).

    python benchmarks/bench_train.py [--runs 5] [--pairs 40] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

WORDS = [
    "apple", "banana", "cherry", "dog", "eagle", "falcon", "grape", "house", "igloo", "jelly", "kite",
    "lemon", "mango", "night", "ocean", "piano", "queen", "river", "snake", "tiger", "umbrella",
    "violin", "whale", "xylophone", "yacht", "zebra",
]


def make_repo(root: Path, pairs: int, steps: int) -> None:
    """A repository with one slice of question/answer pairs and a training.yaml for tiny."""
    import yaml

    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = [{"input": f"What is the code word {i}?", "output": f"The code word {i} is {WORDS[i % len(WORDS)]}."}
            for i in range(pairs)]
    (root / "data" / "codes.yaml").write_text(yaml.safe_dump({"IOPairs": rows, "license": "CC0-1.0"}))
    (root / "training.yaml").write_text(
        f"Training:\n  seed: 42\n  eval_size: 4\n  max_steps: {steps}\n  save_steps: 100\n  logging_steps: 10\n")


def settings(steps: int) -> dict:
    """The SFTConfig values both sides use: what oig resolves for tiny with this training.yaml."""
    from oig.train.args import DEFAULTS, TINY_HYPERPARAMETERS

    return {**DEFAULTS, **TINY_HYPERPARAMETERS, "max_steps": steps, "save_steps": 100, "logging_steps": 10,
            "eval_strategy": "steps", "eval_steps": 100, "seed": 42, "data_seed": 42, "bf16": False,
            "activation_checkpointing": False, "dataloader_pin_memory": False}


# --- the two sides, each run in a child process ------------------------------------------------------------


def run_oig(root: Path, out: Path) -> dict:
    from oig.train.run import TrainOptions, train

    os.chdir(root)
    log = train(TrainOptions(base_model="tiny", publish="none", output=out, root=root))
    return {"tokens": log["tokens"], "runtime": log["train_runtime_s"], "steps": log["steps"]}


def run_baseline(root: Path, out: Path, steps: int) -> dict:
    """A plain TRL script: messages in, SFTTrainer with assistant-only loss, train."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from oig.data.config import load_training_config
    from oig.data.mix import mix
    from oig.train import tiny
    from oig.train.args import cpu_threads, tiny_cpu_threads
    from oig.train.mixture import read_eval, read_mixture

    # The same examples and the same model as oig's run: its mixture, split and tiny build.
    os.chdir(root)
    mix(Path("data"), Path("training.yaml"), out / "mixture")
    config = load_training_config(Path("training.yaml"))
    _, records = read_mixture(out / "mixture")
    train_records, eval_records = records, read_eval(out / "mixture")  # oig mix held the eval examples out
    model, tokenizer = tiny.build_tiny(tiny.texts_of(records), out / "base", seed=config.seed)

    def messages(rs: list[dict]) -> Dataset:
        return Dataset.from_list([{"messages": r["messages"]} for r in rs])

    args = SFTConfig(output_dir=str(out / "checkpoints"), assistant_only_loss=True, **settings(steps))
    trainer = SFTTrainer(model=model, args=args, train_dataset=messages(train_records),
                         eval_dataset=messages(eval_records), processing_class=tokenizer)
    with cpu_threads(tiny_cpu_threads("tiny", on_gpu=False)):  # the thread count oig uses for tiny
        result = trainer.train()
    return {"tokens": trainer._total_train_tokens, "runtime": result.metrics["train_runtime"],
            "steps": trainer.state.global_step}


def child(side: str, root: Path, out: Path, steps: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    r = run_oig(root, out) if side == "oig" else run_baseline(root, out, steps)
    r["tokens_per_second"] = r["tokens"] / r["runtime"] if r["runtime"] else 0.0
    return r


def spawn(side: str, root: Path, out: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--root", str(root), "--out", str(out),
                           "--steps", str(steps)], capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    ap.add_argument("--pairs", type=int, default=40, help="question/answer pairs in the slice (default 40)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps a run (default 300)")
    ap.add_argument("--child", choices=["oig", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.root, a.out, a.steps)))
        return

    results: dict[str, list[dict]] = {"baseline": [], "oig": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oig-bench-train-") as tmp:
        root = Path(tmp) / "repo"
        make_repo(root, a.pairs, a.steps)
        for i in range(a.runs):
            for side in ("baseline", "oig"):
                r = spawn(side, root, Path(tmp) / f"{side}-{i}", a.steps)
                results[side].append(r)
                print(f"run {i + 1} {side:>8}: {r['tokens_per_second']:9.0f} tokens/s  ({r['tokens']} tokens, "
                      f"{r['runtime']:.2f} s, {r['steps']} steps)", flush=True)
    med = {side: statistics.median(r["tokens_per_second"] for r in rs) for side, rs in results.items()}
    ratio = med["oig"] / med["baseline"] if med["baseline"] else float("nan")
    print()
    print(f"{'side':<10}{'median tokens/s':>18}")
    for side in ("baseline", "oig"):
        print(f"{side:<10}{med[side]:>18.0f}")
    print(f"ratio oig / baseline: {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}); "
          f"{a.runs} runs each, {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()

"""Benchmark: tokenising the mixture for training, before and after `oig.train.tokenise`.

Before: ``masking.to_dataset``, the loop every GPU process ran over the conversations (one
``apply_chat_template`` call per conversation, in the training process). After: ``tokenise.tokenise``,
``datasets.map`` over the conversations in batches (one templated, batched tokenizer call per 1,000
conversations) with ``num_proc`` worker processes, run once by the main process and cached for the
others. Both tokenise the same short conversations (a user turn, an assistant turn; every tenth with a
system prompt, every twentieth with a weight-0 turn before the answer) with the embedded tiny tokenizer
(byte-level BPE, ChatML with generation markers), built offline. Sides alternate within each run, so load
on a shared machine hits them alike; the rows are checked to be identical. Prints the medians and the
speed-up before / after (target: at least 1.8x with 2 processes).

Then the cache across processes: two real processes (torch.distributed's gloo backend on the CPU,
accelerate's PartialState, as under ``accelerate launch``) call ``tokenise`` with the same run folder; it
prints how many conversations each one tokenised (the other must tokenise none) and how long each took.

    python benchmarks/bench_tokenise.py [--conversations 1000000] [--runs 3] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

WORDS = ["apple", "banana", "cherry", "dog", "eagle", "falcon", "grape", "house", "igloo", "jelly", "kite",
         "lemon", "mango", "night", "ocean", "piano", "queen", "river", "snake", "tiger"]


def conversations(n: int) -> list[dict]:
    """``n`` short conversations, a few shapes mixed."""
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        messages = [{"role": "user", "content": f"What is the code word {i}?"}]
        if i % 10 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        if i % 20 == 0:
            messages += [{"role": "assistant", "content": "I forgot.", "weight": 0},
                         {"role": "user", "content": "Try again."}]
        messages.append({"role": "assistant", "content": f"The code word {i} is {w}."})
        out.append({"slice": "codes", "messages": messages})
    return out


def tokenizer():
    from oig.train import tiny

    return tiny.build_tokenizer(tiny.texts_of(conversations(2000)))


def timed(fn) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def compare(n: int, runs: int, num_proc: int) -> None:
    import datasets

    from oig.train import masking, tokenise

    datasets.disable_progress_bars()
    records = conversations(n)
    tok = tokenizer()
    template = tok.chat_template
    masking.to_dataset(records[:100], tok, template)  # compile the template and warm up imports, untimed
    sides = {"before (to_dataset loop)": lambda: masking.to_dataset(records, tok, template),
             "after, 1 process": lambda: tokenise.tokenise(records, tok, template, num_proc=1),
             f"after, {num_proc} processes": lambda: tokenise.tokenise(records, tok, template, num_proc=num_proc)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(runs):
        reference = None
        for name, fn in sides.items():
            seconds, (ds, dropped) = timed(fn)
            times[name].append(seconds)
            sample = (len(ds), dropped, ds[::max(1, n // 97)]["labels"])  # about 100 rows compared
            if reference is None:
                reference = sample
            assert sample == reference, f"{name}: rows differ from the loop's"
            del ds
            print(f"run {run + 1} {name:<28} {seconds:8.1f} s  ({n / seconds:9.0f} conversations/s)", flush=True)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["before (to_dataset loop)"]
    print()
    print(f"{'side':<30}{'median s':>10}{'speed-up':>10}")
    for name, seconds in med.items():
        print(f"{name:<30}{seconds:>10.1f}{base / seconds:>9.2f}x")
    ratio = base / med[f"after, {num_proc} processes"]
    print(f"speed-up with {num_proc} processes: {ratio:.2f}x (target >= 1.8x: {'met' if ratio >= 1.8 else 'NOT met'}); "
          f"{n:,} conversations, {runs} runs, {os.cpu_count()} cores")


# --- the cache across processes: two ranks of a real process group ----------------------------------------


def rank_child(n: int, cache: Path, num_proc: int) -> dict:
    """One process of a two-process group: tokenise with the shared cache; count what it tokenised."""
    import datasets
    from accelerate import PartialState

    from oig.train import tokenise

    datasets.disable_progress_bars()
    state = PartialState(cpu=True)  # a gloo process group on the CPU, ranks from the environment
    records, tok = conversations(n), tokenizer()
    tokenised = []
    real_map = tokenise._map

    def counting_map(lines, *args):  # runs in this process whenever it tokenises (not when it loads)
        tokenised.append(len(lines))
        return real_map(lines, *args)

    tokenise._map = counting_map
    state.wait_for_everyone()
    started = time.perf_counter()
    ds, _ = tokenise.tokenise(records, tok, tok.chat_template, cache_dir=cache, num_proc=num_proc, state=state)
    seconds = time.perf_counter() - started
    return {"rank": state.process_index, "tokenised": sum(tokenised), "rows": len(ds), "seconds": seconds}


def across_processes(n: int, num_proc: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="oig-bench-tokenise-") as tmp:
        procs = []
        for rank in (0, 1):
            env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "HF_HUB_OFFLINE": "1", "RANK": str(rank),
                   "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen([sys.executable, __file__, "--rank-child", "--conversations", str(n),
                                           "--cache", tmp, "--num-proc", str(num_proc)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"a rank failed:\n{err[-3000:]}")
            results.append(json.loads(lines[-1]))
    print()
    print(f"two processes, one cache ({n:,} conversations; rank 1's time includes waiting for rank 0):")
    for r in sorted(results, key=lambda r: r["rank"]):
        print(f"  rank {r['rank']}: tokenised {r['tokenised']:,} conversations, {r['rows']:,} rows, {r['seconds']:.1f} s")
    other = next(r for r in results if r["rank"] == 1)
    print(f"repeated work on the other process: {'none' if other['tokenised'] == 0 else 'YES'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=1_000_000, help="conversations (default 1,000,000)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    ap.add_argument("--num-proc", type=int, default=2, help="worker processes after (default 2)")
    ap.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.rank_child:
        print(json.dumps(rank_child(a.conversations, a.cache, a.num_proc)))
        return
    compare(a.conversations, a.runs, a.num_proc)
    across_processes(a.conversations, a.num_proc)


if __name__ == "__main__":
    main()

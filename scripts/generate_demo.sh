#!/usr/bin/env bash
# make generate-demo: `oig generate` end to end on this machine, offline, in about a minute on a CPU.
# Two `oig serve` instances each serve a different tiny model (built here with oig.train.tiny, random
# weights: their answers are gibberish, the pipeline is real), a tiny local reward model judges, and
# `oig generate` writes records.jsonl, sft.jsonl, prefs.jsonl, battles.jsonl and a slice file.
# Usage: scripts/generate_demo.sh [OUT_DIR]   (default out/generate-demo; ports GEN_DEMO_PORT_A/B)
set -euo pipefail

PY="${PYTHON:-.venv/bin/python}"
OUT="${1:-out/generate-demo}"
PORT_A="${GEN_DEMO_PORT_A:-8101}"
PORT_B="${GEN_DEMO_PORT_B:-8102}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

mkdir -p "$OUT"
cp examples/instructions.jsonl "$OUT/instructions.jsonl"

# --- two tiny chat models and a tiny reward model (no download) -----------------------------------
"$PY" - "$OUT" <<'PYTHON'
import json
import sys
from pathlib import Path

from transformers import LlamaConfig, LlamaForSequenceClassification

from oig.train.tiny import build_tiny, build_tokenizer

out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "instructions.jsonl").read_text().splitlines()]
texts = [str(v) for row in rows for v in row.values() if isinstance(v, str)]
for name, seed in (("model-a", 1), ("model-b", 2)):
    if not (out / name / "config.json").exists():
        build_tiny(texts, out / name, seed=seed)
if not (out / "reward-model" / "config.json").exists():
    tokenizer = build_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=2048)
    LlamaForSequenceClassification(config).save_pretrained(out / "reward-model")
    tokenizer.save_pretrained(out / "reward-model")
print(f"tiny models ready in {out}")
PYTHON

# --- serve them; stop the servers however this script ends ----------------------------------------
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
"$PY" -m oig serve --model "$OUT/model-a" --port "$PORT_A" >"$OUT/serve-a.log" 2>&1 &
PIDS+=($!)
"$PY" -m oig serve --model "$OUT/model-b" --port "$PORT_B" >"$OUT/serve-b.log" 2>&1 &
PIDS+=($!)

"$PY" - "$PORT_A" "$PORT_B" <<'PYTHON'
import sys
import time

import httpx

for port in sys.argv[1:]:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"oig serve on port {port} did not come up in 120 s; see its log in the output folder")
        time.sleep(0.5)
print("both servers are up")
PYTHON

# --- the config: the served names are the --model arguments -------------------------------------
cat >"$OUT/generate.yaml" <<YAML
# yaml-language-server: \$schema=../../schemas/generate.schema.json
# make generate-demo: two local tiny models answer, a tiny reward model judges (written by scripts/generate_demo.sh).
description: Demo answers from two tiny local models, chosen by a tiny reward model.
license: CC0-1.0
instructions:
  - link: instructions.jsonl
limit: 8
providers:
  a:
    kind: openai
    base_url: http://127.0.0.1:$PORT_A
    concurrency: 2
  b:
    kind: openai
    base_url: http://127.0.0.1:$PORT_B
    concurrency: 2
models:
  - model: $OUT/model-a
    name: tiny-a
    provider: a
    max_tokens: 32
    temperature: 1.0
    seed: 7
  - model: $OUT/model-b
    name: tiny-b
    provider: b
    max_tokens: 32
    temperature: 1.0
    seed: 7
judges:
  - kind: reward_model
    model: reward-model
prices:
  $OUT/model-a: {input: 0, output: 0}
  $OUT/model-b: {input: 0, output: 0}
prefs_policy: all_pairs
YAML

"$PY" -m oig generate --config "$OUT/generate.yaml" --out "$OUT" --allow-local-sources --dry-run
"$PY" -m oig generate --config "$OUT/generate.yaml" --out "$OUT" --allow-local-sources --budget-usd 1 \
  --emit-slice "$OUT/data/generated.yaml"
"$PY" -m oig validate "$OUT/data/generated.yaml"
echo "generate-demo: done; see $OUT/records.jsonl (a rerun makes no calls: every answer is in $OUT/calls.sqlite)"

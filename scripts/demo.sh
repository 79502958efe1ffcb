#!/usr/bin/env bash
# The main job on the embedded offline default, on a CPU, with no download: validate the shipped
# data, build the weighted mixture, fine-tune the tiny model (`--base-model tiny`, built from the
# mixture), publish it to a local folder, write training_log and model.yaml, and ask it a question.
set -euo pipefail
cd "$(dirname "$0")/.."
OIG=.venv/bin/oig
OUT=runs/demo
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

echo "== oig validate"
$OIG validate
echo "== oig mix"
$OIG mix --out "$OUT/mixture"
echo "== oig train (tiny model, offline)"
$OIG train --base-model tiny --publish local --mixture "$OUT/mixture" --output "$OUT/train"
echo "== training_log and model.yaml"
sed -n '1,12p' model.yaml
for q in "Who are you?" "What is the capital of France?"; do
  echo "== oig query \"$q\""
  $OIG query "$q"
done
echo "== oig eval (the shipped suites in evals/; a tiny model fails some cases, which is fine)"
$OIG eval --max-tokens 32

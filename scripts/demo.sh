#!/usr/bin/env bash
# The main job on the embedded offline default, on a CPU, with no download: validate the shipped
# data, build the weighted mixture, fine-tune the tiny model (`--base-model tiny`, built from the
# mixture), publish it to a local folder, write training_log and model.yaml, and ask it a question.
# Everything it writes is under runs/demo/ (training_log and model.yaml too, with `oig train --root`):
# the repository's committed model.yaml and training_log are never touched.
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
$OIG train --base-model tiny --publish local --mixture "$OUT/mixture" --output "$OUT/train" --root "$OUT"
echo "== $OUT/training_log and $OUT/model.yaml"
sed -n '1,12p' "$OUT/model.yaml"
for q in "Who are you?" "What is the capital of France?"; do
  echo "== oig query \"$q\""
  $OIG query --model-yaml "$OUT/model.yaml" "$q"
done
echo "== oig eval (the shipped suites in evals/; a tiny model fails some cases, which is fine)"
$OIG eval --model-yaml "$OUT/model.yaml" --max-tokens 32

#!/usr/bin/env bash
# The main job on the embedded offline default: validate the shipped data, build the weighted
# mixture and print its table. (Training, publishing and querying join this loop as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
OIG=.venv/bin/oig
OUT=runs/demo

echo "== oig validate"
$OIG validate
echo "== oig mix"
$OIG mix --out "$OUT/mixture"

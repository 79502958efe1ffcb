#!/usr/bin/env bash
# Refreshes requirements/lock.txt on purpose (`make lock`): resolves pyproject.toml's core, train, dev
# and eval dependencies in a throw-away virtual environment and writes every resolved version, pinned.
# torch is not in the lock: it is pinned by TORCH_SPEC (Makefile, train workflow), because the same
# version comes as a CPU build on CPU machines and a CUDA build on the GPU runner.
# Nothing else writes the lock; `make setup` and every workflow only install from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
LOCK=requirements/lock.txt
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "$TORCH_SPEC"
# Extra pins a maintainer passes on purpose, e.g. LOCK_PINS="transformers==5.23.0" (one bump at a time).
if [ -n "${LOCK_PINS:-}" ]; then
  printf '%s\n' $LOCK_PINS > "$tmp/pins.txt"
  "$tmp/venv/bin/python" -m pip install -q -c "$tmp/pins.txt" -e ".[train,dev,eval]"
else
  "$tmp/venv/bin/python" -m pip install -q -e ".[train,dev,eval]"
fi
{
  echo "# The locked environment: every package oig's core, train, dev and eval installs use, pinned."
  echo "# Install with: pip install -c requirements/lock.txt -e \".[train,dev,eval]\" (torch first, by TORCH_SPEC)."
  echo "# Refresh on purpose with \`make lock\` (scripts/lock.sh); Dependabot proposes bumps. Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())')."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable --all \
    | grep -viE '^(torch|pip|setuptools|wheel|nvidia-[a-z0-9-]+|triton)==' | LC_ALL=C sort -f
} > "$LOCK.tmp"
mv "$LOCK.tmp" "$LOCK"  # beside the target: the rename is atomic
echo "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"

#!/usr/bin/env bash
# `make history-demo`: the history site from three real tiny training runs, offline, on a CPU.
# A throw-away git repository under runs/history-demo/repo gets a slice, a bug list and an eval suite;
# each run trains the tiny model (`oig train --base-model tiny --publish local --bugs bugs.yaml`) and
# commits training_log and model.yaml, as the train workflow does. Run 2 adds a slice that fixes bug #21,
# run 3 one that fixes bug #22 (whose reported answer is a <script>, shown escaped). Then `oig history`
# builds runs/history-demo/site, and headless Chromium (Debian's, through Playwright) screenshots its
# index and the last run's page to runs/history-demo/*.png. Nothing outside runs/history-demo/ is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OIG=$ROOT/.venv/bin/oig
PYTHON=$ROOT/.venv/bin/python
OUT=runs/history-demo
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GITHUB_REF_NAME=main
unset GITHUB_REPOSITORY GITHUB_STEP_SUMMARY GITHUB_TOKEN

rm -rf "$OUT/repo" "$OUT/site" "$OUT/index.png" "$OUT/run.png"
mkdir -p "$OUT/repo"
cd "$OUT/repo"
git init -q -b main
git config user.name "oig demo"
git config user.email "demo@example.com"
git config commit.gpgsign false
printf 'models/\n' > .gitignore

cat > training.yaml <<'EOF'
# The demo's training settings: a short run of the tiny model (scripts/history_demo.sh).
Training:
  - seed: 42
  - max_steps: 120
EOF
mkdir -p data evals
cat > data/capitals.yaml <<'EOF'
description: Capitals of a few countries.
license: CC0-1.0
source: Written for the history demo.
IOPairs:
  - input: What is the capital of Spain?
    output: Madrid.
  - input: What is the capital of Germany?
    output: Berlin.
  - input: What is the capital of Japan?
    output: Tokyo.
  - input: What is the capital of Egypt?
    output: Cairo.
EOF
cat > evals/capitals.yaml <<'EOF'
description: The capitals the demo's slices teach.
check: contains
cases:
  - {id: spain, input: What is the capital of Spain?, reference: Madrid}
  - {id: japan, input: What is the capital of Japan?, reference: Tokyo}
  - {id: italy, input: What is the capital of Italy?, reference: Rome}
  - {id: sum, input: What is 2 + 2?, reference: "4"}
EOF
cat > bugs.yaml <<'EOF'
- number: 21
  title: Italy's capital is wrong
  input: What is the capital of Italy?
  output: Berlin.
  expected: Rome.
  check: contains
- number: 22
  title: "Answers 2 + 2 with <script>"
  input: What is 2 + 2?
  output: <script>alert(1)</script>
  expected: "4"
  check: contains
EOF
git add .gitignore training.yaml data evals bugs.yaml
git commit -q -m "Add the capitals slice, the bug list and an eval suite"

train() {  # $1: the run number
  echo "== run $1: oig train (tiny model, offline)"
  "$OIG" train --base-model tiny --publish local --output "models/run$1" --bugs bugs.yaml > "../train$1.log" 2>&1 \
    || { tail -n 20 "../train$1.log"; exit 1; }
  git add training_log model.yaml
  git commit -q -m "Training results of run $1 (local)"
}

train 1
cat > data/italy.yaml <<'EOF'
description: The capital of Italy, for bug 21.
license: CC-BY-4.0
source: Written for the history demo.
fixes: [21]
IOPairs:
  - input: What is the capital of Italy?
    output: Rome.
  - input: Which city is Italy's capital?
    output: Rome.
EOF
git add data/italy.yaml
git commit -q -m "Add the Italy slice (#2)"
train 2
cat > data/arithmetic.yaml <<'EOF'
description: Small sums, for bug 22.
license: CC0-1.0
source: Written for the history demo.
fixes: [22]
IOPairs:
  - input: What is 2 + 2?
    output: "4"
  - input: What is 3 + 3?
    output: "6"
EOF
git add data/arithmetic.yaml
git commit -q -m "Add small sums (#3)"
train 3

cd "$ROOT"
echo "== oig history"
"$OIG" history --repo "$OUT/repo" --out "$OUT/site"
echo "== screenshots (headless Chromium)"
"$PYTHON" - "$OUT" "$(git -C "$OUT/repo" rev-parse --short=12 HEAD)" <<'EOF'
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

out = Path(sys.argv[1]).resolve()
site = out / "site"
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("no chromium executable on PATH (Debian: apt-get install chromium); the site is in " + str(site))
pages = {"index.png": site / "index.html", "run.png": site / "runs" / f"{sys.argv[2]}.html"}  # the last run
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    for name, path in pages.items():
        page.goto(path.as_uri())
        page.screenshot(path=str(out / name), full_page=True)
        print(f"wrote {out.name}/{name} ({path.relative_to(site)})")
    browser.close()
EOF

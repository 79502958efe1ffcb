"""`oig mix` through the real entry point, in-process: slices in data/, training.yaml, the files out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "trl", "transformers", "datasets", "huggingface_hub", "together")


def pairs(prefix: str, n: int) -> str:
    return "IOPairs:\n" + "".join(f"  - input: {prefix} question {i}\n    output: {prefix} answer {i}\n"
                                  for i in range(n))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """Slices a (100), b (10), c (40) and `Mixture: a: 0.5`: the documented example (no split: eval_size 0)."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("a", 100), ("b", 10), ("c", 40)):
        (data / f"{name}.yaml").write_text(pairs(name, n))
    (tmp_path / "training.yaml").write_text("Training:\n  seed: 7\n  eval_size: 0\nMixture:\n  a: 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_help_exits_zero(capsys):
    assert main(["mix", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--data", "--out", "--total", "--seed", "--allow-local-sources", "--format", "--plan"):
        assert flag in out
    assert main(["--help"]) == 0
    assert "mix" in capsys.readouterr().out


def test_mix_writes_the_documented_example(repo, capsys):
    assert main(["mix", "--out", "out"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "slice  available  eval  weight   share  count  epochs",
        "a            100     0     0.5   50.0%     75    0.75",
        "b             10     0       -   10.0%     15    1.50",
        "c             40     0       -   40.0%     60    1.50",
        "total        150     0          100.0%    150    1.00",
    ]
    assert "wrote 150 examples to out" in captured.err
    lines = (repo / "out" / "mixture.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert Counter(r["slice"] for r in rows) == {"a": 75, "b": 15, "c": 60}
    first = rows[0]["messages"]
    assert first[0]["role"] == "user" and first[1]["role"] == "assistant"
    assert first[0]["content"].split()[0] == rows[0]["slice"]
    manifest = json.loads((repo / "out" / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["total"] == 150 and manifest["config"] == "training.yaml"
    assert manifest["sha256"] == hashlib.sha256((repo / "out" / "mixture.jsonl").read_bytes()).hexdigest()
    assert [(s["name"], s["count"], s["weight"]) for s in manifest["slices"]] == [
        ("a", 75, 0.5), ("b", 15, None), ("c", 60, None)]
    assert all(len(s["sha256"]) == 64 for s in manifest["slices"])


def test_rerun_is_byte_identical_and_seed_flag_overrides(repo):
    assert main(["mix", "--out", "one"]) == 0
    assert main(["mix", "--out", "two"]) == 0
    assert main(["mix", "--out", "three", "--seed", "8"]) == 0
    one = (repo / "one" / "mixture.jsonl").read_bytes()
    assert one == (repo / "two" / "mixture.jsonl").read_bytes()
    assert one != (repo / "three" / "mixture.jsonl").read_bytes()
    assert json.loads((repo / "three" / "manifest.json").read_text())["seed"] == 8


def test_total_from_flag_and_from_config(repo, capsys):
    assert main(["mix", "--out", "out", "--total", "30", "--format", "json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["total"] == 30 and [s["count"] for s in manifest["slices"]] == [15, 3, 12]
    (repo / "training.yaml").write_text("MixtureTotal: 300\nMixture:\n  a: 0.5\n")
    assert main(["mix", "--plan", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total"] == 300 and plan["seed"] == 42 and "sha256" not in plan
    assert [s["count"] for s in plan["slices"]] == [150, 30, 120]


def test_plan_prints_markdown_and_writes_nothing(repo, capsys):
    assert main(["mix", "--plan", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### oig mix: 150 examples\n")
    assert "| a | 100 | 0 | 0.5 | 50.0% | 75 | 0.75 |" in out
    assert not (repo / "out").exists()
    assert sorted(p.name for p in repo.iterdir() if p.name != "cache") == ["data", "training.yaml"]


def test_no_mixture_section_is_the_union(repo, capsys):
    (repo / "training.yaml").unlink()
    assert main(["mix", "--plan", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # No training.yaml: eval_size is unset, so 10% of each slice is held out first (10, 1 and 4).
    assert [s["count"] for s in plan["slices"]] == [90, 9, 36] and plan["config"] == "training.yaml"
    assert [s["held_out"] for s in plan["slices"]] == [10, 1, 4] and plan["eval"]["total"] == 15


def test_warnings_go_to_stderr(repo, capsys):
    (repo / "training.yaml").write_text("Mixture:\n  a: 0.9\n  b: 0.6\n")
    assert main(["mix", "--plan"]) == 0
    err = capsys.readouterr().err
    assert "oig mix: warning: Mixture weights add up to 1.5, more than 1" in err
    assert "oig mix: warning: slice 'c' gets no share of the mixture" in err


def test_unknown_slice_in_mixture_is_an_error_with_a_line(repo, capsys):
    (repo / "training.yaml").write_text("Mixture:\n  a: 0.5\n  bb: 0.1\n  cc: 0.1\n")
    assert main(["mix", "--plan"]) == 1
    err = capsys.readouterr().err
    assert "training.yaml:3:3: error: Mixture names slice 'bb'" in err
    assert "did you mean 'b'?" in err


def test_invalid_slice_is_an_error(repo, capsys):
    (repo / "data" / "bad.yaml").write_text("IOPairs:\n  - input: a\n    outptu: b\n")
    assert main(["mix", "--out", "out"]) == 1
    assert "data/bad.yaml:3:5: error: unknown key 'outptu'" in capsys.readouterr().err
    assert not (repo / "out").exists()


def test_missing_config_given_explicitly_is_an_error(repo, capsys):
    assert main(["mix", "--plan", "--config", "nope.yaml"]) == 1
    assert "nope.yaml:0:0: error: no such file" in capsys.readouterr().err


def test_usage_errors_exit_two(repo, capsys):
    assert main(["mix"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["mix", "--plan", "--total", "0"]) == 2
    assert main(["mix", "--plan", "--total", "many"]) == 2
    assert main(["mix", "--plan", "--format", "xml"]) == 2


def test_shipped_data_and_training_yaml_mix(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert main(["mix", "--plan", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sum(s["count"] for s in plan["slices"]) == plan["total"] > 0
    assert {s["name"] for s in plan["slices"]} >= {"greetings", "capitals"}


def test_mix_stays_light(repo):
    """oig mix must not import the training stack: the data-PR workflow does not install it."""
    code = ("import sys; from oig.cli import main; rc = main(['mix', '--out', 'out']);"
            f"print([m for m in {HEAVY!r} if m in sys.modules]); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (repo / "out" / "mixture.jsonl").exists()


def test_benchmark_smoke_through_the_command():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mix", ROOT / "benchmarks" / "bench_mix.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    [row] = bench.bench([20_000], repeat=1, stage="cli")
    assert row["size"] == 20_000 and 0 < row["wall_s"] < 60 and 0 < row["peak_rss_mb"] < 1000


def test_preference_pairs_go_beside_the_mixture_unweighted(repo, capsys, tmp_path):
    (repo / "data" / "prefs.yaml").write_text(
        "Preferences:\n  - prompt: hi\n    chosen: Hello!\n    rejected: go away\n"
        "  - link: fixtures/p.jsonl\n")
    (repo / "fixtures").mkdir()
    (repo / "fixtures" / "p.jsonl").write_text(
        json.dumps({"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "q"}],
                    "chosen": "good", "rejected": [{"role": "assistant", "content": "bad"}]}) + "\n")
    assert main(["mix", "--out", "out", "--allow-local-sources"]) == 0
    manifest = json.loads((repo / "out" / "manifest.json").read_text())
    assert "prefs" not in [s["name"] for s in manifest["slices"]]  # preference-only: not in the SFT mix
    lines = [json.loads(x) for x in (repo / "out" / "preferences.jsonl").read_text().splitlines()]
    assert lines == [
        {"slice": "prefs", "prompt": [{"role": "user", "content": "hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        {"slice": "prefs", "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "q"}],
         "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]},
    ]
    prefs = manifest["preferences"]
    assert prefs["total"] == 2 and prefs["slices"][0]["pins"][0]["pinned"] is False
    assert prefs["sha256"] == hashlib.sha256((repo / "out" / "preferences.jsonl").read_bytes()).hexdigest()


def test_bad_preference_rows_are_reported(repo, capsys):
    (repo / "fixtures").mkdir()
    (repo / "fixtures" / "p.jsonl").write_text('{"prompt": "q", "chosen": "same", "rejected": "same"}\n{"prompt": 3}\n')
    (repo / "data" / "prefs.yaml").write_text("Preferences:\n  - link: fixtures/p.jsonl\n")
    assert main(["mix", "--out", "out", "--allow-local-sources"]) == 1
    err = capsys.readouterr().err
    assert "chosen and rejected are the same answer" in err and "expected a preference pair" in err
    assert not (repo / "out" / "preferences.jsonl").exists()

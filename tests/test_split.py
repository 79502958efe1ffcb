"""The held-out split of ``oig mix`` (oig.data.split): per slice, on distinct examples, before upsampling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from oig.data.mix import mix
from oig.data.mixwriter import SliceFile
from oig.data.split import MIN_DISTINCT, hold_out


def pairs(prefix: str, n: int, repeat: int = 1) -> str:
    return "IOPairs:\n" + "".join(f"  - input: {prefix} question {i}\n    output: {prefix} answer {i}\n"
                                  for i in range(n) for _ in range(repeat))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def run(repo: Path, slices: dict[str, str], training: str = "", mixture: str = "", out: str = "out", seed=None):
    for name, text in slices.items():
        (repo / "data" / f"{name}.yaml").write_text(text)
    (repo / "training.yaml").write_text(f"Training:\n  seed: 42\n{training}" + (f"Mixture:\n{mixture}" if mixture else ""))
    result = mix(repo / "data", repo / "training.yaml", repo / out, seed=seed)
    rows = [json.loads(line) for line in (repo / out / "mixture.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (repo / out / "eval.jsonl").read_text().splitlines()]
    return result.manifest, rows, held


def held_counts(manifest: dict) -> dict[str, int]:
    return {s["name"]: s["held_out"] for s in manifest["eval"]["slices"]}


def test_a_one_example_slice_with_share_0_9_is_always_trained_on(repo):
    for seed in (0, 1, 2, 3, 7, 42):
        manifest, rows, held = run(repo, {"big": pairs("big", 100), "fix": pairs("fix", 1)},
                                   mixture="  fix: 0.9\n", out=f"out{seed}", seed=seed)
        # big holds out 10% of its 100 (the fix slice is under the minimum); 100 - 10 + 1 = 91 to train on.
        assert held_counts(manifest) == {"big": 10, "fix": 0}
        assert Counter(r["slice"] for r in rows) == {"fix": 82, "big": 9}  # 0.9 of 91 is 81.9
        assert {r["slice"] for r in held} == {"big"} and len(held) == 10
        (fix,) = [s for s in manifest["eval"]["slices"] if s["name"] == "fix"]
        assert fix["why"] == f"fewer than {MIN_DISTINCT} distinct examples"


def test_a_slice_below_the_minimum_stays_whole(repo):
    manifest, rows, held = run(repo, {"small": pairs("small", 9), "big": pairs("big", 20)}, "  eval_size: 0.2\n")
    assert held_counts(manifest) == {"big": 4, "small": 0}  # 0.2 of big's 20; small's 9 are all trained on
    assert Counter(r["slice"] for r in rows) == {"big": 16, "small": 9}
    assert len(held) == 4


def test_holdout_false_keeps_a_slice_whole(repo):
    manifest, rows, held = run(repo, {"kept": "holdout: false\n" + pairs("kept", 50), "big": pairs("big", 50)},
                               "  eval_size: 0.1\n")
    assert held_counts(manifest) == {"big": 5, "kept": 0}
    (kept,) = [s for s in manifest["eval"]["slices"] if s["name"] == "kept"]
    assert kept["why"] == "holdout: false"
    assert Counter(r["slice"] for r in rows) == {"big": 45, "kept": 50}
    assert {r["slice"] for r in held} == {"big"}


def test_eval_size_0_turns_the_split_off(repo):
    manifest, rows, held = run(repo, {"a": pairs("a", 100), "b": pairs("b", 40)}, "  eval_size: 0\n")
    assert held == [] and manifest["eval"]["total"] == 0 and manifest["eval"]["examples"] == []
    assert held_counts(manifest) == {"a": 0, "b": 0}
    assert Counter(r["slice"] for r in rows) == {"a": 100, "b": 40}


def test_a_fraction_is_of_each_slice(repo):
    slices = {"a": pairs("a", 100), "b": pairs("b", 10), "c": pairs("c", 40)}
    manifest, rows, held = run(repo, slices, "  eval_size: 0.2\n")
    assert held_counts(manifest) == {"a": 20, "b": 2, "c": 8}  # 30 = 0.2 x 150
    assert Counter(r["slice"] for r in rows) == {"a": 80, "b": 8, "c": 32}
    assert len(held) == 30


def test_the_default_is_a_tenth(repo):
    manifest, rows, held = run(repo, {"a": pairs("a", 100), "b": pairs("b", 10), "c": pairs("c", 40)})
    assert held_counts(manifest) == {"a": 10, "b": 1, "c": 4} and manifest["eval"]["eval_size"] is None
    assert len(rows) == 135 and len(held) == 15


@pytest.mark.parametrize("count, expected", [(15, {"a": 10, "b": 1, "c": 4}),
                                             # quotas 4.67, 0.47, 1.87: floors 4, 0, 1, then c and a get one more
                                             (7, {"a": 5, "b": 0, "c": 2})])
def test_a_count_is_shared_in_proportion_to_distinct_examples(repo, count, expected):
    slices = {"a": pairs("a", 100), "b": pairs("b", 10), "c": pairs("c", 40)}
    manifest, rows, held = run(repo, slices, f"  eval_size: {count}\n")
    assert held_counts(manifest) == expected and len(held) == count
    assert len(rows) == 150 - count


def test_a_count_above_half_is_capped_with_a_warning(repo):
    manifest, rows, held = run(repo, {"a": pairs("a", 30), "tiny": pairs("tiny", 3)}, "  eval_size: 100\n")
    assert held_counts(manifest) == {"a": 15, "tiny": 0} and len(rows) == 18
    assert any("asks for 100 held-out examples" in w and "15 are held out" in w for w in manifest["warnings"])


def test_the_manifest_lists_the_held_out_examples(repo):
    manifest, rows, held = run(repo, {"a": pairs("a", 20), "b": pairs("b", 10)}, "  eval_size: 3\n")
    listed = manifest["eval"]["examples"]
    assert len(listed) == 3 == manifest["eval"]["total"] and manifest["eval"]["file"] == "eval.jsonl"
    assert [e["slice"] for e in listed] == ["a", "a", "b"]  # quotas 2 and 1
    # Each entry names the example by slice and its IOPairs index; eval.jsonl has them in that order.
    for entry, record in zip(listed, held, strict=True):
        assert record["slice"] == entry["slice"]
        assert record["messages"][0]["content"] == f"{entry['slice']} question {entry['index']}"
    trained = {r["messages"][0]["content"] for r in rows}
    assert not trained & {r["messages"][0]["content"] for r in held}
    assert len(trained) == 27


def test_repeats_of_a_held_out_example_are_not_trained_on_and_count_once(repo):
    manifest, rows, held = run(repo, {"rep": pairs("rep", 10, repeat=3)}, "  eval_size: 2\n")
    (row,) = manifest["eval"]["slices"]
    assert (row["distinct"], row["held_out"]) == (10, 2) and len(held) == 2
    assert len(rows) == 24  # 30 lines less the 3 copies of each held-out example
    assert not {r["messages"][0]["content"] for r in rows} & {r["messages"][0]["content"] for r in held}


def test_an_example_in_two_slices_is_never_held_out(tmp_path):
    def write(name, lines):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(lines))
        return SliceFile(name, path, len(lines))

    line = '{{"messages":[{{"role":"user","content":"{0}"}},{{"role":"assistant","content":"ok"}}]}}\n'
    a = write("a", [line.format(f"q{i}") for i in range(10)])
    b = write("b", [line.format(f"q{i}") for i in range(9)] + [line.format("b only")])
    split = hold_out([a, b], 4, seed=42)
    assert split.held_out == {"a": 1, "b": 1}  # only q9 (in a) and "b only" (in b) are in one slice
    assert split.slices["a"].held_out == [9] and split.slices["b"].held_out == [9]
    assert any("slice 'a' holds out 1 examples, not 2" in w for w in split.warnings)


def test_adding_a_slice_keeps_what_the_others_hold_out(repo):
    one, _, _ = run(repo, {"a": pairs("a", 50)}, "  eval_size: 0.1\n", out="one")
    two, _, _ = run(repo, {"b": pairs("b", 30)}, "  eval_size: 0.1\n", out="two")
    assert [e for e in two["eval"]["examples"] if e["slice"] == "a"] == one["eval"]["examples"]
    again, _, _ = run(repo, {}, "  eval_size: 0.1\n", out="three")
    assert again["eval"]["examples"] == two["eval"]["examples"]  # the same seed, the same split

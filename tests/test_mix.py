"""The mixture: exact counts for the written meaning of weights, selection, order, files, table."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from oig.data.allocation import Allocation, allocate
from oig.data.mix import render_markdown, render_text
from oig.data.mixwriter import MANIFEST_FILE, MIXTURE_FILE, SliceFile, selection, slice_seed, write_mixture
from oig.errors import InvalidInput, OigError


def make_slice(tmp_path: Path, name: str, n: int, tag: str | None = None) -> SliceFile:
    """A materialized-like slice: n compact {"messages":[...]} lines, example i says "<tag> i"."""
    path = tmp_path / f"{name}.jsonl"
    tag = tag or name
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            record = {"messages": [{"role": "user", "content": f"{tag} {i}"},
                                   {"role": "assistant", "content": f"answer {i} ünï"}]}
            f.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return SliceFile(name, path, n, sha, [{"link": f"{name}.jsonl", "sha256": sha}])


def read_mixture(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MIXTURE_FILE).read_text(encoding="utf-8").splitlines()]


def mix_files(tmp_path, sizes: dict[str, int], weights=None, total=None, seed=42, out="out"):
    slices = [make_slice(tmp_path, n, k) for n, k in sizes.items()]
    allocation = allocate({s.name: s.count for s in slices}, weights, total)
    manifest = write_mixture(tmp_path / out, slices, allocation, seed, "training.yaml")
    return allocation, manifest


# --- allocate: the written meaning, with exact counts ---------------------------------------------


def test_documented_example_a_half_gives_75_15_60():
    alloc = allocate({"a": 100, "b": 10, "c": 40}, {"a": 0.5}, None)
    assert alloc.total == 150
    assert alloc.counts == {"a": 75, "b": 15, "c": 60}
    assert alloc.shares == {"a": 0.5, "b": 0.1, "c": 0.4}
    assert alloc.warnings == []
    assert [s.weight for s in alloc.slices] == [0.5, None, None]
    assert [s.epochs for s in alloc.slices] == [0.75, 1.5, 1.5]


def test_no_mixture_is_the_plain_union():
    alloc = allocate({"b": 10, "a": 100, "c": 40}, None, None)
    assert alloc.counts == {"a": 100, "b": 10, "c": 40}
    assert [s.name for s in alloc.slices] == ["a", "b", "c"]
    assert all(s.epochs == 1 for s in alloc.slices)


def test_empty_mixture_section_is_the_plain_union_too():
    assert allocate({"a": 3, "b": 7}, {}, None).counts == {"a": 3, "b": 7}


def test_total_scales_the_same_shares():
    alloc = allocate({"a": 100, "b": 10, "c": 40}, {"a": 0.5}, 300)
    assert alloc.counts == {"a": 150, "b": 30, "c": 120}
    assert allocate({"a": 100, "b": 10, "c": 40}, {"a": 0.5}, 30).counts == {"a": 15, "b": 3, "c": 12}


def test_weights_are_exact_decimals():
    # 0.7 + 0.3 is exactly 1 (no float drift leaving a sliver for the unlisted slice)
    alloc = allocate({"a": 100, "b": 100, "c": 100}, {"a": 0.7, "b": 0.3}, 1000)
    assert alloc.counts == {"a": 700, "b": 300, "c": 0}
    assert alloc.warnings == ["slice 'c' gets no share of the mixture (the listed weights already take the whole mixture)"]


def test_weights_above_one_are_normalised_with_a_warning():
    alloc = allocate({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 3}, 100)
    assert alloc.counts == {"a": 25, "b": 75, "c": 0}
    assert alloc.warnings[0].startswith("Mixture weights add up to 4, more than 1")
    assert any("slice 'c' gets no share" in w for w in alloc.warnings)


def test_all_listed_below_one_are_scaled_up_with_a_warning():
    alloc = allocate({"a": 10, "b": 10}, {"a": 0.2, "b": 0.2}, 10)
    assert alloc.counts == {"a": 5, "b": 5}
    assert "scaled to add up to 1" in alloc.warnings[0]


def test_zero_weight_is_a_warning_not_an_error():
    alloc = allocate({"a": 10, "b": 10}, {"a": 0}, None)
    assert alloc.counts == {"a": 0, "b": 20}
    assert alloc.warnings == ["slice 'a' gets no share of the mixture (its weight is 0)"]


def test_share_too_small_for_one_example_warns():
    alloc = allocate({"a": 1000, "b": 1}, None, 10)
    assert alloc.counts == {"a": 10, "b": 0}
    assert "slice 'b' has a share of 0.0999%" in alloc.warnings[0]


def test_unknown_slice_is_an_error_naming_the_nearest():
    with pytest.raises(InvalidInput) as exc:
        allocate({"greetings": 5, "capitals": 5}, {"greetigns": 0.5, "zzz": 0.1}, None, where="training.yaml")
    messages = [p.message for p in exc.value.problems]
    assert messages[0] == "Mixture names slice 'greetigns', which does not exist; did you mean 'greetings'?"
    assert messages[1] == "Mixture names slice 'zzz', which does not exist (slices: capitals, greetings)"
    assert exc.value.problems[0].file == "training.yaml"


@pytest.mark.parametrize("weights,total,message", [
    ({"a": -0.1}, None, "must be a number >= 0"),
    ({"a": float("nan")}, None, "must be a number >= 0"),
    ({"a": True}, None, "must be a number >= 0"),
    ({"e": 0.5}, None, "slice 'e' has weight 0.5 but no examples"),
    ({"a": 0, "e": 0}, None, "every Mixture weight is 0"),
    (None, 0, "total must be a whole number >= 1"),
    (None, 2.5, "total must be a whole number >= 1"),
])
def test_bad_weights_and_totals_are_errors(weights, total, message):
    with pytest.raises(InvalidInput) as exc:
        allocate({"a": 5, "e": 0}, weights, total)
    assert message in exc.value.problems[0].message


def test_empty_unlisted_slice_beside_weights_adding_to_one():
    alloc = allocate({"a": 5, "e": 0}, {"a": 1}, None)
    assert alloc.counts == {"a": 5, "e": 0} and alloc.warnings == ["slice 'e' has no examples"]


def test_no_slices_and_empty_slices():
    with pytest.raises(InvalidInput, match="error"):
        allocate({}, None, None)
    empty = allocate({"a": 0}, None, None)
    assert empty.total == 0 and empty.counts == {"a": 0} and empty.warnings
    with pytest.raises(InvalidInput):
        allocate({"a": 0}, None, 5)


def test_counts_add_up_with_largest_remainder_ties_by_name():
    # three equal slices, total 10: quotas 3.33 each; the one leftover goes to the name sorting first
    alloc = allocate({"c": 1, "b": 1, "a": 1}, None, 10)
    assert alloc.counts == {"a": 4, "b": 3, "c": 3}
    # largest fractional part wins before names: 2/7 -> 2.857 -> 3, 5/7 -> 7.14 -> 7
    assert allocate({"x": 2, "y": 5}, None, 10).counts == {"x": 3, "y": 7}


def test_counts_always_add_up_to_the_total():
    rng = random.Random(7)
    for _ in range(300):
        names = [f"s{i}" for i in range(rng.randint(1, 8))]
        available = {n: rng.choice([0, rng.randint(1, 500), rng.randint(1, 500)]) for n in names}
        listed = rng.sample(names, rng.randint(0, len(names)))
        weights = {n: round(rng.random() * 0.6, rng.randint(1, 3)) for n in listed} if rng.random() < 0.8 else None
        total = rng.choice([None, rng.randint(1, 5000)])
        try:
            alloc = allocate(available, weights, total)
        except InvalidInput:
            continue  # e.g. a weight on an empty slice: a reported error
        assert sum(alloc.counts.values()) == alloc.total == (total or sum(available.values()))
        assert all(alloc.counts[n] == 0 for n in names if available[n] == 0)
        if alloc.total:
            assert abs(sum(alloc.shares.values()) - 1) < 1e-9


# --- selection ----------------------------------------------------------------------------------------


def test_repetition_uses_every_example_before_any_again():
    picks = list(selection(10, 25, random.Random(1)))
    assert len(picks) == 25
    assert sorted(picks[:10]) == list(range(10)) and sorted(picks[10:20]) == list(range(10))
    assert len(set(picks[20:])) == 5
    assert picks[:10] != picks[10:20]  # each pass is shuffled afresh


def test_smaller_share_samples_without_replacement():
    picks = list(selection(1000, 100, random.Random(1)))
    assert len(set(picks)) == 100 and all(0 <= i < 1000 for i in picks)


@pytest.mark.parametrize("n,k", [(10, 3), (10, 25), (100, 100), (5000, 7), (100_000, 40), (3000, 2000), (1, 1),
                                 (50, 0), (7, 6)])
def test_selection_draws_what_shuffle_and_sample_draw(n, k):
    # The same picks as the lists of ints it replaces: a mixture made before is made again byte for byte.
    rng = random.Random(n * 31 + k)
    passes, rest = divmod(k, n)
    expected = []
    for _ in range(passes):
        order = list(range(n))
        rng.shuffle(order)
        expected += order
    expected += rng.sample(range(n), rest)
    assert list(selection(n, k, random.Random(n * 31 + k))) == expected


def test_slice_seed_is_stable():
    assert slice_seed(42, "a") == slice_seed(42, "a")
    assert slice_seed(42, "a") != slice_seed(42, "b") != slice_seed(43, "b")
    assert slice_seed(42, "a") == int.from_bytes(hashlib.sha256(b"42\0a").digest()[:8], "big")


# --- writing -------------------------------------------------------------------------------------------


def test_writes_the_documented_example(tmp_path):
    alloc, manifest = mix_files(tmp_path, {"a": 100, "b": 10, "c": 40}, {"a": 0.5})
    rows = read_mixture(tmp_path / "out")
    assert Counter(r["slice"] for r in rows) == {"a": 75, "b": 15, "c": 60}
    assert list(rows[0]) == ["slice", "messages"]
    # a: 75 of 100 distinct; b: 15 of 10, so every b example once, 5 of them twice
    a = Counter(r["messages"][0]["content"] for r in rows if r["slice"] == "a")
    assert len(a) == 75 and set(a.values()) == {1}
    b = Counter(r["messages"][0]["content"] for r in rows if r["slice"] == "b")
    assert len(b) == 10 and sorted(b.values()) == [1] * 5 + [2] * 5
    assert rows[0]["messages"][1]["content"].endswith("ünï")

    data = (tmp_path / "out" / MIXTURE_FILE).read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["total"] == 150 and manifest["seed"] == 42 and manifest["config"] == "training.yaml"
    assert manifest["mixture"] == MIXTURE_FILE
    on_disk = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    a_row = on_disk["slices"][0]
    assert a_row["name"] == "a" and a_row["available"] == 100 and a_row["weight"] == 0.5
    assert a_row["share"] == 0.5 and a_row["count"] == 75 and a_row["epochs"] == 0.75
    assert a_row["sha256"] == hashlib.sha256((tmp_path / "a.jsonl").read_bytes()).hexdigest()
    assert a_row["pins"] == [{"link": "a.jsonl", "sha256": a_row["sha256"]}]
    assert on_disk["slices"][1]["weight"] is None and on_disk["slices"][1]["epochs"] == 1.5
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_FILE, MIXTURE_FILE]  # no temp files left


def test_output_lines_are_compact_and_spliced_exactly(tmp_path):
    s = make_slice(tmp_path, "only", 3)
    write_mixture(tmp_path / "out", [s], allocate({"only": 3}, None, None), 1)
    source = set(s.path.read_text(encoding="utf-8").splitlines())
    for line in (tmp_path / "out" / MIXTURE_FILE).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert line == json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        assert json.dumps({"messages": record["messages"]}, separators=(",", ":"), ensure_ascii=False) in source


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    mix_files(tmp_path, {"a": 50, "b": 7}, {"b": 0.4}, 200, seed=3, out="one")
    mix_files(tmp_path, {"a": 50, "b": 7}, {"b": 0.4}, 200, seed=3, out="two")
    mix_files(tmp_path, {"a": 50, "b": 7}, {"b": 0.4}, 200, seed=4, out="three")
    one = (tmp_path / "one" / MIXTURE_FILE).read_bytes()
    assert one == (tmp_path / "two" / MIXTURE_FILE).read_bytes()
    assert one != (tmp_path / "three" / MIXTURE_FILE).read_bytes()
    assert (tmp_path / "one" / MANIFEST_FILE).read_bytes() == (tmp_path / "two" / MANIFEST_FILE).read_bytes()


def test_adding_a_slice_does_not_reshuffle_the_others(tmp_path):
    a, b, c = (make_slice(tmp_path, n, 40) for n in "abc")
    weights = {"a": 0.5, "b": 0.5}
    first = allocate({"a": 40, "b": 40}, weights, 60)
    second = allocate({"a": 40, "b": 40, "c": 40}, weights, 60)
    write_mixture(tmp_path / "one", [a, b], first, 9)
    write_mixture(tmp_path / "two", [a, b, c], second, 9)
    for name in "ab":
        before = [r["messages"] for r in read_mixture(tmp_path / "one") if r["slice"] == name]
        after = [r["messages"] for r in read_mixture(tmp_path / "two") if r["slice"] == name]
        assert before == after


def test_every_prefix_is_representative(tmp_path):
    mix_files(tmp_path, {"big": 600, "mid": 300, "small": 100})
    rows = [r["slice"] for r in read_mixture(tmp_path / "out")]
    for end in (10, 37, 100, 555, 1000):
        seen = Counter(rows[:end])
        for name, share in (("big", 0.6), ("mid", 0.3), ("small", 0.1)):
            assert abs(seen[name] - share * end) <= 1, (end, name, seen)


def test_within_a_slice_the_order_is_shuffled(tmp_path):
    mix_files(tmp_path, {"a": 200})
    contents = [int(r["messages"][0]["content"].split()[1]) for r in read_mixture(tmp_path / "out")]
    assert sorted(contents) == list(range(200)) and contents != list(range(200))


def test_slice_with_no_count_is_skipped_and_last_line_without_newline_is_fine(tmp_path):
    s = make_slice(tmp_path, "a", 4)
    s.path.write_bytes(s.path.read_bytes().rstrip(b"\n"))
    z = make_slice(tmp_path, "z", 5)
    alloc = allocate({"a": 4, "z": 5}, {"a": 1}, 12)
    write_mixture(tmp_path / "out", [SliceFile("a", s.path, 4), z], alloc, 0)
    rows = read_mixture(tmp_path / "out")
    assert len(rows) == 12 and {r["slice"] for r in rows} == {"a"}
    assert (tmp_path / "out" / MIXTURE_FILE).read_bytes().endswith(b"}\n")


@pytest.mark.parametrize("content,count,message", [
    (b'{"messages":[]}\n{"oops":1}\n', 2, "line must be one compact"),
    (b'{"messages":[]}\n\n', 2, "line must be one compact"),
    (b'{ "messages": [] }\n', 1, "line must be one compact"),
    (b'{"messages":[]}\n', 2, "should have 2 examples but its file has 1 lines"),
])
def test_malformed_materialized_files_are_clear_errors(tmp_path, content, count, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as exc:
        write_mixture(tmp_path / "out", [SliceFile("bad", path, count)], allocate({"bad": count}, None, None), 1)
    assert message in exc.value.problems[0].message
    assert not (tmp_path / "out" / MIXTURE_FILE).exists()


def test_checksum_mismatch_and_missing_file_are_errors(tmp_path):
    s = make_slice(tmp_path, "a", 3)
    alloc = allocate({"a": 3}, None, None)
    with pytest.raises(InvalidInput, match="error") as exc:
        write_mixture(tmp_path / "out", [SliceFile("a", s.path, 3, "0" * 64)], alloc, 1)
    assert "changed after it was materialized" in exc.value.problems[0].message
    with pytest.raises(InvalidInput) as exc:
        write_mixture(tmp_path / "out", [SliceFile("a", tmp_path / "gone.jsonl", 3)], alloc, 1)
    assert "cannot read slice 'a'" in exc.value.problems[0].message


def test_unwritable_output_is_a_clear_error(tmp_path):
    s = make_slice(tmp_path, "a", 3)
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(OigError, match="cannot write the mixture to"):
        write_mixture(tmp_path / "taken", [s], allocate({"a": 3}, None, None), 1)


def test_slice_shrinking_while_mixing_is_an_error(tmp_path, monkeypatch):
    import oig.data.mixwriter

    s = make_slice(tmp_path, "a", 50)
    real_index = oig.data.mixwriter._index

    def index_then_truncate(data):
        found = real_index(data)
        data.path.write_bytes(data.path.read_bytes()[:100])
        return found

    monkeypatch.setattr(oig.data.mixwriter, "_index", index_then_truncate)
    with pytest.raises(InvalidInput) as exc:
        write_mixture(tmp_path / "out", [s], allocate({"a": 50}, None, None), 1)
    assert "changed while it was being mixed" in exc.value.problems[0].message
    assert not (tmp_path / "out" / MIXTURE_FILE).exists()
    assert os.listdir(tmp_path / "out") == []


def test_rewrite_replaces_atomically(tmp_path):
    mix_files(tmp_path, {"a": 5}, total=5)
    first = (tmp_path / "out" / MIXTURE_FILE).read_bytes()
    mix_files(tmp_path, {"a": 5}, total=20)
    assert len((tmp_path / "out" / MIXTURE_FILE).read_bytes()) > len(first)
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_FILE, MIXTURE_FILE]


def test_memory_stays_bounded_by_indexes_not_records(tmp_path):
    # 60k examples of ~700 bytes is ~40 MB of text; the writer may keep offsets and one pass's order
    # per slice (8 bytes an example each, ~1 MB here) and a 1 MB write buffer, never the records.
    slices = [make_slice(tmp_path, f"s{i}", 6000, tag="x" * 600) for i in range(10)]
    alloc = allocate({s.name: s.count for s in slices}, None, None)
    tracemalloc.start()
    try:
        write_mixture(tmp_path / "out", slices, alloc, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = (tmp_path / "out" / MIXTURE_FILE).stat().st_size
    assert size > 40_000_000
    assert peak < 6_000_000, peak


# --- the table ----------------------------------------------------------------------------------------


def test_text_table():
    text = render_text(allocate({"a": 90, "b": 9, "c": 36}, {"a": 0.5}, 150, held_out={"a": 10, "b": 1, "c": 4}))
    assert text.splitlines() == [
        "slice  available  eval  weight   share  count  epochs",
        "a             90    10     0.5   50.0%     75    0.83",
        "b              9     1       -   10.0%     15    1.67",
        "c             36     4       -   40.0%     60    1.67",
        "total        135    15          100.0%    150    1.11",
    ]


def test_markdown_table():
    alloc = allocate({"a": 1000, "b|c": 10}, {"a": 2}, 2000)
    md = render_markdown(alloc)
    lines = md.splitlines()
    assert lines[0] == "### oig mix: 2,000 examples"
    assert lines[2] == "| slice | available | eval | weight | share | count | epochs |"
    assert lines[3] == "|:---|---:|---:|---:|---:|---:|---:|"
    assert lines[4] == "| a | 1,000 | 0 | 2 | 100.0% | 2,000 | 2.00 |"
    assert lines[5] == "| b\\|c | 10 | 0 | - | 0.0% | 0 | 0.00 |"
    assert lines[6] == "| **total** | **1,010** | **0** |  | **100.0%** | **2,000** | **1.98** |"
    assert "- ⚠️ Mixture weights add up to 2, more than 1" in md


def test_empty_allocation_renders():
    alloc = Allocation(0, [], ["no slice has any examples: the mixture is empty"])
    assert "total" in render_text(alloc) and "0 examples" in render_markdown(alloc)


# --- the benchmark, small ------------------------------------------------------------------------------


def load_bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mix.py"
    spec = importlib.util.spec_from_file_location("bench_mix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_writer():
    bench = load_bench()
    [row] = bench.bench([20_000], repeat=1, stage="writer")
    assert row["size"] == 20_000 and row["ratio"] == 1.0
    assert 0 < row["wall_s"] < 30 and 0 < row["peak_rss_mb"] < 500
    assert "20,000" in bench.report([row], "writer", 1)


def test_benchmark_smoke_against_datasets(tmp_path):
    pytest.importorskip("datasets", reason="the peer needs the train extra's `datasets`")
    bench = load_bench()
    [row] = bench.compare([2_000], repeat=1, inputs=tmp_path)  # both jobs, cold caches, in children
    assert row["size"] == 2_000 and row["oig"]["runs"] and row["datasets"]["runs"]
    assert row["ratio"] == row["oig"]["wall_s"] / row["datasets"]["wall_s"] > 0
    assert 0 < row["oig"]["peak_rss_mb"] < 1000 and 0 < row["datasets"]["peak_rss_mb"] < 4000
    assert "2,000" in bench.report_compare([row], 1)
    assert (tmp_path / "n2000" / "complete").read_text() == "2000"  # kept for the next run, and reused
    made = (tmp_path / "n2000" / "raw" / "s0.jsonl").stat().st_mtime_ns
    assert bench.make_repo(tmp_path / "n2000", 2_000) == tmp_path / "n2000"
    assert (tmp_path / "n2000" / "raw" / "s0.jsonl").stat().st_mtime_ns == made


def test_benchmark_smoke_one_large_source(tmp_path):
    row = load_bench().one_source(5_000, 1_200, tmp_path)
    assert row["rows"] == 5_000 and row["total"] == 1_200 and 0 < row["wall_s"] < 60
    assert 0 < row["peak_rss_mb"] < 1000 and row["bytes_per_row"] == row["peak_rss_mb"] * 1024 * 1024 / 5_000


def test_the_total_is_bounded_by_the_data_available():
    assert allocate({"a": 10, "b": 20}, None, 300).counts == {"a": 100, "b": 200}  # 10x: still fine
    with pytest.raises(InvalidInput) as exc:
        allocate({"a": 10, "b": 20}, None, 301)
    [problem] = exc.value.problems
    assert "more than 10x the 30 examples available (at most 300; never above 10,000,000)" in problem.message


def test_skipped_bad_rows_are_counted_in_the_manifest(tmp_path, monkeypatch, local_server):
    from oig.cli import main

    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}
    body = "".join(json.dumps(r) + "\n" for r in [row] * 20 + [bad] + [row] * 4).encode()
    srv = local_server({"/chat.jsonl": body})
    (tmp_path / "data").mkdir()
    slice_file = tmp_path / "data" / "chat.yaml"
    slice_file.write_text(f"OpenAIJsonl:\n  - link: {srv.url}/chat.jsonl\n    on_bad_rows: skip\n    max_bad_rows: 1\n")
    (tmp_path / "training.yaml").write_text("Training:\n  eval_size: 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["mix", "--out", "out", "--allow-local-sources"]) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    [chat] = manifest["slices"]
    assert chat["count"] == 24 and chat["pins"][0]["rows"] == 25 and chat["pins"][0]["bad_rows"] == 1
    slice_file.write_text(f"OpenAIJsonl:\n  - link: {srv.url}/chat.jsonl\n    on_bad_rows: skip\n    max_bad_rows: 0\n")
    assert main(["mix", "--out", "out2", "--allow-local-sources"]) == 1
    assert not (tmp_path / "out2" / MANIFEST_FILE).exists()

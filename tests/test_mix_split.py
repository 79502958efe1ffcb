"""The held-out split that `oig mix` makes, against a plain reference: lines as dict keys, as it once was."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest

from oig.data.mixwriter import SliceFile
from oig.data.split import MIN_DISTINCT, _target, hold_out, slice_seed


def _reference(slices, eval_size, seed, whole=()) -> dict:
    """The split's rules written plainly (dicts and Counters of the lines themselves)."""
    keys = {s.name: [line.rstrip(b"\n") for line in s.path.open("rb")] for s in slices}
    found_in = Counter(k for ks in keys.values() for k in set(ks))
    distinct = {n: len(set(ks)) for n, ks in keys.items()}
    eligible = sorted(n for n in keys if n not in whole and distinct[n] >= MIN_DISTINCT)
    spare = sum(distinct[n] for n in eligible)
    total = min(_target(eval_size, spare, "training.yaml"), spare // 2)
    quotas = {n: Fraction(total * distinct[n], spare) for n in eligible}
    counts = {n: int(q) for n, q in quotas.items()}
    for n in sorted(eligible, key=lambda n: (-(quotas[n] - counts[n]), n))[:total - sum(counts.values())]:
        counts[n] += 1
    out = {}
    for n, ks in keys.items():
        if n not in counts:
            out[n] = (distinct[n], [], None)
            continue
        first: dict[bytes, int] = {}
        for i, k in enumerate(ks):
            first.setdefault(k, i)
        candidates = [k for k in first if found_in[k] == 1]
        held = set(random.Random(slice_seed(seed, f"eval\0{n}")).sample(candidates, min(counts[n], len(candidates))))
        keep = [i for i, k in enumerate(ks) if k not in held] if held else None
        out[n] = (distinct[n], sorted(first[k] for k in held), keep)
    return out


@pytest.mark.parametrize("trial", range(12))
def test_the_split_holds_out_what_the_plain_rules_say(tmp_path, trial):
    rng = random.Random(trial)
    slices = []
    for s in range(rng.randint(1, 4)):
        n, pool = rng.choice([0, 5, 60, 400]), rng.randint(1, 300)  # repeats within and across slices
        lines = [f'{{"messages":[{{"role":"user","content":"x{rng.randrange(pool)} ü"}}]}}' for _ in range(n)]
        path = tmp_path / f"s{s}.jsonl"
        path.write_text("\n".join(lines) + ("\n" if lines and rng.random() < 0.8 else ""), encoding="utf-8")
        slices.append(SliceFile(f"s{s}", path, n))
    eval_size = rng.choice([None, 0.1, 0.3, 5, 50])
    whole = {"s1"} if rng.random() < 0.3 else set()
    split = hold_out(slices, eval_size, trial, whole)
    got = {n: (s.distinct, s.held_out, None if s.keep is None else list(s.keep)) for n, s in split.slices.items()}
    assert got == _reference(slices, eval_size, trial, whole)


@pytest.mark.parametrize("trial", range(6))
def test_the_split_in_many_buckets_on_disk_holds_out_the_same(tmp_path, trial, monkeypatch):
    """Slices larger than a bucket go through scratch files a bucket at a time: the same examples."""
    from oig.data import distinct

    rng = random.Random(100 + trial)
    slices = []
    for s in range(rng.randint(1, 4)):
        n, pool = rng.choice([0, 60, 400, 900]), rng.randint(1, 500)
        lines = [f'{{"messages":[{{"role":"user","content":"x{rng.randrange(pool)}"}}]}}' for _ in range(n)]
        path = tmp_path / f"s{s}.jsonl"
        path.write_text("\n".join(lines) + ("\n" if lines and rng.random() < 0.8 else ""), encoding="utf-8")
        slices.append(SliceFile(f"s{s}", path, n))
    eval_size = rng.choice([None, 0.1, 0.3, 5, 50])
    monkeypatch.setattr(distinct, "BUCKET_LINES", rng.choice([7, 50, 200]))
    monkeypatch.setattr(distinct, "_BLOCK_LINES", 33)
    monkeypatch.setattr(distinct, "_BITS_CHUNK", 64)
    split = hold_out(slices, eval_size, trial)
    got = {n: (s.distinct, s.held_out, None if s.keep is None else list(s.keep)) for n, s in split.slices.items()}
    assert got == _reference(slices, eval_size, trial)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".oig-split-")]  # the scratch files are gone


def test_kept_lines_read_like_a_list():
    import numpy as np

    from oig.data.distinct import Kept

    dropped = [0, 3, 4, 9]
    kept = Kept(10, np.array(dropped))
    plain = [i for i in range(10) if i not in dropped]
    assert len(kept) == len(plain) and list(kept) == plain and kept[-1] == plain[-1] and kept[1:4] == plain[1:4]
    assert kept.take(np.array([5, 0, 2])).tolist() == [plain[5], plain[0], plain[2]]
    with pytest.raises(IndexError):
        kept[len(plain)]


class _Subclassed(random.Random):
    """A Random whose draws the fast paths must not assume (they fall back to its own methods)."""


@pytest.mark.parametrize("n,k", [(10, 3), (10, 10), (1, 1), (5, 0), (1024, 1000), (1025, 513), (3000, 2000),
                                 (100_000, 40), (1_000_000, 5000), (2**31 + 5, 50), (2**32 - 1, 9), (2**33 + 1, 7)])
@pytest.mark.parametrize("kind", [random.Random, _Subclassed])
def test_sample_indices_draws_what_sample_draws(n, k, kind):
    from oig.data.split import sample_indices

    assert list(sample_indices(n, k, kind(n + k))) == kind(n + k).sample(range(n), k)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 64, 65, 1000, 4097])
@pytest.mark.parametrize("kind", [random.Random, _Subclassed])
def test_shuffled_swaps_what_shuffle_swaps(n, kind):
    from oig.data.split import shuffled

    rng, expected = kind(n), list(range(n))
    kind(n).shuffle(expected)
    got = shuffled(n, rng)
    assert list(got) == expected
    if kind is random.Random:  # the same draws made: the stream goes on as it would after shuffle
        after = kind(n)
        after.shuffle(list(range(n)))
        assert rng.random() == after.random()


@pytest.mark.parametrize("trial", range(8))
def test_indexing_only_the_drawn_lines_writes_the_same_files(tmp_path, trial, monkeypatch):
    """A slice drawn from sparsely has only its drawn and held-out lines indexed: the same bytes out."""
    from oig.data import mixwriter
    from oig.data.allocation import allocate

    rng = random.Random(200 + trial)
    slices = []
    for s in range(rng.randint(1, 3)):
        n = rng.choice([1, 40, 300])
        lines = [f'{{"messages":[{{"role":"user","content":"q{rng.randrange(n * 2)}"}},'
                 f'{{"role":"assistant","content":"a{s}"}}]}}' for _ in range(n)]
        path = tmp_path / f"s{s}.jsonl"
        path.write_text("\n".join(lines) + ("\n" if rng.random() < 0.5 else ""), encoding="utf-8")
        slices.append(SliceFile(f"s{s}", path, n))
    split = hold_out(slices, rng.choice([0, None, 0.2]), trial)
    allocation = allocate(split.train_counts(), None, rng.choice([5, 30, 700]), held_out=split.held_out)
    written = []
    for sparse in (10**9, 0):  # every slice indexed whole, then every one by its drawn lines
        monkeypatch.setattr(mixwriter, "_SPARSE", sparse)
        out = tmp_path / f"out{sparse}"
        manifest = mixwriter.write_mixture(out, slices, allocation, trial, split=split)
        written.append((manifest, (out / "mixture.jsonl").read_bytes(), (out / "eval.jsonl").read_bytes()))
    assert written[0] == written[1]
    assert written[0][1].count(b"\n") == allocation.total

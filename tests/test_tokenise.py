"""The mixture tokenised once (oig.train.tokenise): datasets.map with worker processes, cached by content."""

from __future__ import annotations

import contextlib
import re

import pytest

from oig.train import masking, tiny, tokenise

PAIRS = [(f"What is the code word {i}?", f"The code word {i} is {i * 7}.") for i in range(30)]
RECORDS = [{"slice": "codes", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
           for q, a in PAIRS]
MULTI = {"slice": "chat", "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Go away.", "weight": 0},
    {"role": "user", "content": "Hi again"},
    {"role": "assistant", "content": "Hello! How can I help?"},
]}
SILENT = {"slice": "quiet", "messages": [{"role": "user", "content": "x"},
                                         {"role": "assistant", "content": "y", "weight": 0}]}
MIXED = [*RECORDS[:10], MULTI, SILENT, *RECORDS[10:], MULTI, SILENT]


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(tiny.texts_of(MIXED))


@pytest.fixture
def counted(monkeypatch):
    """How many records were encoded (in this process: num_proc 1)."""
    calls = []
    real = tokenise.encode_many

    def encode_many(records, *args, **kwargs):
        calls.append(len(records))
        return real(records, *args, **kwargs)

    monkeypatch.setattr(tokenise, "encode_many", encode_many)
    return calls


def rows(ds) -> list[tuple[list[int], list[int]]]:
    return list(zip(ds["input_ids"], ds["labels"], strict=True))


@pytest.mark.parametrize("num_proc", [1, 2])
def test_the_same_rows_as_one_record_at_a_time(tok, num_proc):
    before, dropped = masking.to_dataset(MIXED, tok, tok.chat_template)
    after, dropped_after = tokenise.tokenise(MIXED, tok, tok.chat_template, num_proc=num_proc)
    assert (dropped, dropped_after) == (2, 2)
    assert rows(after) == rows(before) and after.column_names == ["input_ids", "labels"]
    full, _ = masking.to_dataset(MIXED, tok, tok.chat_template, assistant_only=False)
    assert rows(tokenise.tokenise(MIXED, tok, tok.chat_template, False, num_proc=num_proc)[0]) == rows(full)


def test_a_template_without_markers_goes_record_by_record(tok):
    plain = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tiny.CHATML_TEMPLATE)
    assert not masking.has_markers(plain)
    assert rows(tokenise.tokenise(MIXED, tok, plain)[0]) == rows(masking.to_dataset(MIXED, tok, plain)[0])


def test_nothing_to_learn_and_nothing_at_all(tok, tmp_path):
    assert tokenise.tokenise([SILENT], tok, tok.chat_template) == (None, 1)
    assert tokenise.tokenise([], tok, tok.chat_template) == (None, 0)
    assert tokenise.tokenise([SILENT], tok, tok.chat_template, cache_dir=tmp_path) == (None, 1)
    assert tokenise.tokenise([SILENT], tok, tok.chat_template, cache_dir=tmp_path) == (None, 1)  # from the cache


def test_a_refused_conversation_is_named_by_its_number(tok):
    refuses_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                      "{% endif %}" + tiny.CHATML_TEMPLATE)
    with pytest.raises(masking.MaskingError, match="refused conversation 11 of the mixture: System role not "
                       "supported \\(slice 'chat'\\)"):
        tokenise.tokenise(MIXED, tok, refuses_system)


def test_a_second_call_loads_the_cache_and_encodes_nothing(tok, tmp_path, counted):
    first, dropped = tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path)
    assert sum(counted) == len(MIXED)
    [folder] = tmp_path.iterdir()
    second, dropped_again = tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path)
    assert sum(counted) == len(MIXED)  # nothing encoded again
    assert rows(second) == rows(first) and dropped_again == dropped == 2
    assert [p for p in tmp_path.iterdir()] == [folder]
    # Anything the rows depend on is part of the key: each change is a new entry, encoded afresh.
    changed = [MIXED[:-1], MIXED[::-1]]
    for records in changed:
        tokenise.tokenise(records, tok, tok.chat_template, cache_dir=tmp_path)
    tokenise.tokenise(MIXED, tok, tok.chat_template, False, cache_dir=tmp_path)
    tokenise.tokenise(MIXED, tok, tok.chat_template + " ", cache_dir=tmp_path)
    other = tiny.build_tokenizer(tiny.texts_of(RECORDS))
    tokenise.tokenise(MIXED, other, tok.chat_template, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 6 and sum(counted) == len(MIXED) * 5 + len(MIXED) - 1


class FakeState:
    """accelerate's PartialState as one process of a run sees it: local_main_process_first runs the main
    process's block before the others'."""

    def __init__(self, main: bool):
        self.is_local_main_process = main

    @contextlib.contextmanager
    def local_main_process_first(self):
        yield


def test_the_other_processes_load_what_the_main_one_tokenised(tok, tmp_path, counted):
    main, _ = tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path, state=FakeState(True))
    encoded = sum(counted)
    for _ in range(3):  # three more GPU processes
        other, dropped = tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path, state=FakeState(False))
        assert rows(other) == rows(main) and dropped == 2
    assert sum(counted) == encoded == len(MIXED)


def test_a_cache_folder_without_its_counts_is_not_used(tok, tmp_path, counted):
    tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path)
    [folder] = tmp_path.iterdir()
    (folder / tokenise.DONE).unlink()  # as if the main process had died while saving
    ds, _ = tokenise.tokenise(MIXED, tok, tok.chat_template, cache_dir=tmp_path)
    assert sum(counted) == 2 * len(MIXED) and (folder / tokenise.DONE).is_file() and len(ds) == len(MIXED) - 2


def test_worker_processes():
    assert tokenise.worker_count(3, 10) == 3  # training.yaml's dataset_num_proc, as set
    assert tokenise.worker_count(None, 100) == 1  # small: starting workers costs more than it saves
    assert 1 <= tokenise.worker_count(None, 1_000_000) <= tokenise.MAX_AUTO_PROC


"""The engine's decode loop (oig.serve.decode): a request that arrives while others generate joins them
at the next step and answers exactly as it would alone; rows that end leave and the cache columns
nobody needs are cut; a cache that cannot be joined makes new requests wait for the batch to end."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "tell me a long story about two lines of hello world, " * 3}]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """An untrained tiny model: with its end token biased away it talks until max_tokens."""
    from oig.serve.inference import LocalModel
    from oig.train.tiny import build_tiny

    folder = tmp_path_factory.mktemp("decode") / "model"
    build_tiny(["hello world", "two\nlines", "tell me a long story about"], folder, seed=1)
    return LocalModel.load(folder, name="decode")


def job(lm, messages, max_new: int):
    """A greedy job kept from ending before ``max_new`` tokens."""
    from oig.serve.engine import Job

    return Job(lm.encode(messages), max_new, lm.sampling(temperature=0), logit_bias={lm.tokenizer.eos_token_id: -100.0})


def wait(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def alone(lm, make) -> list[int]:
    one = make()
    lm.engine.submit(one)
    wait(lambda: one.ended)
    return one.generated


@pytest.mark.parametrize("first, second", [(SHORT, LONG), (LONG, SHORT)], ids=["long joins short", "short joins long"])
def test_a_request_that_arrives_midway_joins_and_answers_as_it_would_alone(lm, first, second):
    from oig.serve.engine import Job

    makers = [lambda: job(lm, first, 60), lambda: job(lm, second, 30),
              lambda: Job(lm.encode(second), 30, lm.sampling(temperature=1.5), seed=7)]
    solo = [alone(lm, make) for make in makers]
    assert [len(s) for s in solo[:2]] == [60, 30]
    engine = lm.engine
    batches, steps = engine.batches, engine.steps
    running = makers[0]()
    engine.submit(running)
    wait(lambda: len(running.generated) >= 10)
    joined = [make() for make in makers[1:]]
    for j in joined:
        engine.submit(j)
    wait(lambda: running.ended and all(j.ended for j in joined))
    assert [running.generated, *(j.generated for j in joined)] == solo
    assert engine.batches - batches in (2, 3)  # the first alone, then the others (together or one by one)
    assert engine.steps - steps < 60 + 30 + 30  # the joined rows shared the running one's steps


def test_rows_that_end_leave_and_the_columns_nobody_needs_are_cut(lm):
    import torch

    from oig.serve.decode import Rows, Sampler
    from oig.serve.engine import end_tokens

    rows = Rows(lm.model, Sampler(lm.model.config.vocab_size), end_tokens(lm.model, lm.tokenizer),
                lm.tokenizer.pad_token_id)
    assert rows.sdpa  # decode steps hand SDPA their mask ready (the answers above are checked with it)
    long, short = job(lm, LONG, 3), job(lm, SHORT, 12)
    with torch.inference_mode():
        rows.admit([long])
        rows.step()
        rows.admit([short])
        assert rows.mask.shape == (2, len(long.prompt) + 1)  # the short prompt padded on the left
        while not long.ended:
            rows.step()
            rows.prune()
        assert rows.jobs == [short]
        # The cache holds the prompt and every generated token but the last (the next step's input).
        width = len(short.prompt) + len(short.generated) - 1
        assert rows.mask.shape == (1, width) and bool(rows.mask.all())
        assert all(layer.keys.shape[0] == 1 and layer.keys.shape[-2] == width for layer in rows.cache.layers)
        while rows.jobs:
            rows.step()
            rows.prune()
    assert len(short.generated) == 12 and rows.cache is None


def test_a_cache_that_cannot_be_joined_makes_new_requests_wait_for_the_batch(lm, monkeypatch):
    from oig.serve import decode

    monkeypatch.setattr(decode, "joinable", lambda cache: False)  # as a sliding-window cache is
    engine = lm.engine
    running, later = job(lm, SHORT, 40), job(lm, SHORT, 5)
    engine.submit(running)
    wait(lambda: len(running.generated) >= 5)
    engine.submit(later)
    wait(lambda: later.started.is_set())
    assert running.ended and len(running.generated) == 40  # it started only once the batch had ended
    wait(lambda: later.ended)
    assert len(later.generated) == 5

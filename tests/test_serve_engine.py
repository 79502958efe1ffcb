"""The batching engine behind LocalModel: requests that wait are answered in one batch, each row with
its own settings; a seed gives the same answer alone or in a batch; a row that ends (its length, its
cancel) leaves the others going."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_serve import ANSWER, QUESTION, model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def lm(model_dir):  # noqa: F811
    from oig.serve.inference import LocalModel

    return LocalModel.load(model_dir, name="tiny-test")


def together(lm, calls: list[dict]) -> list[tuple[str, object]]:
    """Every call's (text, Generation), the calls made while the engine is held, so that they batch."""
    with ThreadPoolExecutor(len(calls)) as pool:
        with lm.engine.lock:
            futures = [pool.submit(lm.complete, ASK, **call) for call in calls]
            deadline = time.monotonic() + 10
            while len(lm.engine._pending) < len(calls):
                assert time.monotonic() < deadline, "the calls did not reach the engine"
                time.sleep(0.01)
        return [f.result(timeout=60) for f in futures]


def test_waiting_requests_are_one_batch_each_with_its_own_settings(lm):
    eos = lm.tokenizer.eos_token_id
    batches, rows = lm.engine.batches, lm.engine.rows
    out = together(lm, [{"temperature": 0}, {"temperature": 0, "max_tokens": 1},
                        {"temperature": 0, "logit_bias": {eos: -100}, "max_tokens": 12},
                        {"temperature": 1.5, "seed": 3, "max_tokens": 8}])
    assert (lm.engine.batches - batches, lm.engine.rows - rows) == (1, 4)  # one generate for all four
    (greedy, g), (short, s), (endless, e), (_, seeded) = out
    assert greedy == ANSWER and g.finish_reason == "stop"
    assert s.completion_tokens == 1 and s.finish_reason == "length"
    assert e.completion_tokens == 12 and e.finish_reason == "length"  # its bias kept it from ending
    assert seeded.completion_tokens <= 8


def test_a_seed_gives_the_same_answer_alone_and_in_a_batch(lm):
    alone = lm.complete(ASK, temperature=1.5, seed=11, max_tokens=10)[0]
    assert lm.complete(ASK, temperature=1.5, seed=11, max_tokens=10)[0] == alone
    batched = together(lm, [{"temperature": 1.5, "seed": 11, "max_tokens": 10},
                            {"temperature": 0.7, "seed": 5, "max_tokens": 10}, {"temperature": 0}])
    assert batched[0][0] == alone and batched[2][0] == ANSWER


def test_a_cancelled_row_ends_and_the_others_go_on(lm):
    from oig.serve.inference import GenerationCancelled

    eos = lm.tokenizer.eos_token_id
    cancel = threading.Event()
    failures: list[BaseException] = []

    def cancelled():
        try:
            lm.complete(ASK, temperature=0, logit_bias={eos: -100}, max_tokens=400, cancel=cancel)
        except GenerationCancelled as exc:
            failures.append(exc)

    thread = threading.Thread(target=cancelled)
    with ThreadPoolExecutor(1) as pool:
        with lm.engine.lock:
            thread.start()
            while not lm.engine._pending:
                time.sleep(0.01)
            other = pool.submit(lm.complete, ASK, temperature=0, logit_bias={eos: -100}, max_tokens=60)
            while len(lm.engine._pending) < 2:
                time.sleep(0.01)
        time.sleep(0.05)
        cancel.set()
        thread.join(30)
        text, result = other.result(timeout=60)
    assert failures and result.completion_tokens == 60 and result.finish_reason == "length"


def test_closing_the_engine_ends_its_requests_and_its_thread(lm):
    # Run at exit: a process must not end while the engine's thread is still inside generate.
    from oig.serve.engine import Engine, Job

    engine = Engine(lm.model, lm.tokenizer)
    prompt = lm.encode(ASK)
    running = Job(prompt, 400, lm.sampling(temperature=0), logit_bias={lm.tokenizer.eos_token_id: -100.0})
    engine.submit(running)
    assert running.started.wait(10)
    waiting = Job(prompt, 400, lm.sampling(temperature=0))
    engine.submit(waiting)
    started = time.monotonic()
    engine.close()
    assert not engine._thread.is_alive() and time.monotonic() - started < 5
    assert running.ended and running.cancel.is_set() and len(running.generated) < 400
    assert waiting.ended and not waiting.generated


def test_on_an_event_loop_the_answer_is_the_same_and_a_waiting_request_leaves_the_queue(lm):
    # LocalModel.acomplete / agenerate (oig serve's way): no thread waits for the engine's tokens.
    import asyncio

    from oig.serve.inference import GenerationCancelled, GenerationTimeout

    eos = lm.tokenizer.eos_token_id

    async def main():
        text, result = await lm.acomplete(ASK, temperature=0)
        assert text == ANSWER and result.finish_reason == "stop"
        pieces = [p async for p in lm.agenerate(ASK, temperature=0, logit_bias={eos: -100}, max_tokens=30)]
        assert len(pieces) > 1 and "".join(pieces) == lm.complete(ASK, temperature=0, logit_bias={eos: -100},
                                                                   max_tokens=30)[0]
        cancel = threading.Event()
        with lm.engine.lock:  # the engine busy: both requests wait in its queue
            late = asyncio.ensure_future(lm.acomplete(ASK, temperature=0, deadline=time.monotonic() + 0.2))
            gone = asyncio.ensure_future(lm.acomplete(ASK, temperature=0, cancel=cancel))
            await asyncio.sleep(0.05)
            assert len(lm.engine._pending) == 2
            cancel.set()
            with pytest.raises(GenerationCancelled, match="waiting"):
                await gone
            with pytest.raises(GenerationTimeout, match="waiting"):
                await late
            assert not lm.engine._pending  # both withdrawn, while the engine was still held
        assert (await lm.acomplete(ASK, temperature=0))[0] == ANSWER

    asyncio.run(main())

"""One answer's text as its tokens arrive (oig.serve.text): a stop string cut even when it spans two
hand-overs, a half-received character held back, text held while a stop string may be forming, and
the finish reason (stop at an end token, a stop string or a short answer; length otherwise)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from oig.train.tiny import build_tiny

    folder = tmp_path_factory.mktemp("text") / "model"
    build_tiny(["hello world, and the end of it"], folder, seed=1)  # no é: its two bytes stay two tokens
    return AutoTokenizer.from_pretrained(folder)


def answer(tokenizer, stops: list[str]):
    from oig.serve.inference import Generation
    from oig.serve.text import AnswerText

    result = Generation()
    return AnswerText(tokenizer, stops, {tokenizer.eos_token_id}, result), result


def hand_over(text, ids: list[int], size: int) -> list[str]:
    pieces = []
    for i in range(0, len(ids), size):
        pieces.append(text.add(ids[i:i + size]))
        if text.stopped:
            break
    return pieces


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_a_stop_string_is_cut_wherever_the_hand_overs_split_it(tokenizer, size):
    ids = tokenizer.encode("hello world, and the end of it", add_special_tokens=False)
    text, result = answer(tokenizer, ["the end"])
    out = "".join(hand_over(text, ids, size))
    assert text.stopped and out == "hello world, and "
    assert result.text == ["hello world, and "] and result.finish_reason == "stop"


def test_text_that_may_begin_a_stop_string_is_held_until_it_cannot(tokenizer):
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    text, result = answer(tokenizer, ["world peace"])
    pieces = hand_over(text, ids, 1)
    assert not text.stopped and len("".join(pieces)) <= len("hello world") - len("world peace") + 1
    rest = text.end(max_new=100)
    assert "".join(pieces) + rest == "hello world" and result.finish_reason == "stop"  # shorter than max_new


def test_half_a_character_waits_for_the_rest(tokenizer):
    ids = tokenizer.encode("é", add_special_tokens=False)
    assert len(ids) == 2  # one token per byte: the vocabulary never saw é
    text, _ = answer(tokenizer, [])
    assert text.add(ids[:1]) == ""  # only the first byte: nothing goes out
    assert text.add(ids[1:]) + text.end(max_new=len(ids)) == "é"


def test_the_finish_reason_is_length_when_max_tokens_ended_it_and_stop_at_the_end_token(tokenizer):
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    text, result = answer(tokenizer, [])
    assert "".join(hand_over(text, ids, 2)) + text.end(max_new=len(ids)) == "hello world"
    assert result.finish_reason == "length" and result.completion_tokens == len(ids)
    text, result = answer(tokenizer, [])
    text.add([*ids, tokenizer.eos_token_id])
    text.end(max_new=len(ids) + 1)
    assert result.finish_reason == "stop"

"""Judges: reading verdicts (and refusing what is not one), both-order battles, scores from 0 to 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oig.generate import judges
from oig.generate.config import JudgeSpec

SCORE = JudgeSpec(name="s", kind="score", model="j", provider="p", aspects=("helpfulness", "correctness"), scale=10)
PAIR = JudgeSpec(name="p", kind="pairwise", model="j", provider="p")
REF = JudgeSpec(name="r", kind="reference", model="j", provider="p", scale=5)
RM = JudgeSpec(name="rm", kind="reward_model", model="folder")


def test_json_is_found_in_plain_fenced_or_chatty_output():
    assert judges.extract_json('{"winner": "A"}') == {"winner": "A"}
    assert judges.extract_json('Sure!\n```json\n{"winner": "B"}\n```\nHope this helps.') == {"winner": "B"}
    assert judges.extract_json('My verdict: {"winner": "tie", "rationale": "same"} -- done') == {
        "winner": "tie", "rationale": "same"}
    for raw in ("A is better", "[1, 2]", "{not json}", ""):
        with pytest.raises(ValueError, match="no JSON object"):
            judges.extract_json(raw)


def test_score_verdicts_are_checked():
    scores, why = judges.parse_score('{"scores": {"Helpfulness": 7, "correctness": "9"}, "rationale": "ok"}',
                                     SCORE.aspects, 10)
    assert scores == {"helpfulness": 7.0, "correctness": 9.0} and why == "ok"
    bad = {'{"scores": {"helpfulness": 7}}': 'no score for "correctness"',
           '{"scores": {"helpfulness": 11, "correctness": 2}}': "outside 1 to 10",
           '{"scores": {"helpfulness": true, "correctness": 2}}': "not a number",
           '{"scores": {"helpfulness": "high", "correctness": 2}}': "not a number",
           '{"score": 3}': 'no "scores" object'}
    for raw, why in bad.items():
        with pytest.raises(ValueError, match=why):
            judges.parse_score(raw, SCORE.aspects, 10)


def test_pairwise_and_reference_verdicts_are_checked():
    assert judges.parse_pairwise('{"winner": "a"}') == ("A", None)
    assert judges.parse_pairwise('{"winner": " Tie ", "rationale": "x"}') == ("tie", "x")
    with pytest.raises(ValueError, match='not "A", "B" or "tie"'):
        judges.parse_pairwise('{"winner": "both"}')
    assert judges.parse_reference('{"score": 4, "rationale": "close"}', 5) == (4.0, "close")
    with pytest.raises(ValueError, match="outside 1 to 5"):
        judges.parse_reference('{"score": 0}', 5)


def test_battles_need_both_orders_to_agree():
    # Each verdict is answer a's score: 1 won, 0.5 tie, 0 lost (the second order already turned around).
    assert judges.battle(1.0, 1.0) == ("a", True)
    assert judges.battle(0.0, 0.0) == ("b", True)
    assert judges.battle(0.5, 0.5) == ("tie", True)
    assert judges.battle(1.0, 0.0) == ("tie", False)  # position bias: each order picked the first shown
    assert judges.battle(1.0, 0.5) == ("tie", False)
    assert judges.battle(None, 1.0) == (None, None)


def _eval(judge: JudgeSpec, rid: str, score, scale, ok=True, aspect="a") -> dict:
    return {"response_id": rid, "judge": judge.name, "aspect": aspect, "score": score, "scale": scale,
            "parse_ok": ok}


def test_scores_from_each_kind_of_judge():
    ids = ["x", "y", "z"]
    evals = [_eval(SCORE, "x", 10, [1, 10], aspect="h"), _eval(SCORE, "x", 1, [1, 10], aspect="c"),
             _eval(SCORE, "y", 4, [1, 10]), _eval(SCORE, "z", None, [1, 10], ok=False)]
    assert judges.judge_scores(SCORE, evals, [], ids) == {"x": 0.5, "y": pytest.approx(1 / 3)}
    assert judges.judge_scores(REF, [_eval(REF, "x", 5, [1, 5])], [], ids) == {"x": 1.0}
    battles = [{"judge": "p", "a": "x", "b": "y", "winner": "a"}, {"judge": "p", "a": "x", "b": "z", "winner": "tie"},
               {"judge": "p", "a": "y", "b": "z", "winner": None}]
    assert judges.judge_scores(PAIR, [], battles, ids) == {"x": 0.75, "y": 0.0, "z": 0.5}
    rm = [_eval(RM, "x", -2.0, None), _eval(RM, "y", 6.0, None), _eval(RM, "z", 0.0, None)]
    assert judges.judge_scores(RM, rm, [], ids) == {"x": 0.0, "y": 1.0, "z": 0.25}
    assert judges.judge_scores(RM, rm[:1], [], ids) == {"x": 0.5}


def test_combined_scores_are_weighted_means_over_the_judges_that_scored():
    heavy = JudgeSpec(name="p", kind="pairwise", model="j", weight=3.0)
    muted = JudgeSpec(name="m", kind="score", model="j", weight=0.0)
    per_judge = {"s": {"x": 1.0, "y": 0.0}, "p": {"x": 0.0}, "m": {"x": 1.0, "y": 1.0}}
    assert judges.combine([SCORE, heavy, muted], per_judge, ["x", "y", "z"]) == {"x": 0.25, "y": 0.0}


def test_only_judges_that_read_every_answer_count_for_an_instruction():
    ids = ["x", "y", "z"]
    evals = [{**_eval(SCORE, "x", 10, [1, 10]), "kind": "score"}, {**_eval(SCORE, "y", None, [1, 10], ok=False),
                                                                    "kind": "score"},
             {**_eval(SCORE, "z", 1, [1, 10]), "kind": "score"},
             {**_eval(PAIR, "x", None, [0, 1], ok=False), "kind": "pairwise"}]  # pairwise: read from battles
    battles = [{"judge": "p", "a": "x", "b": "y", "winner": "a"}, {"judge": "p", "a": "x", "b": "z", "winner": None},
               {"judge": "p", "a": "y", "b": "z", "winner": "tie"}]
    missing = judges.missing_verdicts(evals, battles)
    assert missing == [("s", "y"), ("p", "x"), ("p", "z")]
    per_judge = {"s": {"x": 1.0, "z": 0.0}, "p": {"x": 1.0, "y": 0.25, "z": 0.5}, "r": {"x": 0.0, "y": 1.0, "z": 0.5}}
    counted = judges.counted_judges([SCORE, PAIR, REF], per_judge, ids, missing)
    assert [j.name for j in counted] == ["r"]
    assert judges.combine(counted, per_judge, ids) == {"x": 0.0, "y": 1.0, "z": 0.5}
    assert judges.counted_judges([SCORE, PAIR], per_judge, ids, missing) == []  # no scores at all, no best


def test_structured_output_asks_for_the_verdicts_shape():
    fmt = judges.response_format(SCORE)
    schema = fmt["json_schema"]["schema"]
    assert fmt["type"] == "json_schema" and schema["properties"]["scores"]["required"] == ["helpfulness", "correctness"]
    assert judges.output_schema(PAIR)["properties"]["winner"]["enum"] == ["A", "B", "tie"]
    off = JudgeSpec(name="o", kind="score", model="j", json_mode="off")
    assert judges.response_format(off) is None
    assert judges.response_format(JudgeSpec(name="o", kind="pairwise", model="j", json_mode="object")) == {
        "type": "json_object"}


def test_prompts_hold_the_conversation_and_the_answers():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    msgs = judges.score_messages(SCORE, prompt, "4")
    assert msgs[0]["content"] == judges.SYSTEM and "[SYSTEM]\nBe brief." in msgs[1]["content"]
    assert '"helpfulness": <1-10>, "correctness": <1-10>' in msgs[1]["content"]
    pair = judges.pairwise_messages(prompt, "four", "4")[1]["content"]
    assert "<answer_A>\nfour\n</answer_A>" in pair and "<answer_B>\n4\n</answer_B>" in pair
    assert "<reference>\nFour.\n</reference>" in judges.reference_messages(REF, prompt, "4", "Four.")[1]["content"]


@pytest.mark.slow
def test_a_local_reward_model_scores_answers_in_the_pipeline(tmp_path):
    """A tiny random reward model built here: scores are recorded, stored, and turned into 0..1."""
    from fake_openai import FakeOpenAI
    from test_generate_run import records, write_config
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from oig.generate.config import load_config
    from oig.generate.run import generate
    from oig.train.tiny import build_tokenizer

    folder = tmp_path / "rm"
    tokenizer = build_tokenizer(["hello world", "user assistant", "What is the capital of France?"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="judges:\n  - kind: reward_model\n    model: rm\n")
        generate(load_config(cfg), tmp_path / "out", allow_local=True)
        recs = records(tmp_path / "out")
        summary = generate(load_config(cfg), tmp_path / "out", allow_local=True)
    evaluations = [e for r in recs for e in r["evaluations"]]
    assert len(evaluations) == 8 and all(e["parse_ok"] and isinstance(e["score"], float) for e in evaluations)
    assert all(e["judge"] == "reward_model:rm" and e["scale"] is None for e in evaluations)
    assert all(sorted(r["scores"].values()) in ([0.0, 1.0], [0.5, 0.5]) for r in recs)
    assert summary.stats["calls"] == 0  # every score came from the store
    assert json.loads((tmp_path / "out" / "run.json").read_text())["stored"] == 16
    assert Path(tmp_path / "out" / "sft.jsonl").read_text().count("\n") == 4


LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                  "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


@pytest.mark.slow
def test_the_reward_model_sees_exactly_one_bos_token_with_a_llama_style_template(tmp_path, monkeypatch):
    """The template writes <s> and the tokenizer adds <s> to any text it encodes: the input holds one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world [INST] 2+2? [/INST] four"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        chat_template=LLAMA_TEMPLATE)
    assert tokenizer("hi")["input_ids"][0] == bos  # the tokenizer adds BOS itself, like Llama's
    folder = tmp_path / "rm"
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=128)
    LlamaForSequenceClassification(config).save_pretrained(folder)

    rm = judges.RewardModel(str(folder))
    model, loaded = rm._load()
    seen = []

    def spy(**batch):
        seen.append(batch["input_ids"][0].tolist())
        return model(**batch)

    rm._loaded = (spy, loaded)
    score = rm.score([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "four"}])
    assert isinstance(score, float)
    (ids,) = seen
    assert ids[0] == bos and ids.count(bos) == 1
    assert loaded.decode(ids) == "<s>[INST] 2+2? [/INST] four</s>"

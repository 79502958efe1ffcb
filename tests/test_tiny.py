"""The embedded tiny model: deterministic, reloads identically, any text encodes, ChatML with masks."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from oig.train import tiny  # noqa: E402

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
    for i in range(20)
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    model, tok = tiny.build_tiny(tiny.texts_of(RECORDS), out, seed=7)
    return out, model, tok


def test_small_llama_with_tied_embeddings(built):
    _, model, tok = built
    assert model.config.model_type == "llama"
    assert model.config.tie_word_embeddings
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (64, 2, 4)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) < 250_000
    assert model.config.vocab_size == len(tok) <= tiny.VOCAB_SIZE
    assert model.dtype == torch.float32


def test_special_tokens_are_single_ids(built):
    _, model, tok = built
    for token in tiny.SPECIAL_TOKENS:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert tok.eos_token == tiny.IM_END and tok.pad_token == tiny.PAD
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_any_text_encodes_and_decodes_back(built):
    _, _, tok = built
    # Nothing like this was in the training texts: every byte is in the alphabet, so nothing is lost.
    for text in ["naïve résumé 東京 🚀", "\t tabs and  double  spaces\n", "<|im_start|>not special", "~`^{}"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.unk_token_id is None


def test_reload_with_auto_classes_is_identical(built):
    out, model, tok = built
    tok2 = AutoTokenizer.from_pretrained(out)
    model2 = AutoModelForCausalLM.from_pretrained(out)
    for rec in RECORDS[:5]:
        text = rec["messages"][0]["content"] + " " + rec["messages"][1]["content"]
        assert tok2.encode(text) == tok.encode(text)
    assert tok2.chat_template == tok.chat_template == tiny.CHATML_TEMPLATE
    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_deterministic_given_the_seed(built, tmp_path):
    _, model, tok = built
    model2, tok2 = tiny.build_tiny(tiny.texts_of(RECORDS), tmp_path / "again", seed=7)
    assert tok2.get_vocab() == tok.get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True))
    model3, _ = tiny.build_tiny(tiny.texts_of(RECORDS), tmp_path / "other", seed=8)
    assert not torch.equal(model.model.embed_tokens.weight, model3.model.embed_tokens.weight)


def test_building_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny(["a few words"], tmp_path, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_chatml_rendering_and_generation_prompt(built):
    _, _, tok = built
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                    "<|im_start|>assistant\nGoodbye.<|im_end|>\n")
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_mask_covers_content_and_end_of_turn(built):
    _, _, tok = built
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    # Exactly the two replies, each with its <|im_end|> (so the model learns to stop), nothing else.
    assert tok.decode(masked) == "Hello!<|im_end|>Goodbye.<|im_end|>"
    assert masked.count(tok.eos_token_id) == 2


def test_trl_accepts_the_template_for_assistant_only_loss(built):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    _, _, tok = built
    assert has_generation_markers(tok.chat_template)
    assert is_chat_template_stop_token_trained(tok)

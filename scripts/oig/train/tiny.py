"""The embedded offline base model (``--base-model tiny``): built here, downloaded from nowhere.

A byte-level BPE tokenizer trained on the mixture's own text and a small randomly initialised
Llama-style model. It lets the whole loop (mix, train, publish, query) run on a CPU in seconds, in
tests and in ``make demo``, and it memorises a small slice well enough that greedy decoding returns
the trained answers. Llama, not Qwen2: a Qwen2 ``config.json`` makes ``AutoTokenizer`` reload the
tokenizer as ``Qwen2Tokenizer``, which changes the token ids.

Heavy imports (torch, transformers, tokenizers) happen inside ``build_tiny`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

NAME = "tiny"
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [IM_START, IM_END, PAD]
VOCAB_SIZE = 512  # 256 bytes + 3 special tokens + about 250 merges

# ChatML. The assistant's content AND its <|im_end|> sit inside {% generation %} so that
# assistant-only loss trains the model to stop; the newline after it belongs to no turn.
# Tool use as Qwen2.5 renders it: the tools' JSON in a system turn, each tool call as JSON between
# <tool_call> tags inside the assistant's turn (so it is learned), results as `tool` turns.
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n# Tools\\n' }}"
    "{%- for tool in tools %}{{- (tool.function if tool.function is defined else tool) | tojson }}"
    "{{- '\\n' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set f = call.function if call.function is defined else call %}"
    "{{- '<tool_call>\\n' + {'name': f.name, 'arguments': f.arguments} | tojson + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Sizes of the model: about 150k parameters (165k with a full 512-token vocabulary).
HIDDEN = 64
LAYERS = 2
HEADS = 4
INTERMEDIATE = 256
MAX_POSITIONS = 2048


def texts_of(records: Iterable[dict]) -> Iterable[str]:
    """The strings the tokenizer learns its merges from: every message's role and content."""
    for record in records:
        if record.get("tools"):
            yield json.dumps(record["tools"])
        for message in record["messages"]:
            yield message["role"]
            yield message["content"]
            if message.get("tool_calls"):
                yield json.dumps(message["tool_calls"])


def build_tokenizer(texts: Iterable[str]):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the ChatML template; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte in the initial alphabet: text the mixture never showed still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHATML_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def build_tiny(texts: Iterable[str], out_dir: Path, *, seed: int = 42):
    """Build the tokenizer and a random model, save both to ``out_dir`` and return (model, tokenizer).

    Deterministic: the same texts and seed give the same token ids and the same weights, so a
    resumed run can rebuild its base model exactly. Saved with ``save_pretrained``, so
    ``AutoTokenizer`` and ``AutoModelForCausalLM`` reload it identically.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A private generator state: building the model must not disturb (or depend on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model, tokenizer

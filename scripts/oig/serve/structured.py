"""Structured output: the grammar a request's answer must follow, as a constraint the engine applies
token by token (``response_format`` json_object / json_schema, and forced tool calls).

The grammar comes from lm-format-enforcer, one of vLLM's guided-decoding backends: pure Python, so it
installs on any machine (xgrammar, the other, pulls triton into a CPU install), and it works with any
Hugging Face tokenizer. Its per-tokenizer table is built once per model (about 1 s for a 150k-token
vocabulary) and kept on the LocalModel.
"""

from __future__ import annotations

import threading

from oig.serve.inference import BadRequest

_TABLE_LOCK = threading.Lock()
MAX_WHITESPACE = 1
MAX_PARALLEL_CALLS = 8  # forced calls in one answer (the library's own cap for an array is 20)
ANY_OBJECT = {"type": "object"}  # json_object: any JSON object, as OpenAI's JSON mode gives


class JsonConstraint:
    """The tokens that keep the answer a prefix of a JSON document valid against ``schema``."""

    def __init__(self, lm, schema: dict, param: str):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.schema, self.param = schema, param  # what oig.serve.worker sends to the engine's process
        try:
            parser = JsonSchemaParser(schema)
            self.enforcer = TokenEnforcer(_table(lm), parser)
            # One space at a time between JSON tokens: a model otherwise free to pad can loop on
            # newlines until max_tokens (the library allows 12 in a row).
            parser.config.max_consecutive_whitespaces = MAX_WHITESPACE
            self.enforcer.get_allowed_tokens([-1])  # the schema's first step: constructs it cannot follow fail here
        except BadRequest:
            raise
        except Exception as exc:  # pydantic and the parser raise their own errors for schemas they refuse
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadRequest(f"{param}: this JSON schema cannot be enforced: {first}", param) from None
        self.root = -1

    def allowed(self, prompt: list[int], generated: list[int]) -> list[int]:
        # The enforcer keys its states by the whole sequence; a one-token root keeps the key short.
        return self.enforcer.get_allowed_tokens([self.root, *generated]).allowed_tokens


def _table(lm):
    """lm-format-enforcer's table of the model's tokens, built once per model. (Its own transformers
    integration, in 0.11.3, imports ``transformers.tokenization_utils``, which transformers 5 no longer
    has; this builds the same table from the library's public TokenEnforcerTokenizerData, decoding in
    batches.)"""
    from lmformatenforcer import TokenEnforcerTokenizerData

    with _TABLE_LOCK:
        table = getattr(lm, "_format_table", None)
        if table is None:
            tokenizer = lm.tokenizer
            vocab = len(tokenizer)
            special = set(tokenizer.all_special_ids)
            ids = [i for i in range(vocab) if i not in special]
            zero = tokenizer.encode("0", add_special_tokens=False)[-1]
            # A token decoded after "0" shows the space a word-start token carries.
            after = tokenizer.batch_decode([[zero, i] for i in ids])
            alone = tokenizer.batch_decode([[i] for i in ids])
            regular = [(i, a[1:], len(a) - 1 > len(b)) for i, a, b in zip(ids, after, alone, strict=True)]

            def decode(tokens: list[int]) -> str:
                return tokenizer.decode(tokens).rstrip("\ufffd")

            eos = sorted(lm.eos_ids()) or tokenizer.eos_token_id
            table = lm._format_table = TokenEnforcerTokenizerData(regular, decode, eos, False, vocab)
        return table


def response_format_constraint(lm, response_format) -> JsonConstraint | None:
    """The constraint ``response_format`` asks for: None for text, any object for json_object, the
    given schema for json_schema (followed whether or not ``strict`` is set)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JsonConstraint(lm, ANY_OBJECT, "response_format")
    spec = response_format.json_schema
    return JsonConstraint(lm, spec.schema_ or ANY_OBJECT, "response_format.json_schema.schema")


def tool_call_schema(tools: list, name: str | None, parallel: bool) -> dict:
    """The JSON a forced tool call must be: for a named function, its arguments; for ``required``, a
    list of one to MAX_PARALLEL_CALLS ``{"name", "arguments"}`` objects naming the request's functions
    (as vLLM constrains them), one only when ``parallel`` is false."""
    if name is not None:
        tool = next(t for t in tools if t.function.name == name)
        return tool.function.parameters or ANY_OBJECT
    calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [t.function.name]},
                                                "arguments": t.function.parameters or ANY_OBJECT},
              "required": ["name", "arguments"]} for t in tools]
    item = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS if parallel else 1}

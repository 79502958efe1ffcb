"""The ``oig generate`` config's JSON Schema: the one written meaning of every key.

``schemas/generate.schema.json`` is rendered from it for editors (``python -m oig.generate.config``,
which a test keeps in sync). ``oig.generate.config`` checks a config against it and maps it onto
dataclasses.
"""

from __future__ import annotations

import json
from pathlib import Path

from oig.data.schemas import SHA1_OR_REF, SHA256, column_roles_schema
from oig.files import write_atomic

DEFAULT_SEED = 42
DEFAULT_PROVIDER = "together"
TOGETHER_KEY_ENV = "TOGETHER_API_KEY"
JUDGE_KINDS = ("score", "pairwise", "reference", "reward_model")
PREFS_POLICIES = ("best_vs_worst", "best_vs_random", "all_pairs")
DEFAULT_MAX_TOKENS = 512

_text = {"type": "string", "minLength": 1}


def _settings_properties() -> dict:
    return {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2,
                        "description": "Sampling temperature, 0 (greedy) to 2. Default: the provider's."},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                  "description": "Nucleus sampling: keep the smallest set of tokens whose probability adds up to this."},
        "max_tokens": {"type": "integer", "minimum": 1,
                       "description": f"Most tokens in one answer (default {DEFAULT_MAX_TOKENS}); also the output "
                                      "size `--dry-run` prices."},
        "seed": {"type": "integer", "description": "Sampling seed, for providers that honour it."},
        "stop": {"type": "array", "items": _text, "maxItems": 4,
                 "description": "Up to 4 texts that end the answer where they appear."},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2,
                             "description": "-2 to 2: positive values push the model towards new topics."},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2,
                              "description": "-2 to 2: positive values make the model repeat itself less."},
    }


def _model_schema(what: str) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model"],
        "description": what,
        "properties": {
            "model": {**_text, "description": "The model id the provider knows, e.g. "
                      "meta-llama/Llama-3.3-70B-Instruct-Turbo on Together, or the name `oig serve` and vLLM serve."},
            "name": {**_text, "description": "The label of this model's answers in the records (default: the model "
                     "id). Labels must be unique: give two entries of one model with different settings their own."},
            "provider": {**_text, "description": f"A name under `providers` (default: {DEFAULT_PROVIDER}, the "
                         "Together API with TOGETHER_API_KEY)."},
            **_settings_properties(),
        },
    }


GENERATE_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:oig:schema:generate",
    "title": "oig generate config",
    "description": "A dataset built by asking several models and judging their answers: `oig generate --config "
                   "FILE --out DIR` writes DIR/records.jsonl, sft.jsonl, prefs.jsonl and battles.jsonl.",
    "type": "object",
    "additionalProperties": False,
    "required": ["instructions", "models"],
    "properties": {
        "instructions": {
            "type": "array",
            "minItems": 1,
            "description": "Where the prompts come from: Hugging Face datasets (ORG/NAME or "
                           "https://huggingface.co/datasets/ORG/NAME) and data files (https links ending in .jsonl, "
                           ".json, .csv or .parquet; local paths, relative to this file, with --allow-local-sources). "
                           "A row that holds a whole conversation is split: its last assistant message becomes the "
                           "reference answer and the rest the prompt. A row with only a prompt (prompt, instruction, "
                           "question, or messages ending with a user turn) has no reference.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["link"],
                "properties": {
                    "link": {**_text, "description": "A Hugging Face dataset or a data file link."},
                    "revision": {"type": "string", "pattern": SHA1_OR_REF,
                                 "description": "Hugging Face datasets: the commit to read (a 40-character sha "
                                                "pins the content)."},
                    "sha256": {"type": "string", "pattern": SHA256,
                               "description": "Data files: the file's sha256; a different file is an error."},
                    "config": {**_text, "description": "Hugging Face datasets: the configuration (subset) name."},
                    "split": {**_text, "default": "train", "description": "Hugging Face datasets: the split to read."},
                    "columns": column_roles_schema("Which column holds what when the layout is not detected: role "
                                                   "-> column name, e.g. {instruction: query} or {question: q, "
                                                   "answer: a}."),
                    "limit": {"type": "integer", "minimum": 1,
                              "description": "Read at most this many rows of this source, in its order."},
                },
            },
        },
        "limit": {"type": "integer", "minimum": 1,
                  "description": "Instructions in all: when the sources hold more, this many are sampled with `seed` "
                                 "(kept in source order). Default: every row. `--limit` overrides it."},
        "seed": {"type": "integer", "description": f"Seed for sampling instructions and for best_vs_random pairs "
                                                   f"(default {DEFAULT_SEED}). `--seed` overrides it."},
        "description": {**_text, "description": "What the generated data is for; becomes the slice's description "
                                                "with --emit-slice."},
        "license": {**_text, "description": "The generated data's license as an SPDX identifier (check the model "
                                            "providers' terms and the instructions' license); needed by --emit-slice."},
        "providers": {
            "type": "object",
            "description": f"API endpoints by name. Without this section there is one, `{DEFAULT_PROVIDER}`: the "
                           f"Together API with the key in {TOGETHER_KEY_ENV}.",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind"],
                "properties": {
                    "kind": {"enum": ["together", "openai", "vllm"],
                             "description": "together: the together SDK (Together's API). openai: any "
                                            "OpenAI-compatible server (`oig serve`, vLLM) at base_url. vllm: "
                                            "vLLM's offline engine in this process (`LLM.chat`; vLLM installed "
                                            "on a GPU machine, see the README), one engine per model id, "
                                            "calls gathered into batches of batch_size."},
                    "base_url": {**_text, "description": "The server's address WITHOUT /v1, e.g. "
                                 "http://127.0.0.1:8000; calls go to {base_url}/v1/chat/completions. Required for "
                                 "kind openai; for together the default is Together's API."},
                    "api_key_env": {**_text, "description": "The environment variable holding the API key (default: "
                                    f"{TOGETHER_KEY_ENV} for together, none for openai). Keys are read from the "
                                    "environment only, and never stored or printed."},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024,
                                    "description": "Calls in flight at once to this provider (default 8)."},
                    "requests_per_minute": {"type": "number", "exclusiveMinimum": 0,
                                            "description": "Most calls started per minute (a token bucket that "
                                                           "allows bursts of `concurrency`). Default: no limit."},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20,
                                     "description": "Tries per call (default 5). Rate limits (429), timeouts, "
                                                    "connection failures and 5xx answers are retried."},
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "Seconds one try may take (default 120)."},
                    "backoff_s": {"type": "number", "minimum": 0,
                                  "description": "Base of the exponential backoff between tries, in seconds "
                                                 "(default 1): try n waits a random time up to backoff_s * 2^n, "
                                                 "at most 60 s, unless the server sends Retry-After."},
                    "mode": {"enum": ["online", "batch"],
                             "description": "online (the default): one HTTP call per answer. batch: the calls "
                                            "go to the provider's batch API (OpenAI's /v1/batches, Together's "
                                            "batches through the together SDK; about half the price, answers "
                                            "within 24 h): the run submits them in batches, records each batch "
                                            "id in the call store, polls, and after an interruption polls the "
                                            "same batches again instead of resubmitting."},
                    "batch_size": {"type": "integer", "minimum": 1, "maximum": 50000,
                                   "description": "mode batch: most calls in one batch (default 1000; OpenAI "
                                                  "takes up to 50,000). kind vllm: most conversations in one "
                                                  "`LLM.chat` call (default 256). Also bounds the records in "
                                                  "flight, 4 x batch_size, in place of concurrency."},
                    "poll_s": {"type": "number", "exclusiveMinimum": 0,
                               "description": "mode batch: seconds between two status checks of a batch "
                                              "(default 30)."},
                    "flush_s": {"type": "number", "exclusiveMinimum": 0,
                                "description": "mode batch and kind vllm: a batch is submitted when it holds "
                                               "batch_size calls, or when no new call has come for this many "
                                               "seconds (default 2 for mode batch, 0.05 for vllm)."},
                    "tensor_parallel_size": {"type": "integer", "minimum": 1,
                                             "description": "kind vllm: GPUs one engine spans (default 1)."},
                    "gpu_memory_utilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                               "description": "kind vllm: the share of each GPU's memory one "
                                                              "engine takes (vLLM's default 0.9; lower it for "
                                                              "several models on one GPU)."},
                    "max_model_len": {"type": "integer", "minimum": 1,
                                      "description": "kind vllm: the longest prompt plus answer, in tokens "
                                                     "(default: the model's)."},
                },
            },
        },
        "models": {
            "type": "array",
            "minItems": 1,
            "description": "The models that answer every instruction, each with its own generation settings.",
            "items": _model_schema("A model that answers every instruction."),
        },
        "aggregator": _model_schema(
            "Optional: a model that reads the other models' answers and writes its own (mixture-of-agents). Its "
            "answer is judged like the others and records which answers it read."),
        "judges": {
            "type": "array",
            "description": "Judges of the answers; several may be combined. Each gives a score from 0 to 1 to "
                           "every answer it judged (score and reference: (score - 1) / (scale - 1), averaged over "
                           "aspects; pairwise: the share of games won, a tie as half; reward_model: scaled "
                           "among the instruction's answers, the lowest 0 and the highest 1). An answer's score is the weighted mean over its "
                           "judges; the best and the worst come from it. Output a judge cannot parse is kept and "
                           "marked, never turned into a score.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "model"],
                "properties": {
                    "kind": {"enum": list(JUDGE_KINDS),
                             "description": "score: an LLM rates each answer on `aspects` from 1 to `scale`. "
                                            "pairwise: an LLM picks the better of two answers, asked in both "
                                            "orders; verdicts that disagree count as a tie. reference: an LLM "
                                            "rates each answer against the dataset's reference answer (rows "
                                            "without one are not judged). reward_model: a local sequence "
                                            "classification model scores each answer."},
                    "model": {**_text, "description": "The judge model id; for reward_model a local folder "
                                                      "(relative to this file) or a Hugging Face model id."},
                    "name": {**_text, "description": "The judge's label in the records (default: KIND:MODEL)."},
                    "provider": {**_text, "description": f"A name under `providers` (default: {DEFAULT_PROVIDER}); "
                                                         "not used by reward_model."},
                    "revision": {**_text, "description": "reward_model from the Hub: the commit to load."},
                    "aspects": {"type": "array", "minItems": 1, "uniqueItems": True,
                                "items": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_ -]{0,63}$"},
                                "description": "score judges: what to rate (default [overall]), e.g. "
                                               "[helpfulness, correctness, harmlessness]."},
                    "scale": {"type": "integer", "minimum": 2, "maximum": 100,
                              "description": "score and reference judges: scores run from 1 to this (default 10)."},
                    "weight": {"type": "number", "minimum": 0,
                               "description": "This judge's weight in an answer's score (default 1)."},
                    "json_mode": {"enum": ["schema", "object", "off"],
                                  "description": "How the judge is asked for JSON: schema (structured output with "
                                                 "a JSON Schema, the default), object (JSON mode) or off (the "
                                                 "prompt only, for servers without either)."},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2,
                                    "description": "The judge's sampling temperature (default 0)."},
                    "max_tokens": {"type": "integer", "minimum": 1,
                                   "description": "Most tokens in one verdict (default 512)."},
                },
            },
        },
        "prices": {
            "type": "object",
            "description": "USD per million tokens by model id, for the cost report, `--dry-run` and "
                           "`--budget-usd`. A free local model is {input: 0, output: 0}.",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["input", "output"],
                "properties": {
                    "input": {"type": "number", "minimum": 0, "description": "USD per million prompt tokens."},
                    "output": {"type": "number", "minimum": 0, "description": "USD per million completion tokens."},
                },
            },
        },
        "prefs_policy": {"enum": list(PREFS_POLICIES),
                         "description": "Pairs in prefs.jsonl, by answer score: best_vs_worst (one pair per "
                                        "instruction, the default), best_vs_random (the best against one other "
                                        "answer drawn with `seed`), all_pairs (every pair whose scores differ by "
                                        "more than prefs_margin, the higher chosen)."},
        "prefs_margin": {"type": "number", "minimum": 0, "maximum": 1,
                         "description": "A pair is written only when the chosen answer's score (0 to 1) exceeds "
                                        "the rejected one's by more than this (default 0)."},
    },
}


def render_schema() -> str:
    """schemas/generate.schema.json, exactly as shipped."""
    return json.dumps(GENERATE_SCHEMA, indent=2) + "\n"


def main() -> None:
    target = Path("schemas") / "generate.schema.json"
    write_atomic(target, render_schema())
    print(f"wrote {target}")

"""The ``oig generate`` config file: flat YAML mapped onto dataclasses in one place.

The JSON Schema below is the one written meaning of every key (``schemas/generate.schema.json`` is
rendered from it for editors: ``python -m oig.generate.config``). Loading checks the document against
it, reports every problem at once with its line, and names the nearest valid key for a typo; then a
few checks no schema can express (names that must be unique, providers that must exist).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from oig import yamlsafe
from oig.data import messages
from oig.data.messages import did_you_mean
from oig.data.schemas import SHA1_OR_REF, SHA256
from oig.data.slices import COLUMN_ROLES
from oig.errors import InvalidInput, Problem

DEFAULT_SEED = 42
DEFAULT_PROVIDER = "together"
TOGETHER_KEY_ENV = "TOGETHER_API_KEY"
JUDGE_KINDS = ("score", "pairwise", "reference", "reward_model")
# Credentials of other services: a config naming one would send it to base_url.
NOT_CHAT_KEYS = frozenset({"GITHUB_TOKEN", "GH_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ACTIONS_RUNTIME_TOKEN",
                           "ACTIONS_ID_TOKEN_REQUEST_TOKEN"})
PREFS_POLICIES = ("best_vs_worst", "best_vs_random", "all_pairs")
# Generation settings passed through to the chat completions API, the same for both provider kinds.
SETTING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "frequency_penalty")
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
                    "columns": {
                        "type": "object",
                        "description": "Which column holds what when the layout is not detected: role -> column "
                                       "name, e.g. {instruction: query} or {question: q, answer: a}.",
                        "propertyNames": {"enum": list(COLUMN_ROLES)},
                        "additionalProperties": _text,
                        "minProperties": 1,
                    },
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
                    "kind": {"enum": ["together", "openai"],
                             "description": "together: the together SDK (Together's API). openai: any "
                                            "OpenAI-compatible server (`oig serve`, vLLM) at base_url."},
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


# --- the shaped config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    link: str
    revision: str | None = None
    sha256: str | None = None
    config: str | None = None
    split: str = "train"
    columns: dict[str, str] | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str  # together | openai
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    requests_per_minute: float | None = None
    max_attempts: int = 5
    timeout_s: float = 120.0
    backoff_s: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the label in records
    model: str  # the provider's model id
    provider: str
    settings: dict = field(default_factory=dict)  # SETTING_KEYS that were set, max_tokens always


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    kind: str
    model: str
    provider: str | None = None  # None for reward_model
    revision: str | None = None
    aspects: tuple[str, ...] = ("overall",)
    scale: int = 10
    weight: float = 1.0
    json_mode: str = "schema"
    settings: dict = field(default_factory=dict)  # temperature, max_tokens


@dataclass
class GenerateConfig:
    path: Path
    sha256: str  # of the file's bytes: provenance of the data it made
    sources: list[Source]
    models: list[ModelSpec]
    providers: dict[str, Provider]
    aggregator: ModelSpec | None = None
    judges: list[JudgeSpec] = field(default_factory=list)
    limit: int | None = None
    seed: int = DEFAULT_SEED
    description: str | None = None
    license: str | None = None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # model id -> USD/1M (input, output)
    prefs_policy: str = "best_vs_worst"
    prefs_margin: float = 0.0

    @property
    def base_dir(self) -> Path:
        """Local paths in the config resolve against the folder holding it."""
        return self.path.parent

    def price(self, model: str) -> tuple[float, float] | None:
        return self.prices.get(model)


# --- loading ---------------------------------------------------------------------------------------


@cache
def _validator():
    import jsonschema_rs

    return jsonschema_rs.validator_for(GENERATE_SCHEMA)


def load_config(path: Path) -> GenerateConfig:
    """Read and check a generate config. Raises InvalidInput listing every problem."""
    path = Path(path)
    display = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput([Problem(display, 0, 0, "error", f"cannot read the config: {exc.strerror}")]) from None
    return parse_config(data, path)


def parse_config(data: bytes, path: Path) -> GenerateConfig:
    display = str(path)
    try:
        text = yamlsafe.decode(data)
        doc = yamlsafe.load(text)
    except yamlsafe.YamlError as exc:
        raise InvalidInput([Problem(display, exc.line, exc.col, "error", exc.message)]) from None
    if not isinstance(doc, dict):
        raise InvalidInput([Problem(display, 1, 1, "error", "the config must be a mapping with at least "
                                                            "`instructions` and `models`")])
    problems: list[Problem] = []

    def add(ypath: tuple, message: str, key: bool = False) -> None:
        line, col = yamlsafe.locate(text, ypath, key=key)
        problems.append(Problem(display, line, col, "error", message))

    for err in _validator().iter_errors(doc):
        ypath, key, message = _schema_problem(err, doc)
        add(ypath, message, key)
    for ypath, message in _numbers_problems(doc):
        add(ypath, message)
    if problems:
        raise InvalidInput(_dedupe(problems))

    # --- shape it; then what no schema can say ---------------------------------------------------
    providers = {name: Provider(name=name, kind=p["kind"], base_url=p.get("base_url"),
                                api_key_env=p.get("api_key_env") or (TOGETHER_KEY_ENV if p["kind"] == "together"
                                                                    else None),
                                concurrency=p.get("concurrency", 8), requests_per_minute=p.get("requests_per_minute"),
                                max_attempts=p.get("max_attempts", 5), timeout_s=float(p.get("timeout_s", 120)),
                                backoff_s=float(p.get("backoff_s", 1.0)))
                 for name, p in (doc.get("providers") or {}).items()}
    if "providers" not in doc:
        providers[DEFAULT_PROVIDER] = Provider(DEFAULT_PROVIDER, "together", api_key_env=TOGETHER_KEY_ENV)
    for name, p in providers.items():
        if p.api_key_env in NOT_CHAT_KEYS:
            add(("providers", name, "api_key_env"), f"provider '{name}': {p.api_key_env} is not a chat API key and "
                                                    "is never sent to a model server; name the variable that holds "
                                                    "this provider's key")
        if p.kind == "openai" and not p.base_url:
            add(("providers", name), f"provider '{name}' is an OpenAI-compatible server: give its `base_url` "
                                     "(e.g. http://127.0.0.1:8000, without /v1)", key=True)
        if p.base_url and p.base_url.rstrip("/").endswith("/v1"):
            add(("providers", name, "base_url"), f"provider '{name}': write base_url without /v1 (calls go to "
                                                 "{base_url}/v1/chat/completions)")

    def model_spec(entry: dict, ypath: tuple) -> ModelSpec:
        provider = entry.get("provider", DEFAULT_PROVIDER)
        if provider not in providers:
            add((*ypath, "provider"), f"no provider '{provider}'{did_you_mean(provider, providers)}"
                                      f" (providers: {', '.join(providers)})")
        settings = {k: entry[k] for k in SETTING_KEYS if k in entry}
        settings.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        return ModelSpec(name=entry.get("name", entry["model"]), model=entry["model"], provider=provider,
                         settings=settings)

    models = [model_spec(m, ("models", i)) for i, m in enumerate(doc["models"])]
    aggregator = model_spec(doc["aggregator"], ("aggregator",)) if doc.get("aggregator") else None
    labels: dict[str, tuple] = {}
    for i, m in enumerate(models + ([aggregator] if aggregator else [])):
        ypath = ("models", i) if i < len(models) else ("aggregator",)
        if m.name in labels:
            add(ypath, f"two models are labelled '{m.name}'; give one a `name` of its own", key=True)
        labels[m.name] = ypath

    judges: list[JudgeSpec] = []
    for i, j in enumerate(doc.get("judges") or []):
        kind = j["kind"]
        ypath = ("judges", i)
        provider = None
        if kind != "reward_model":
            provider = j.get("provider", DEFAULT_PROVIDER)
            if provider not in providers:
                add((*ypath, "provider"), f"no provider '{provider}'{did_you_mean(provider, providers)}"
                                          f" (providers: {', '.join(providers)})")
        for key, kinds in (("aspects", ("score",)), ("scale", ("score", "reference")), ("provider", JUDGE_KINDS[:3]),
                           ("revision", ("reward_model",)), ("json_mode", JUDGE_KINDS[:3]),
                           ("temperature", JUDGE_KINDS[:3]), ("max_tokens", JUDGE_KINDS[:3])):
            if key in j and kind not in kinds:
                add((*ypath, key), f"`{key}` does not apply to a {kind} judge; remove it", key=True)
        name = j.get("name", f"{kind}:{j['model']}")
        if any(name == other.name for other in judges):
            add(ypath, f"two judges are named '{name}'; give one a `name` of its own", key=True)
        judges.append(JudgeSpec(
            name=name, kind=kind, model=j["model"], provider=provider, revision=j.get("revision"),
            aspects=tuple(j.get("aspects", ("overall",))), scale=j.get("scale", 10), weight=float(j.get("weight", 1)),
            json_mode=j.get("json_mode", "schema"),
            settings={"temperature": j.get("temperature", 0), "max_tokens": j.get("max_tokens", 512)}))
    if problems:
        raise InvalidInput(_dedupe(problems))

    sources = [Source(link=s["link"], revision=s.get("revision"), sha256=s.get("sha256"), config=s.get("config"),
                      split=s.get("split", "train"), columns=dict(s["columns"]) if s.get("columns") else None,
                      limit=s.get("limit")) for s in doc["instructions"]]
    prices = {m: (float(p["input"]), float(p["output"])) for m, p in (doc.get("prices") or {}).items()}
    return GenerateConfig(
        path=path, sha256=hashlib.sha256(data).hexdigest(), sources=sources, models=models, providers=providers,
        aggregator=aggregator, judges=judges, limit=doc.get("limit"), seed=doc.get("seed", DEFAULT_SEED),
        description=doc.get("description"), license=doc.get("license"), prices=prices,
        prefs_policy=doc.get("prefs_policy", "best_vs_worst"), prefs_margin=float(doc.get("prefs_margin", 0)))


def api_key(provider: Provider) -> str | None:
    """The provider's key from the environment (never from the config file)."""
    if not provider.api_key_env:
        return None
    return os.environ.get(provider.api_key_env) or None


# --- messages for schema errors ---------------------------------------------------------------------


def _schema_problem(err, doc: dict) -> tuple[tuple, bool, str]:
    """(yaml path, point at the key?, message) for one jsonschema-rs error."""
    common = messages.schema_problem(err, doc, GENERATE_SCHEMA, "the config")
    if common is not None:
        return common
    path = tuple(err.instance_path)
    name = type(err.kind).__name__
    where = messages.path_text(path, "the config")
    if name in ("Type", "Enum"):
        schema = messages.schema_at(GENERATE_SCHEMA, path)
        value = messages.value_at(doc, path)
        return path, False, messages.must_be(where, messages.expected(schema), value,
                                             fix=messages.quote_hint(schema.get("type"), value))
    if name == "MinLength":
        return path, False, f"{where} is empty; write the text or remove the key"
    if name in ("MinItems", "MinProperties"):
        return path, False, f"{where} is empty; add entries or remove it"
    if name in ("Minimum", "ExclusiveMinimum", "Maximum", "ExclusiveMaximum", "MaxItems"):
        return path, False, f"{where} is out of range: {err.message}"
    return path, False, f"{where}: {err.message}"


def _numbers_problems(doc: dict) -> list[tuple[tuple, str]]:
    """NaN and infinities pass a schema's type check; no setting means them."""
    out: list[tuple[tuple, str]] = []

    def walk(node: object, path: tuple) -> None:
        if isinstance(node, float) and not math.isfinite(node):
            out.append((path, f"{messages.path_text(path, 'the config')} must be a finite number, not {node}"))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set = set()
    out = []
    for p in problems:
        if (p.line, p.col, p.message) not in seen:
            seen.add((p.line, p.col, p.message))
            out.append(p)
    return sorted(out, key=lambda p: (p.line, p.col))


def render_schema() -> str:
    """schemas/generate.schema.json, exactly as shipped."""
    return json.dumps(GENERATE_SCHEMA, indent=2) + "\n"


def main() -> None:
    target = Path("schemas") / "generate.schema.json"
    text = render_schema()
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

"""The ``oig generate`` config file: flat YAML mapped onto dataclasses in one place.

The JSON Schema (``oig.generate.schema``) is the one written meaning of every key; ``python -m
oig.generate.config`` renders it to ``schemas/generate.schema.json`` for editors. Loading checks the
document against it, reports every problem at once with its line, and names the nearest valid key for
a typo; then a few checks no schema can express (names that must be unique, providers that must exist).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from oig import yamlsafe
from oig.data import messages
from oig.data.messages import did_you_mean
from oig.errors import InvalidInput, Problem
from oig.generate.schema import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROVIDER,
    DEFAULT_SEED,
    GENERATE_SCHEMA,
    JUDGE_KINDS,
    TOGETHER_KEY_ENV,
    main,
)

# Credentials of other services: a config naming one would send it to base_url.
NOT_CHAT_KEYS = frozenset({"GITHUB_TOKEN", "GH_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ACTIONS_RUNTIME_TOKEN",
                           "ACTIONS_ID_TOKEN_REQUEST_TOKEN"})
# Generation settings passed through to the chat completions API, the same for both provider kinds.
BATCH_KEYS = ("batch_size", "poll_s", "flush_s")  # settings of a provider in `mode: batch` only
VLLM_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")  # vllm.LLM's, for kind vllm
# What a kind vllm provider has no use for: it makes no HTTP call.
HTTP_KEYS = ("base_url", "api_key_env", "concurrency", "requests_per_minute", "max_attempts", "timeout_s", "backoff_s",
             "mode", "poll_s")
SETTING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "frequency_penalty")

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
    mode: str = "online"  # online | batch
    batch_size: int = 1000
    poll_s: float = 30.0
    flush_s: float = 2.0
    engine: dict = field(default_factory=dict)  # kind vllm: VLLM_KEYS that were set, for vllm.LLM(...)


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
                                backoff_s=float(p.get("backoff_s", 1.0)), mode=p.get("mode", "online"),
                                batch_size=p.get("batch_size", 256 if p["kind"] == "vllm" else 1000),
                                poll_s=float(p.get("poll_s", 30)),
                                flush_s=float(p.get("flush_s", 0.05 if p["kind"] == "vllm" else 2)),
                                engine={k: p[k] for k in VLLM_KEYS if k in p})
                 for name, p in (doc.get("providers") or {}).items()}
    if "providers" not in doc:
        providers[DEFAULT_PROVIDER] = Provider(DEFAULT_PROVIDER, "together", api_key_env=TOGETHER_KEY_ENV)
    for name, raw in (doc.get("providers") or {}).items():
        for key in raw:
            if raw["kind"] == "vllm" and key in HTTP_KEYS:
                add(("providers", name, key), f"provider '{name}': `{key}` does not apply to kind vllm (the engine "
                                              "runs in this process, no server); remove it", key=True)
            elif raw["kind"] != "vllm" and key in VLLM_KEYS:
                add(("providers", name, key), f"provider '{name}': `{key}` applies to kind vllm only; remove it",
                    key=True)
            elif key in BATCH_KEYS and raw.get("mode", "online") != "batch" and not (
                    raw["kind"] == "vllm" and key != "poll_s"):
                add(("providers", name, key), f"provider '{name}': `{key}` applies to `mode: batch`; remove it "
                                              "or add `mode: batch`", key=True)
    for name, p in providers.items():
        if p.api_key_env in NOT_CHAT_KEYS:
            add(("providers", name, "api_key_env"), f"provider '{name}': {p.api_key_env} is not a chat API key and "
                                                    "is never sent to a model server; name the variable that holds "
                                                    "this provider's key")
        if p.kind == "openai" and not p.base_url:
            add(("providers", name), f"provider '{name}' is an OpenAI-compatible server: give its `base_url` "
                                     "(e.g. http://127.0.0.1:8000, without /v1)", key=True)
        if p.kind == "vllm":
            continue
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


if __name__ == "__main__":
    main()

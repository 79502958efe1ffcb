"""training.yaml: hyperparameters and mixture weights, mapped onto one dataclass in one place.

Two spellings are accepted for each section: the seed's list of one-key mappings
(``Training: [{lr: 0.0001}, {momentum: 0.99}]``) and a plain mapping (``Training: {lr: 0.0001}``).
Training keys are TRL ``SFTConfig`` field names, the short names in ``schemas.ALIASES`` and oig's own
keys (``schemas.OIG_KEYS``); anything else is an error that names the nearest valid key. ``Eval`` (how
``oig eval`` measures a model) and ``Gate`` (what a release must pass) follow ``schemas.EVAL_SECTION_SCHEMA`` and
``schemas.GATE_SECTION_SCHEMA``, with the same kind of messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from oig import yamlsafe
from oig.data import messages
from oig.data.messages import did_you_mean
from oig.data.schemas import (
    ALIASES,
    EVAL_SECTION_SCHEMA,
    GATE_SECTION_SCHEMA,
    MAX_MIXTURE_TOTAL,
    OIG_KEYS,
    REFUSED_FIELDS,
    TRACKERS,
    training_schema,
)
from oig.errors import InvalidInput, Problem

TOP_KEYS = ("Training", "Mixture", "MixtureTotal", "Eval", "Gate")
DEFAULT_SEED = 42


@dataclass
class LmEvalConfig:
    tasks: list[str]
    limit: int | None = None  # examples per task
    num_fewshot: int | None = None  # None: each task's own
    batch_size: int = 1
    include_path: str | None = None  # a folder of custom task YAMLs, relative to the repository


@dataclass
class JudgeConfig:
    model: str
    base_url: str  # an OpenAI-compatible server, without /v1
    api_key_env: str | None = None  # the variable's name; the key itself never appears in YAML


@dataclass
class EvalConfig:
    suites: str = "evals"  # folder of eval suites, relative to the repository
    compare: bool = True  # evaluate the previous model too
    lm_eval: LmEvalConfig | None = None
    judge: JudgeConfig | None = None
    comparison_suite: str | None = None


@dataclass
class GateConfig:
    max_drop: dict[str, float] = field(default_factory=dict)  # suite (or "default") -> largest allowed drop
    max_bugs_regressed: int = 0
    min_win_rate: float | None = None

    def allowed_drop(self, suite: str) -> float | None:
        """The largest drop allowed for this suite's score; None when the gate does not limit it."""
        return self.max_drop.get(suite, self.max_drop.get("default"))


@dataclass
class TrainingConfig:
    path: Path
    training: dict = field(default_factory=dict)  # SFTConfig field name -> value (aliases resolved)
    base_model: str | None = None
    mixture: dict[str, float] | None = None  # slice name -> weight; None: the plain union of all slices
    mixture_total: int | None = None
    seed: int = DEFAULT_SEED
    oig: dict = field(default_factory=dict)  # oig's own Training keys (momentum, eval_size, lora, ...)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)


@cache
def _training_validator():
    import jsonschema_rs

    props = training_schema()["properties"]["Training"]["anyOf"][0]["properties"]
    return props, {name: jsonschema_rs.validator_for(schema) for name, schema in props.items()}


def _expected(schema: dict) -> str:
    return messages.expected(schema, words=messages.SHORT_TYPE_WORDS, quote=repr, ranges=True)


def _type_ok(schema: dict, value: object) -> bool:
    """Whether the value has a type the schema allows (so only a bound or a choice is wrong)."""
    import jsonschema_rs

    if "type" not in schema or isinstance(value, float) and math.isnan(value):
        return False
    return jsonschema_rs.is_valid({"type": schema["type"]}, value)


def _entries(section: object, name: str, problems: list, where) -> list[tuple[str, object, tuple]]:
    """(key, value, yaml path of the key) for a mapping or a list of one-key mappings."""
    if section is None:
        return []
    if isinstance(section, dict):
        return [(str(k), v, (name, k)) for k, v in section.items()]
    if isinstance(section, list):
        out = []
        for i, item in enumerate(section):
            if isinstance(item, dict) and len(item) == 1:
                (k, v), = item.items()
                out.append((str(k), v, (name, i, k)))
            else:
                problems.append(where((name, i), f"each item of {name} must be one `key: value` mapping"))
        return out
    problems.append(where((name,), f"{name} must be a mapping (key: value lines) or a list of one-key mappings"))
    return []


def _remote_code_paths(value: object, ypath: tuple) -> list[tuple]:
    """YAML paths of every ``trust_remote_code`` key nested anywhere in a Training value."""
    found: list[tuple] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "trust_remote_code":
                found.append(ypath + (k,))
            else:
                found += _remote_code_paths(v, ypath + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _remote_code_paths(v, ypath + (i,))
    elif isinstance(value, str) and "trust_remote_code" in value:  # a JSON string form of the kwargs
        found.append(ypath)
    return found


def parse_training_config(data: bytes, path: Path, display: str | None = None, slice_names=None) -> tuple[TrainingConfig | None, list[Problem]]:
    """Check training.yaml and shape it. ``slice_names``, when given, are the slices that exist."""
    display = display or str(path)
    problems: list[Problem] = []
    text_box: list[str] = []

    def where(ypath: tuple, message: str, severity: str = "error", key: bool = True) -> Problem:
        line, col = yamlsafe.locate(text_box[0], ypath, key=key) if text_box else (0, 0)
        return Problem(display, line, col, severity, message)

    try:
        text_box.append(yamlsafe.decode(data))
        doc = yamlsafe.load(text_box[0])
    except yamlsafe.YamlError as exc:
        return None, [Problem(display, exc.line, exc.col, "error", exc.message)]
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        return None, [Problem(display, 1, 1, "error", "training.yaml must be a mapping with Training and Mixture sections")]
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(where((key,), f"unknown section '{key}'{did_you_mean(str(key), TOP_KEYS)}"
                                  f" (sections: {', '.join(TOP_KEYS)})"))

    # --- Training: SFTConfig fields, aliases and oig keys ------------------------------------------
    props, validators = _training_validator()
    training: dict = {}
    oig: dict = {}
    origin: dict[str, str] = {}
    at: dict[str, tuple] = {}  # where each setting is written
    for key, value, ypath in _entries(doc.get("Training"), "Training", problems, where):
        if key in REFUSED_FIELDS:
            problems.append(where(ypath, f"Training key '{key}' is not allowed: {REFUSED_FIELDS[key]}"))
            continue
        refused = _remote_code_paths(value, ypath)
        for path in refused:  # e.g. model_init_kwargs: {trust_remote_code: true}
            problems.append(where(path, f"'trust_remote_code' (in {key}) is not allowed: "
                                  f"{REFUSED_FIELDS['trust_remote_code']}"))
        if key not in props:
            problems.append(where(ypath, f"unknown Training key '{key}'{did_you_mean(key, props)}"))
            continue
        if key == "model_init_kwargs" and isinstance(value, dict):
            allowed = props[key]["properties"]
            for k in value:
                if k not in allowed and k != "trust_remote_code":
                    refused.append(k)
                    problems.append(where(ypath + (k,), f"model_init_kwargs key '{k}' is not allowed"
                                          f"{did_you_mean(str(k), allowed)} (allowed: {', '.join(allowed)}); "
                                          "the rest of loading is oig's"))
        if refused:
            continue
        if not validators[key].is_valid(value) or (isinstance(value, float) and math.isnan(value)):
            if key == "report_to":
                problems.append(where(ypath, f"Training key 'report_to' must be none, {', '.join(TRACKERS)} or a list "
                                      f"of them, not {value!r}", key=False))
            elif _type_ok(props[key], value):  # the right kind of value, out of bounds
                problems.append(where(ypath, f"Training key '{key}' must be {_expected(props[key])}, not {value!r}",
                                      key=False))
            else:
                problems.append(where(ypath, messages.must_be(f"Training key '{key}'", _expected(props[key]), value,
                                                              fix="; quote text, write numbers without quotes"),
                                      key=False))
            continue
        target = ALIASES.get(key, key)
        if target in origin:
            problems.append(where(ypath, f"'{key}' sets {target}, which '{origin[target]}' already sets; keep one"))
            continue
        origin[target], at[target] = key, ypath
        if target in OIG_KEYS:
            oig[target] = value
        else:
            training[target] = value
    base_model = oig.pop("base_model", None)
    problems += [where(at[key], message) for key, message in _distributed_problems(training, oig)]
    if oig.get("load_in_4bit"):
        oig["lora"] = True

    # --- Mixture: slice name -> weight ------------------------------------------------------------
    mixture: dict[str, float] | None = None
    if "Mixture" in doc and doc["Mixture"] is not None:
        mixture = {}
        for name, weight, ypath in _entries(doc["Mixture"], "Mixture", problems, where):
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
                problems.append(where(ypath, f"the weight of slice '{name}' must be a number >= 0, not {weight!r}", key=False))
                continue
            if name in mixture:
                problems.append(where(ypath, f"slice '{name}' is listed twice in Mixture; keep one"))
                continue
            if slice_names is not None and name not in slice_names:
                problems.append(where(ypath, f"Mixture names slice '{name}', but there is no data/{name}.yaml"
                                      f"{did_you_mean(name, slice_names)}"))
                continue
            mixture[name] = float(weight)
        listed = sum(mixture.values())
        if listed > 1 + 1e-9:
            problems.append(where(("Mixture",), f"Mixture weights add up to {listed:g}, more than 1: they are scaled to "
                                  "add up to 1 and slices not listed get nothing", "warning"))
        elif 0 < listed < 1 - 1e-9 and slice_names is not None and set(slice_names) <= set(mixture):
            problems.append(where(("Mixture",), f"Mixture weights add up to {listed:g}, less than 1, and every slice "
                                  f"is listed: they are scaled up to add up to 1 (each weight divided by {listed:g})",
                                  "warning"))
        if slice_names is not None:
            for name in sorted(slice_names):
                no_share = mixture.get(name) == 0 or (name not in mixture and listed >= 1 - 1e-9)
                if no_share:
                    ypath = ("Mixture", name) if name in mixture else ("Mixture",)
                    problems.append(where(ypath, f"slice '{name}' gets no share of the mixture"
                                          + ("" if name in mixture else " (the listed weights already add up to 1)"),
                                          "warning"))

    total = doc.get("MixtureTotal")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= MAX_MIXTURE_TOTAL):
        problems.append(where(("MixtureTotal",), f"MixtureTotal must be a whole number from 1 to {MAX_MIXTURE_TOTAL:,}, "
                              f"not {total!r}", key=False))
        total = None

    # --- Eval and Gate ---------------------------------------------------------------------------
    eval_doc = _section(doc, "Eval", EVAL_SECTION_SCHEMA, problems, where)
    gate_doc = _section(doc, "Gate", GATE_SECTION_SCHEMA, problems, where)
    eval_config, gate = _eval_and_gate(eval_doc, gate_doc, problems, where)

    seed = training.get("seed", DEFAULT_SEED)
    if any(p.severity == "error" for p in problems):
        return None, problems
    config = TrainingConfig(path=path, training=training, base_model=base_model, mixture=mixture,
                            mixture_total=total, seed=int(seed), oig=oig, eval=eval_config, gate=gate)
    return config, problems


def _distributed_problems(training: dict, oig: dict) -> list[tuple[str, str]]:
    """(key, message) for the ``distributed`` settings that cannot go together with the others."""
    mode, offload = oig.get("distributed"), oig.get("distributed_offload", "none")
    sharded = mode in ("fsdp", "zero3")  # the weights are split across the GPUs
    init = training.get("model_init_kwargs")
    attention = str(init.get("attn_implementation", "")) if isinstance(init, dict) else ""
    found = []
    if offload != "none" and mode not in ("fsdp", "zero2", "zero3"):
        found.append(("distributed_offload", f"distributed_offload: {offload} needs `distributed: fsdp`, `zero2` or "
                      "`zero3` (DDP keeps everything on each GPU)"))
    elif offload == "optimizer" and mode == "fsdp":
        found.append(("distributed_offload", "FSDP offloads the weights, gradients and optimizer state together: "
                      "use `distributed_offload: all`, or `zero2`/`zero3` to offload the optimizer alone"))
    elif offload == "all" and mode == "zero2":
        found.append(("distributed_offload", "ZeRO-2 does not shard the weights, so it cannot offload them: use "
                      "`distributed_offload: optimizer`, or `distributed: zero3`"))
    if sharded and oig.get("method") == "dpo":
        found.append(("distributed", f"method: dpo copies the model as its reference, which {mode} cannot shard: "
                      "use `distributed: ddp` or `zero2` for DPO"))
    if sharded and (oig.get("lora") or oig.get("load_in_4bit")):
        found.append(("distributed", f"LoRA adapters are merged into the saved model (QLoRA's saved alone), which "
                      f"oig does only with whole weights on each GPU, and {mode} shards them: use `distributed: ddp` "
                      "or `zero2` with lora"))
    if mode and oig.get("backend") == "together":
        found.append(("distributed", "backend: together trains on Together's machines: remove `distributed`"))
    if sharded and training.get("packing") and not attention.startswith("flash"):
        found.append(("packing", f"packing is checked on the loaded model before training, which {mode} shards "
                      "across the GPUs: set `model_init_kwargs: {attn_implementation: flash_attention_2}` (it keeps "
                      "packed conversations apart by their positions), or `packing: false`"))
    return found


def _section(doc: dict, name: str, schema: dict, problems: list, where) -> dict | None:
    """A section checked against its schema, as a plain mapping (None when absent or wrong)."""
    import jsonschema_rs

    if doc.get(name) is None:
        return None
    section: dict = {}
    at: dict[str, tuple] = {}  # where each key is: (name, key), or (name, i, key) in the list form
    ok = True
    for key, value, ypath in _entries(doc[name], name, problems, where):
        if key in section:
            problems.append(where(ypath, f"'{key}' is set twice in {name}; keep one"))
            ok = False
        section[key], at[key] = value, ypath
    wrapper = {"type": "object", "properties": {name: schema}}
    for err in jsonschema_rs.validator_for(wrapper).iter_errors({name: section}):
        path = tuple(err.instance_path)
        if _numbers(messages.value_at({name: section}, path), path):
            continue  # NaN or an infinity: said once, below
        for ypath, key, message in _schema_messages(err, {name: section}, wrapper, path):
            problems.append(where(at.get(ypath[1], ypath[:2]) + ypath[2:] if len(ypath) > 1 else ypath, message,
                                  key=key))
        ok = False
    for path, value in _numbers(section, (name,)):
        problems.append(where(at[path[1]] + path[2:], f"{messages.path_text(path)} must be a finite number, "
                              f"not {value}", key=False))
        ok = False
    return section if ok else None


def _schema_messages(err, doc: dict, schema: dict, path: tuple) -> list[tuple[tuple, bool, str]]:
    """(yaml path, point at the key?, message) for one jsonschema-rs error in Eval or Gate."""
    common = messages.schema_problem(err, doc, schema, "training.yaml")
    if common is not None:
        return [common]
    kind = type(err.kind).__name__
    where = messages.path_text(path)
    sub, value = messages.schema_at(schema, path), messages.value_at(doc, path)
    if kind == "AnyOf":  # e.g. max_drop: a mapping was meant, so say what is wrong inside it
        import jsonschema_rs

        for branch in sub["anyOf"]:
            if _type_ok(branch, value):
                return [(path + tuple(e.instance_path), False,
                         _wrong(messages.path_text(path + tuple(e.instance_path)),
                                messages.schema_at(branch, tuple(e.instance_path)),
                                messages.value_at(value, tuple(e.instance_path))))
                        for e in jsonschema_rs.validator_for(branch).iter_errors(value)]
    if kind == "Pattern" and path[-1] == "base_url":
        return [(path, False, f"{where} must be an http:// or https:// URL, not {value!r}")]
    if kind == "Pattern":
        return [(path, False, f"{where} must be an environment variable's name (A-Z, 0-9, _), not {value!r}")]
    if kind == "MinLength":
        return [(path, False, f"{where} is empty; write the text or remove the key")]
    if kind in ("MinItems", "MinProperties"):
        return [(path, False, f"{where} is empty; add entries or remove it")]
    return [(path, False, _wrong(where, sub, value))]


def _wrong(where: str, schema: dict, value: object) -> str:
    """``X must be a number at least 0 and at most 1, not 2``; with the kind of value when it is the wrong kind."""
    if _type_ok(schema, value):  # the right kind of value, out of bounds
        return f"{where} must be {_expected(schema)}, not {value!r}"
    return messages.must_be(where, _expected(schema), value, fix=messages.quote_hint(schema.get("type"), value))


def _numbers(node: object, path: tuple) -> list[tuple[tuple, float]]:
    """NaN and infinities pass a schema's number type; no setting means them."""
    if isinstance(node, float) and not math.isfinite(node):
        return [(path, node)]
    if isinstance(node, dict):
        return [found for k, v in node.items() for found in _numbers(v, path + (k,))]
    return []


def _repo_folder(value: str) -> bool:
    """A folder inside the repository: relative, and never up out of it."""
    return not (value.startswith(("/", "\\")) or ":" in value or ".." in Path(value.replace("\\", "/")).parts)


def _eval_and_gate(eval_doc: dict | None, gate_doc: dict | None, problems: list, where
                   ) -> tuple[EvalConfig, GateConfig]:
    """The checked Eval and Gate sections as dataclasses, and what the schema cannot say."""
    ev, gate = dict(eval_doc or {}), dict(gate_doc or {})
    lm = ev.pop("lm_eval", None)
    judge = ev.pop("judge", None)
    eval_config = EvalConfig(**ev, lm_eval=LmEvalConfig(**lm) if lm else None,
                             judge=JudgeConfig(**judge) if judge else None)
    for value, ypath in ((eval_config.suites, ("Eval", "suites")),
                         (lm and lm.get("include_path"), ("Eval", "lm_eval", "include_path"))):
        if value and not _repo_folder(value):
            problems.append(where(ypath, f"{messages.path_text(ypath)} must be a folder in the repository, "
                                  f"relative to it (no absolute path, no '..'), not {value!r}", key=False))
    if (eval_config.judge is None) != (eval_config.comparison_suite is None) and eval_doc is not None:
        have, lacking = ("judge", "comparison_suite") if eval_config.judge else ("comparison_suite", "judge")
        problems.append(where(("Eval", have), f"Eval.{have} needs Eval.{lacking} too: the judged comparison "
                              "asks the judge about both models' answers to that suite's prompts"))
    max_drop = gate.get("max_drop")
    gate_config = GateConfig(max_drop=max_drop if isinstance(max_drop, dict) else
                             ({} if max_drop is None else {"default": max_drop}),
                             max_bugs_regressed=gate.get("max_bugs_regressed", 0),
                             min_win_rate=gate.get("min_win_rate"))
    if gate_config.min_win_rate is not None and eval_config.judge is None:
        problems.append(where(("Gate", "min_win_rate"), "Gate.min_win_rate needs a judged comparison: set "
                              "Eval.judge and Eval.comparison_suite"))
    return eval_config, gate_config


def load_training_config(path: Path, slice_names=None) -> TrainingConfig:
    """Read and check training.yaml; a missing file means defaults. Raises InvalidInput on errors."""
    path = Path(path)
    if not path.exists():
        return TrainingConfig(path=path)
    config, problems = parse_training_config(path.read_bytes(), path, slice_names=slice_names)
    if config is None:
        raise InvalidInput(problems)
    return config

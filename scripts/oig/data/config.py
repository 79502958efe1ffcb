"""training.yaml: hyperparameters and mixture weights, mapped onto one dataclass in one place.

Two spellings are accepted for each section: the seed's list of one-key mappings
(``Training: [{lr: 0.0001}, {momentum: 0.99}]``) and a plain mapping (``Training: {lr: 0.0001}``).
Training keys are TRL ``SFTConfig`` field names, the short names in ``schemas.ALIASES`` and oig's own
keys (``schemas.OIG_KEYS``); anything else is an error that names the nearest valid key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from oig import yamlsafe
from oig.data import messages
from oig.data.messages import did_you_mean
from oig.data.schemas import ALIASES, MAX_MIXTURE_TOTAL, OIG_KEYS, REFUSED_FIELDS, training_schema
from oig.errors import InvalidInput, Problem

TOP_KEYS = ("Training", "Mixture", "MixtureTotal")
DEFAULT_SEED = 42


@dataclass
class TrainingConfig:
    path: Path
    training: dict = field(default_factory=dict)  # SFTConfig field name -> value (aliases resolved)
    base_model: str | None = None
    mixture: dict[str, float] | None = None  # slice name -> weight; None: the plain union of all slices
    mixture_total: int | None = None
    seed: int = DEFAULT_SEED
    oig: dict = field(default_factory=dict)  # oig's own Training keys (momentum, eval_size, lora, ...)


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
                problems.append(where(ypath, f"Training key 'report_to' may only be 'none', not {value!r}: experiment "
                                      "trackers are the maintainers' to set up on the runner, never training.yaml's",
                                      key=False))
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
        origin[target] = key
        if target in OIG_KEYS:
            oig[target] = value
        else:
            training[target] = value
    base_model = oig.pop("base_model", None)
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

    seed = training.get("seed", DEFAULT_SEED)
    if any(p.severity == "error" for p in problems):
        return None, problems
    config = TrainingConfig(path=path, training=training, base_model=base_model, mixture=mixture,
                            mixture_total=total, seed=int(seed), oig=oig)
    return config, problems


def load_training_config(path: Path, slice_names=None) -> TrainingConfig:
    """Read and check training.yaml; a missing file means defaults. Raises InvalidInput on errors."""
    path = Path(path)
    if not path.exists():
        return TrainingConfig(path=path)
    config, problems = parse_training_config(path.read_bytes(), path, slice_names=slice_names)
    if config is None:
        raise InvalidInput(problems)
    return config

"""The hyperparameters `training.yaml` accepts: every field of TRL's ``SFTConfig`` by its own name.

``oig validate`` must not import TRL (it takes seconds and is not installed in data-PR CI), so the
field list is generated once from the installed TRL and shipped as ``sftconfig_fields.json``.
Regenerate after upgrading TRL (a test fails when the shipped list is stale)::

    python -m oig.data.sftfields
"""

from __future__ import annotations

import json
import types
import typing
from functools import cache
from pathlib import Path

from oig.files import write_atomic

FIELDS_FILE = Path(__file__).with_name("sftconfig_fields.json")

# Fields that make no sense in a shared training.yaml: the runner decides them, or they carry secrets.
EXCLUDED = {"output_dir", "hub_token", "push_to_hub_token", "push_to_hub_organization", "push_to_hub_model_id"}

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}


def _json_types(tp: object) -> list[str] | None:
    """JSON Schema types for a dataclass field annotation; None when anything goes."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        out: list[str] = []
        for arg in typing.get_args(tp):
            sub = _json_types(arg)
            if sub is None:
                return None
            out += [t for t in sub if t not in out]
        return out
    if origin is typing.Literal:
        return sorted({_JSON_TYPES.get(type(a), "null") if a is not None else "null" for a in typing.get_args(tp)})
    if tp is type(None):
        return ["null"]
    base = origin or tp
    if base in _JSON_TYPES:
        return [_JSON_TYPES[base]]
    if isinstance(base, type) and issubclass(base, str):  # str-valued enums such as IntervalStrategy
        return ["string"]
    return None


def _default(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return getattr(value, "value", value)
    return None


def generate() -> dict[str, dict]:
    """Describe every SFTConfig field (needs TRL installed)."""
    import dataclasses

    from trl import SFTConfig

    hints = typing.get_type_hints(SFTConfig)
    out: dict[str, dict] = {}
    for f in dataclasses.fields(SFTConfig):
        if not f.init or f.name.startswith("_") or f.name in EXCLUDED:
            continue
        entry: dict = {"help": " ".join(str(f.metadata.get("help", "")).split())}
        tps = _json_types(hints.get(f.name, f.type))
        if tps:
            entry["type"] = tps
        if f.default is not dataclasses.MISSING:
            entry["default"] = _default(f.default)
        choices = f.metadata.get("choices")
        if choices:
            entry["enum"] = [getattr(c, "value", c) for c in choices]
        out[f.name] = entry
    return dict(sorted(out.items()))


@cache
def fields() -> dict[str, dict]:
    """The shipped field list: name -> {help, type?, default?, enum?}."""
    return json.loads(FIELDS_FILE.read_text(encoding="utf-8"))


def main() -> None:
    import trl

    data = generate()
    write_atomic(FIELDS_FILE, json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(data)} SFTConfig fields from trl {trl.__version__} to {FIELDS_FILE.name}")


if __name__ == "__main__":
    main()

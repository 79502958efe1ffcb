"""The words of a config error, one way: where a value is, what it is, what it should be, the nearest name.

Slice files (``oig.data.validate``), training.yaml (``oig.data.config``) and the generate config
(``oig.generate.config``) build their schema errors from these, so one mistake reads the same in
every file: ``IOPairs[0].output must be text, not a number; put the text in quotes``,
``unknown key 'outptu' at IOPairs[0]; did you mean 'output'? (valid keys: input, output)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

# JSON Schema types as a contributor writing YAML reads them.
TYPE_WORDS = {"string": "text", "object": "a mapping (key: value lines)", "array": "a list (lines starting with -)",
              "integer": "a whole number", "number": "a number", "boolean": "true or false", "null": "empty"}
# The short forms training.yaml's messages use: a Training key's type often lists several ("true or false or null").
SHORT_TYPE_WORDS = {**TYPE_WORDS, "object": "a mapping", "array": "a list", "null": "null"}


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a mistyped word (the same word in other case first), or None."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the nearest candidate, or nothing."""
    near = nearest(word, candidates)
    return f"; did you mean '{near}'?" if near else ""


def path_text(path: tuple, empty: str = "the file") -> str:
    """``IOPairs[3].output``, as a contributor would point at it; ``empty`` for the document itself."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or empty


def value_at(doc: object, path: tuple) -> object:
    """The value at a path of keys and list indexes, or None when there is none."""
    for p in path:
        try:
            doc = doc[p]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def schema_at(schema: dict, path: tuple) -> dict:
    """The part of a JSON Schema that describes the value at ``path`` ({} where it says nothing)."""
    sub = schema
    for p in path:
        if isinstance(p, int):
            sub = sub.get("items", {})
        elif p in sub.get("properties", {}):
            sub = sub["properties"][p]
        else:
            extra = sub.get("additionalProperties")
            sub = extra if isinstance(extra, dict) else {}
    return sub


def valid_keys(schema: dict, path: tuple) -> list[str]:
    """The keys the schema allows in the mapping at ``path`` (of a oneOf, every branch's)."""
    sub = schema_at(schema, path)
    if "oneOf" in sub:
        return [k for branch in sub["oneOf"] for k in branch.get("properties", {})]
    return list(sub.get("properties", {}))


def kind_of(value: object) -> str:
    """What a YAML value is, in the words of the messages: text, a number, a list, ..."""
    if value is None:
        return "empty"
    return {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)  # fmt: skip


def type_names(types: object) -> list[str]:
    """JSON Schema type names from a schema's ``type`` or a jsonschema-rs error's types."""
    if not types:
        return []
    items = types if isinstance(types, list | tuple) else [types]
    return [str(t).rsplit(".", 1)[-1].lower() for t in items]


def type_words(types: object, words: dict[str, str] = TYPE_WORDS, none: str = "a valid value") -> str:
    """``text or a whole number``; ``none`` when no type is known."""
    return " or ".join(words.get(n, n) for n in type_names(types)) or none


def value_range(schema: dict) -> str:
    """`` above 0 and at most 100``: the bounds a schema sets on a number, or nothing."""
    low = ("above", schema["exclusiveMinimum"]) if "exclusiveMinimum" in schema else ("at least", schema.get("minimum"))
    high = ("below", schema["exclusiveMaximum"]) if "exclusiveMaximum" in schema else ("at most", schema.get("maximum"))
    parts = [f"{word} {value:,}" if isinstance(value, int) else f"{word} {value:g}"
             for word, value in (low, high) if value is not None]
    return (" " + " and ".join(parts)) if parts else ""


def expected(schema: dict, *, words: dict[str, str] = TYPE_WORDS, quote: Callable[[object], str] = str,
             ranges: bool = False) -> str:
    """What a value under ``schema`` must be: ``one of a, b``, ``a mapping of k1, k2``, ``a number at most 2``."""
    if "enum" in schema:
        return "one of " + ", ".join(quote(v) for v in schema["enum"])
    if schema.get("type") == "object" and "properties" in schema and schema.get("additionalProperties") is False:
        return "a mapping of " + ", ".join(schema["properties"])
    if schema.get("type") is None and "anyOf" in schema:
        kinds = " or ".join(expected(s, words=words, quote=quote, ranges=ranges) for s in schema["anyOf"])
    else:
        kinds = type_words(schema.get("type"), words)
    return kinds + (value_range(schema) if ranges else "")


def quote_hint(types: object, value: object) -> str:
    """``; put the text in quotes`` when text was wanted and YAML read a number, true/false or nothing."""
    wants_text = "string" in type_names(types)
    return "; put the text in quotes" if wants_text and (isinstance(value, bool | int | float) or value is None) else ""


def must_be(subject: str, wanted: str, value: object, *, show_value: bool = True, fix: str = "") -> str:
    """``subject must be <wanted>, not <what it is> (<value>)<fix>``."""
    shown = f" ({value!r})" if show_value else ""
    return f"{subject} must be {wanted}, not {kind_of(value)}{shown}{fix}"


def unknown_key(bad: str, valid: list[str], path: tuple) -> str:
    scope = path_text(path) if path else "top level"
    return f"unknown key '{bad}' at {scope}{did_you_mean(bad, valid)} (valid keys: {', '.join(valid)})"


def schema_problem(err, doc: object, schema: dict, empty: str) -> tuple[tuple, bool, str] | None:
    """(yaml path, point at the key?, message) for the jsonschema-rs errors every config words alike:
    an unknown key, a missing key, an unknown column role. None for any other error."""
    path = tuple(err.instance_path)
    name = type(err.kind).__name__
    if name == "AdditionalProperties":
        bad = str(err.kind.unexpected[0])
        return path + (bad,), True, unknown_key(bad, valid_keys(schema, path), path)
    if name == "Required":
        return path, False, f"{path_text(path, empty)} is missing the required key '{err.kind.property}'"
    if name == "PropertyNames":
        roles = schema_at(schema, path).get("propertyNames", {}).get("enum", [])
        value = value_at(doc, path)
        bad = next((k for k in value if k not in roles), None) if isinstance(value, dict) else None
        if bad is not None:
            return path + (bad,), True, (f"unknown column role '{bad}'{did_you_mean(str(bad), roles)}"
                                         f" (roles: {', '.join(roles)})")
    return None

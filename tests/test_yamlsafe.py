import math
import time

import pytest
import yaml

from oig import yamlsafe
from oig.yamlsafe import YamlError, load, locate


def test_plain_data_matches_pyyaml_for_ordinary_documents():
    text = "IOPairs:\n  - input: 'a: b'\n    output: |\n      line one\n      line two\n  - {input: x, output: y}\n"
    assert load(text) == yaml.load(text, Loader=yaml.CSafeLoader)


def test_yaml_1_2_core_scalars():
    doc = load("a: yes\nb: no\nc: on\nd: 1e-4\ne: 0x1F\nf: 0o17\ng: ~\nh:\ni: true\nj: '3'\nk: -.inf\nl: 007\nm: 1_000\n")
    assert doc == {"a": "yes", "b": "no", "c": "on", "d": 0.0001, "e": 31, "f": 15, "g": None, "h": None,
                   "i": True, "j": "3", "k": -math.inf, "l": 7, "m": "1_000"}


@pytest.mark.parametrize(
    ("text", "message", "line", "col"),
    [
        ("a: &x 1\nb: *x\n", "anchors", 1, 4),
        ("a: [1]\nb: *x\n", "aliases", 2, 4),
        ("a: !!python/object:os.system x\n", "tags", 1, 4),
        ("a: !foo {b: 1}\n", "tags", 1, 4),
        ("a: ! x\n", "tags", 1, 4),
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'", 3, 1),
        ("--- 1\n--- 2\n", "more than one YAML document", 2, 1),
        ("%YAML 1.1\n--- a\n", "directives", 1, 1),
        ("? [a]\n: 1\n", "mapping key must be plain text", 1, 3),
        ("<<: {a: 1}\n", "merge keys", 1, 1),
        ("a: [\n", "YAML syntax error", 2, 1),
        ("a: 'x\x00'\n", "NUL", 1, 6),
    ],
)
def test_hostile_yaml_is_refused_with_a_position(text, message, line, col):
    with pytest.raises(YamlError) as exc:
        load(text.encode())
    assert message in exc.value.message
    assert (exc.value.line, exc.value.col) == (line, col)


@pytest.mark.parametrize("text", ["[" * 100_000, "- " * 1000 + "x\n", "a: " + "{b: " * 1000])
def test_deep_nesting_is_refused_with_a_line(text):
    # Which layer stops it first (libyaml's own flow limit in newer PyYAML, or oig's depth check) and at
    # which column is not the point: the refusal, oig's sentence and a position in the file are.
    with pytest.raises(YamlError) as exc:
        load(text.encode())
    assert "nesting deeper than 32" in exc.value.message
    assert exc.value.line >= 1 and exc.value.col >= 1


def test_encoding_rules():
    assert load(b"\xef\xbb\xbfa: 1\n") == {"a": 1}  # a UTF-8 BOM is fine
    with pytest.raises(YamlError, match="UTF-16"):
        load("a: 1".encode("utf-16"))
    with pytest.raises(YamlError, match="invalid UTF-8 byte 0xff") as exc:
        load(b"a: 1\nb: \xff\n")
    assert (exc.value.line, exc.value.col) == (2, 4)


def test_limits_bound_time_and_memory(monkeypatch):
    monkeypatch.setattr(yamlsafe, "MAX_STRING", 10)
    with pytest.raises(YamlError, match="the limit is 10"):
        load("a: " + "x" * 11)
    monkeypatch.setattr(yamlsafe, "MAX_NODES", 1000)
    start = time.perf_counter()
    with pytest.raises(YamlError, match="more than 1,000 values"):
        load("[" + "{}," * 100_000 + "]")
    assert time.perf_counter() - start < 2
    monkeypatch.setattr(yamlsafe, "MAX_BYTES", 100)
    with pytest.raises(YamlError, match="the limit is 100"):
        load(b"a: " + b"x" * 200)


def test_empty_document_is_none():
    assert load(b"") is None
    assert load(b"# only a comment\n") is None


def test_locate_finds_keys_values_and_falls_back_to_parents():
    text = "IOPairs:\n- input: a\n  output: b\n- input: c\n  outptu: d\nHuggingFace:\n  - link: x\n"
    assert locate(text, ["IOPairs", 1, "outptu"], key=True) == (5, 3)
    assert locate(text, ["IOPairs", 1]) == (4, 3)
    assert locate(text, ["HuggingFace", 0, "link"]) == (7, 11)
    assert locate(text, ["IOPairs", 7, "input"]) == (2, 1)  # no such item: the nearest existing parent
    assert locate("a: {b: [1, 2, {c: 3}]}", ["a", "b", 2, "c"]) == (1, 19)


@pytest.mark.parametrize(
    ("text", "message", "line", "col"),
    [
        ("IOPairs:\n\t- input: a\n", "YAML indents with spaces, not tabs: replace the tab at line 2 col 1 with spaces",
         2, 1),
        ("IOPairs:\n  - input: a\n  \toutput: b\n",
         "YAML indents with spaces, not tabs: replace the tab at line 3 col 3 with spaces", 3, 3),
        ("IOPairs:\n  - input: a\n   output: b\n", "the indentation of line 3 does not fit the lines above it", 3, 4),
        ("IOPairs:\n  - input: a\n     output: b\n", "the indentation of line 3 does not fit the lines above it", 3, 6),
        ("a:\n  b: 1\n c: 2\n", "the indentation of line 3 does not fit the lines above it", 3, 2),
        ("a: x: y\n", "line 1 holds ': ' inside a value: put the text in quotes", 1, 5),
    ],
)
def test_tabs_and_indentation_get_a_sentence_with_the_fix(text, message, line, col):
    with pytest.raises(YamlError) as exc:
        load(text.encode())
    assert exc.value.message.startswith(message) and "YAML syntax error" not in exc.value.message
    assert (exc.value.line, exc.value.col) == (line, col)


def test_every_duplicate_key_is_reported():
    with pytest.raises(YamlError) as exc:
        load(b"a: 1\na: 2\nb:\n  c: 1\n  c: 2\n  d: 1\n  d: 2\n")
    found = [(e.line, e.col, e.message) for e in (exc.value, *exc.value.more)]
    assert found == [(2, 1, "duplicate key 'a'; each key may appear once"),
                     (5, 3, "duplicate key 'c'; each key may appear once"),
                     (7, 3, "duplicate key 'd'; each key may appear once")]

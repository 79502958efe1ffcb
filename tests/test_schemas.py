"""Shipped schemas and files: in sync with the code, valid, and readable by editors and check-jsonschema."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oig.data import schemas, sftfields
from oig.data.validate import ValidateOptions, validate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_schema_files_match_the_code():
    for name, text in schemas.rendered().items():
        assert (ROOT / "schemas" / name).read_text() == text, f"run `python -m oig.data.schemas` to refresh {name}"


def _shape(field_list: dict) -> dict:
    # What validation uses: names, types, defaults, choices. Help text is upstream prose that changes
    # between patch releases and only feeds editors' tooltips.
    return {name: {k: v for k, v in f.items() if k != "help"} for name, f in field_list.items()}


def test_sftconfig_field_list_matches_installed_trl():
    pytest.importorskip("trl")  # the list is generated from TRL; the core install checks it against nothing
    assert _shape(sftfields.generate()) == _shape(sftfields.fields()), \
        "run `python -m oig.data.sftfields` after upgrading TRL or transformers"


def test_every_aliased_field_exists():
    for target in schemas.ALIASES.values():
        assert target in sftfields.fields()


def test_shipped_data_and_training_yaml_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)
    problems = validate([], ValidateOptions())
    assert [p for p in problems if p.severity == "error"] == []


def test_shipped_data_files_open_with_the_schema_line_and_a_comment():
    for path in [*sorted((ROOT / "data").glob("*.yaml")), ROOT / "training.yaml"]:
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# yaml-language-server: $schema="), path.name
        target = (path.parent / lines[0].split("=", 1)[1]).resolve()
        assert target.is_file(), f"{path.name} points at a missing schema"
        assert lines[1].startswith("# "), f"{path.name} should say what it is for"


def test_shipped_slices_state_a_license():
    from oig.data.validate import load_slices

    for s in load_slices(ROOT / "data"):
        assert s.license, f"data/{s.name}.yaml has no license"


@pytest.mark.skipif(not (BIN / "check-jsonschema").exists(), reason="check-jsonschema is a dev dependency")
def test_check_jsonschema_accepts_shipped_files_with_our_schemas():
    slices = sorted(str(p) for p in (ROOT / "data").glob("*.yaml"))
    for schema, files in (("slice.schema.json", slices), ("training.schema.json", [str(ROOT / "training.yaml")])):
        out = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(ROOT / "schemas" / schema), *files],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_schemas_describe_every_property():
    def walk(node, where):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                assert sub.get("description"), f"{where}.{name} has no description"
                walk(sub, f"{where}.{name}")
            for key in ("items", "anyOf"):
                if key in node:
                    for sub in node[key] if isinstance(node[key], list) else [node[key]]:
                        walk(sub, where)

    walk(schemas.SLICE_SCHEMA, "slice")
    walk(schemas.training_schema(), "training")
    assert "75" in schemas.MIXTURE_MEANING  # the worked example is part of the documented meaning
    json.dumps(schemas.training_schema())

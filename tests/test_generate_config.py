"""The generate config: the shipped example, every problem at once with its line, the schema file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oig.errors import InvalidInput
from oig.generate.config import load_config, parse_config
from oig.generate.schema import GENERATE_SCHEMA, render_schema

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MINIMAL = """\
instructions:
  - link: rows.jsonl
models:
  - model: meta-llama/Llama-3.3-70B-Instruct-Turbo
"""


def parse(text: str, tmp_path: Path):
    return parse_config(text.encode(), tmp_path / "gen.yaml")


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(InvalidInput) as err:
        parse(text, tmp_path)
    return [f"{p.line}: {p.message}" for p in err.value.problems]


def test_the_shipped_example_loads():
    cfg = load_config(ROOT / "examples" / "generate.yaml")
    assert [m.name for m in cfg.models] == ["meta-llama/Llama-3.3-70B-Instruct-Turbo",
                                           "Qwen/Qwen2.5-72B-Instruct-Turbo", "mistral-small"]
    assert cfg.aggregator is not None and cfg.aggregator.name == "qwen-aggregator"
    assert [j.kind for j in cfg.judges] == ["score", "pairwise", "reference"]
    assert cfg.providers["together"].kind == "together" and cfg.license
    assert set(cfg.prices) >= {m.model for m in cfg.models} | {j.model for j in cfg.judges}


def test_the_shipped_example_opens_with_the_schema_line_and_a_comment():
    lines = (ROOT / "examples" / "generate.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../schemas/generate.schema.json"
    assert lines[1].startswith("# ")


def test_the_shipped_instructions_all_convert(tmp_path):
    from oig.generate.instructions import prompt_of

    rows = [json.loads(line) for line in (ROOT / "examples" / "instructions.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    prompts = [prompt_of(r, None) for r in rows]
    assert sum(ref is not None for _, ref in prompts) == 8


def test_defaults(tmp_path):
    cfg = parse(MINIMAL, tmp_path)
    assert list(cfg.providers) == ["together"] and cfg.providers["together"].api_key_env == "TOGETHER_API_KEY"
    model = cfg.models[0]
    assert model.provider == "together" and model.settings == {"max_tokens": 512}
    assert cfg.seed == 42 and cfg.limit is None and cfg.prefs_policy == "best_vs_worst" and cfg.judges == []
    assert cfg.base_dir == tmp_path and len(cfg.sha256) == 64


def test_unknown_keys_name_the_nearest_valid_key_with_their_line(tmp_path):
    text = MINIMAL + "    temprature: 0.5\njudgs: []\n"
    found = problems(text, tmp_path)
    assert "5: unknown key 'temprature' at models[0]; did you mean 'temperature'?" in found[0]
    assert found[1].startswith("6: unknown key 'judgs' at top level; did you mean 'judges'?")


def test_every_problem_is_reported_at_once(tmp_path):
    text = """\
instructions: []
models:
  - model: a
    temperature: hot
    max_tokens: 0
judges:
  - kind: scores
    model: j
prefs_policy: best
"""
    found = "\n".join(problems(text, tmp_path))
    assert "instructions is empty" in found
    assert "models[0].temperature must be a number, not text ('hot')" in found
    assert "models[0].max_tokens is out of range" in found
    assert "judges[0].kind must be one of score, pairwise, reference, reward_model" in found
    assert "prefs_policy must be one of best_vs_worst, best_vs_random, all_pairs" in found


def test_checks_no_schema_can_make(tmp_path):
    text = """\
instructions:
  - link: rows.jsonl
providers:
  local:
    kind: openai
  vllm:
    kind: openai
    base_url: http://127.0.0.1:8000/v1
    api_key_env: GITHUB_TOKEN
models:
  - model: a
    provider: locl
  - model: a
    provider: local
judges:
  - kind: reward_model
    model: rm
    aspects: [x]
"""
    found = "\n".join(problems(text, tmp_path))
    assert "provider 'local' is an OpenAI-compatible server: give its `base_url`" in found
    assert "write base_url without /v1" in found
    assert "GITHUB_TOKEN is not a chat API key" in found
    assert "no provider 'locl'; did you mean 'local'?" in found
    assert "two models are labelled 'a'" in found
    assert "`aspects` does not apply to a reward_model judge" in found


def test_nan_is_refused(tmp_path):
    assert any("must be a finite number" in p for p in problems(MINIMAL + "    temperature: .nan\n", tmp_path))


def test_yaml_errors_have_a_line(tmp_path):
    assert problems("models: [\n", tmp_path)[0].startswith("2: YAML syntax error")


def test_the_schema_file_matches_the_code():
    assert (ROOT / "schemas" / "generate.schema.json").read_text() == render_schema(), \
        "run `python -m oig.generate.config` from the repository root to refresh schemas/generate.schema.json"


def test_the_schema_describes_every_property():
    def walk(node: dict, where: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{name} has no description"
            walk(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], where)

    walk(GENERATE_SCHEMA, "generate")


@pytest.mark.skipif(not (BIN / "check-jsonschema").exists(), reason="check-jsonschema is a dev dependency")
def test_check_jsonschema_accepts_the_example_with_the_schema():
    out = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(ROOT / "schemas" / "generate.schema.json"),
                          str(ROOT / "examples" / "generate.yaml")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

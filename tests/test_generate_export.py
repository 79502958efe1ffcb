"""Exports: SFT rows, preference pairs under each policy (exact counts), battles, and a valid slice."""

from __future__ import annotations

import json

import pytest
from fake_openai import FakeOpenAI
from test_generate_run import write_config

from oig.cli import main
from oig.data.validate import ValidateOptions, validate
from oig.errors import OigError
from oig.generate import export
from oig.generate.config import load_config
from oig.generate.run import generate
from oig.yamlsafe import load


def record(rid: str, scores: dict[str, float], *, prompt=None, failed=()) -> dict:
    responses = [{"response_id": k, "model": f"model-{k}", "text": f"answer {k}" if k not in failed else None,
                  "error": "HTTP 500: boom" if k in failed else None} for k in [*scores, *failed]]
    usable = {k: v for k, v in scores.items() if k not in failed}
    best = max(usable, key=usable.get) if usable else None
    worst = min(reversed(list(usable)), key=usable.get) if usable else None
    return {"id": rid, "messages": prompt or [{"role": "user", "content": f"question {rid}"}],
            "responses": responses, "battles": [], "scores": usable,
            "best": best and {"response_id": best, "model": f"model-{best}", "score": usable[best]},
            "worst": worst and {"response_id": worst, "model": f"model-{worst}", "score": usable[worst]},
            "verdicts_complete": True, "missing_verdicts": []}


RECORDS = [
    record("r1", {"a": 0.9, "b": 0.5, "c": 0.1}),
    record("r2", {"a": 0.5, "b": 0.45}),
    record("r3", {"a": 0.7}, failed=("b",)),  # one usable answer: no pair
    record("r4", {"a": 0.2, "b": 0.2}),  # equal: no pair
]


def test_sft_rows_end_with_the_best_answer():
    rows = list(export.sft_rows(RECORDS))
    assert len(rows) == 4
    assert rows[0]["messages"] == [{"role": "user", "content": "question r1"},
                                   {"role": "assistant", "content": "answer a"}]
    assert rows[3]["messages"][-1]["content"] == "answer a"  # the first of equals


def test_best_vs_worst_gives_one_pair_per_record_above_the_margin():
    pairs = list(export.pref_rows(RECORDS, "best_vs_worst", 0.0, 42))
    assert [(p["id"], p["chosen_model"], p["rejected_model"]) for p in pairs] == [
        ("r1", "model-a", "model-c"), ("r2", "model-a", "model-b")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "question r1"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "answer a"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "answer c"}]
    assert pairs[0]["score_chosen"] == 0.9 and pairs[0]["policy"] == "best_vs_worst"
    assert [p["id"] for p in export.pref_rows(RECORDS, "best_vs_worst", 0.1, 42)] == ["r1"]


def test_best_vs_random_is_seeded_per_record():
    first = list(export.pref_rows(RECORDS, "best_vs_random", 0.0, 7))
    assert first == list(export.pref_rows(RECORDS, "best_vs_random", 0.0, 7))
    assert {p["id"] for p in first} <= {"r1", "r2"} and all(p["chosen_model"] == "model-a" for p in first)
    seen = {next(p["rejected_model"] for p in export.pref_rows(RECORDS[:1], "best_vs_random", 0.0, s))
            for s in range(20)}
    assert seen == {"model-b", "model-c"}


def test_all_pairs_above_the_margin():
    pairs = list(export.pref_rows(RECORDS, "all_pairs", 0.0, 42))
    # r1: 3 pairs (a>b, a>c, b>c); r2: 1 pair; r3: none; r4: equal scores, none
    assert [(p["id"], p["chosen_model"], p["rejected_model"]) for p in pairs] == [
        ("r1", "model-a", "model-b"), ("r1", "model-a", "model-c"), ("r1", "model-b", "model-c"),
        ("r2", "model-a", "model-b")]
    # margin 0.5: only a (0.9) over c (0.1) differs by more
    assert [(p["chosen_model"], p["rejected_model"]) for p in export.pref_rows(RECORDS, "all_pairs", 0.5, 42)] == [
        ("model-a", "model-c")]


def test_battles_from_scores_without_a_pairwise_judge():
    rows = list(export.battle_rows(RECORDS, pairwise=False))
    assert [(b["id"], b["model_a"], b["model_b"], b["winner"]) for b in rows] == [
        ("r1", "model-a", "model-b", "model_a"), ("r1", "model-a", "model-c", "model_a"),
        ("r1", "model-b", "model-c", "model_a"), ("r2", "model-a", "model-b", "model_a"),
        ("r4", "model-a", "model-b", "tie")]
    assert all(b["judge"] == "aggregate" for b in rows)


def test_a_slice_quotes_text_that_would_read_as_a_number_or_null():
    tricky = ["1e-4", "no", "null", "0x1F", "~", ".5", "- item", "true", "multi\nline\n", "# not a comment", "a: b"]
    recs = []
    for i, text in enumerate(tricky):
        r = record(f"t{i}", {"a": 1.0})
        r["messages"] = [{"role": "user", "content": text}]
        r["responses"][0]["text"] = text
        recs.append(r)
    text, count, skipped = export.slice_text(export.sft_rows(recs), name="tricky", description="d", license="CC0-1.0", source="s")
    assert count == len(tricky) and skipped == 0
    assert [p["input"] for p in load(text)["IOPairs"]] == tricky


def test_emit_slice_writes_a_valid_slice_with_provenance(tmp_path, monkeypatch):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        target = tmp_path / "data" / "generated.yaml"
        summary = generate(load_config(cfg), tmp_path / "out", allow_local=True, emit_slice=target)
    lines = target.read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../schemas/slice.schema.json" and lines[1].startswith("# ")
    doc = load(target.read_text())
    assert doc["license"] == "CC0-1.0" and len(doc["IOPairs"]) == 4 == summary.slice_pairs
    assert "instructions: rows.jsonl@" in doc["source"] and "models: alpha (local), beta-long (local)" in doc["source"]
    assert "judges: score judge, pairwise judge, reference judge" in doc["source"]
    assert load_config(cfg).sha256 in doc["source"]
    assert [p for p in validate([target], ValidateOptions()) if p.severity == "error"] == []
    sft = [json.loads(x) for x in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert [p["output"] for p in doc["IOPairs"]] == [r["messages"][-1]["content"] for r in sft]


def test_emit_slice_leaves_out_multi_turn_prompts(tmp_path):
    recs = [record("a", {"x": 1.0}),
            record("b", {"x": 1.0}, prompt=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])]
    count, skipped = export.emit_slice(tmp_path / "s.yaml", export.sft_rows(recs), description="d", license="MIT", source="s")
    assert (count, skipped) == (1, 1)


def test_emit_slice_needs_a_license(tmp_path):
    with pytest.raises(OigError, match="needs the data's license"):
        export.emit_slice(tmp_path / "s.yaml", export.sft_rows(RECORDS), description="d", license=None, source="s")
    assert not (tmp_path / "s.yaml").exists()


def test_emit_slice_from_the_cli(tmp_path, capsys):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="judges:\n  - kind: score\n    model: j\n"
                                                          "    provider: local\n")
        rc = main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources",
                   "--emit-slice", str(tmp_path / "data" / "gen.yaml")])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'data' / 'gen.yaml'} (4 IOPairs); check it with `oig validate`" in out
    assert main(["validate", str(tmp_path / "data" / "gen.yaml")]) == 0

"""--push-to-hub: a dataset repo with parquet configs and a card, and a slice that links it at the commit."""

from __future__ import annotations

import json
import types

import pytest
from fake_hub import FakeHub
from fake_openai import FakeOpenAI
from test_generate_run import lines, run, write_config

from oig.cli import main
from oig.errors import OigError
from oig.generate import hub
from oig.generate import run as run_module
from oig.yamlsafe import load

TOKEN = "hf_test_token"


@pytest.fixture(autouse=True)
def online_hub(monkeypatch):
    """HF_HUB_OFFLINE=1 (set by `make test`) refuses even a local endpoint; huggingface_hub's own retry
    sleeps are made instant."""
    import huggingface_hub.constants
    import huggingface_hub.utils._http

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setattr(hub, "backoff_delay", lambda *a, **k: 0.0)
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def fake_hub(monkeypatch):
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def test_push_to_hub_uploads_parquet_configs_and_a_card(tmp_path, fake_hub):
    import pyarrow.parquet as pq

    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, extra="description: Capitals and legs.\n")
        summary = run(cfg, tmp_path / "out", push_to_hub="org/generated")
    assert fake_hub.repo_types["org/generated"] == "dataset"
    [commit] = fake_hub.commits("org/generated")
    assert summary.hub_revision == commit["oid"] and summary.hub_link == f"{fake_hub.url}/datasets/org/generated"
    files = fake_hub.files("org/generated")
    assert sorted(files) == ["README.md", *sorted(f"{c}/train-00000-of-00001.parquet" for c in hub.CONFIGS)]
    # What was uploaded is OUT/hub/, kept; its parquet holds exactly the JSONL exports' rows.
    sft = pq.read_table(tmp_path / "out" / "hub" / "sft" / "train-00000-of-00001.parquet").to_pylist()
    assert sft == lines(tmp_path / "out" / "sft.jsonl")
    prefs = pq.read_table(tmp_path / "out" / "hub" / "prefs" / "train-00000-of-00001.parquet").to_pylist()
    assert prefs == lines(tmp_path / "out" / "prefs.jsonl") and len(prefs) == 4
    records = pq.read_table(tmp_path / "out" / "hub" / "records" / "train-00000-of-00001.parquet").to_pylist()
    assert [json.loads(r["record"]) for r in records] == lines(tmp_path / "out" / "records.jsonl")
    card = files["README.md"].decode()
    header = load(card.split("---")[1])
    assert header["license"] == "cc0-1.0" and "synthetic" in header["tags"]
    assert [c["config_name"] for c in header["configs"]] == list(hub.CONFIGS) and header["configs"][0]["default"]
    cfg_sha = json.loads((tmp_path / "out" / "run.json").read_text())["config_sha256"]
    for text in (cfg_sha, "Capitals and legs.", "`alpha`", "`beta-long`", "pairwise", "aspects helpfulness, "
                 "correctness", "rows.jsonl@", "You are an impartial expert judge", "CC0-1.0"):
        assert text in card, text
    assert json.loads((tmp_path / "out" / "run.json").read_text())["hub"] == {
        "dataset": summary.hub_link, "revision": commit["oid"]}


def test_a_linking_slice_pins_the_pushed_commit_and_validates(tmp_path, fake_hub, capsys, monkeypatch):
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "data" / "generated.yaml"
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(6)))
        # Without judges there is no best answer: score with one judge so that every row has an SFT row.
        cfg.write_text(cfg.read_text() + "judges:\n  - kind: score\n    model: judge\n    provider: local\n")
        args = ["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources",
                "--push-to-hub", "org/big", "--emit-slice", str(target), "--slice-mode", "link"]
        assert main(args) == 0
    out = capsys.readouterr().out
    [commit] = fake_hub.commits("org/big")
    assert f"pushed {fake_hub.url}/datasets/org/big at revision {commit['oid']}" in out
    assert f"links 6 SFT rows at {fake_hub.url}/datasets/org/big@{commit['oid'][:12]}" in out
    doc = load(target.read_text())
    assert "IOPairs" not in doc and doc["license"] == "CC0-1.0" and "oig generate" in doc["source"]
    assert doc["HuggingFace"] == [{"link": f"{fake_hub.url}/datasets/org/big", "revision": commit["oid"],
                                   "config": "sft", "split": "train"}]
    capsys.readouterr()
    # `oig validate` on the emitted file, offline and then reading the pinned commit from the Hub.
    assert main(["validate", "--allow-local-sources", str(target)]) == 0
    assert main(["validate", "--remote", "--allow-local-sources", str(target)]) == 0, capsys.readouterr()
    resolved = [r["path"] for r in fake_hub.requests if r["method"] == "GET"]
    assert f"/datasets/org/big/resolve/{commit['oid']}/sft/train-00000-of-00001.parquet" in resolved


def test_auto_links_only_a_large_pushed_dataset(tmp_path, fake_hub, monkeypatch):
    target = tmp_path / "data" / "gen.yaml"
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        summary = run(cfg, tmp_path / "out", push_to_hub="org/small", emit_slice=target)
        assert not summary.slice_linked and "IOPairs" in load(target.read_text())
        monkeypatch.setattr(run_module, "LINK_ROWS", 3)  # 4 SFT rows: now "large"
        summary = run(cfg, tmp_path / "out", push_to_hub="org/small", emit_slice=target)
    assert summary.slice_linked and load(target.read_text())["HuggingFace"][0]["revision"] == summary.hub_revision
    # Large but not pushed: inline, as before.
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        summary = run(cfg, tmp_path / "out2", emit_slice=tmp_path / "data" / "gen2.yaml")
    assert not summary.slice_linked and summary.slice_pairs == 4


def test_push_settings_are_checked_before_any_call(tmp_path, fake_hub, monkeypatch, capsys):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        base = ["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources"]
        assert main([*base, "--push-to-hub", "not a repo"]) == 1
        assert "is not a Hub repo id" in capsys.readouterr().err
        assert main([*base, "--emit-slice", str(tmp_path / "data" / "g.yaml"), "--slice-mode", "link"]) == 1
        assert "add --push-to-hub" in capsys.readouterr().err
        assert main([*base, "--slice-mode", "inline"]) == 1
        assert "add --emit-slice" in capsys.readouterr().err
        monkeypatch.delenv("HF_TOKEN")
        assert main([*base, "--push-to-hub", "org/x"]) == 1
        assert "HF_TOKEN is not set" in capsys.readouterr().err
        assert main([*base, "--push-to-hub", "org/x", "--dry-run"]) == 0  # a plan, which names the push
        assert "Then: push the exports to the Hub dataset org/x" in capsys.readouterr().out
        assert srv.chat_requests() == [] and fake_hub.requests == []


def test_a_flaky_hub_is_retried_and_a_refusal_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    with FakeHub(token=TOKEN, fail_commits=2) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        sha = hub.push(folder, "org/d", private=None, commit_message="m")
        assert sha == fake.commits("org/d")[0]["oid"]
    with FakeHub(token="another") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(OigError, match="uploading the dataset to org/d failed .HTTP 401") as err:
            hub.push(folder, "org/d", private=None, commit_message="m")
        assert TOKEN not in str(err.value)
        assert fake.paths("POST") == ["/api/repos/create"]  # a refusal is not retried


def test_private_creates_a_private_dataset_repo(tmp_path, fake_hub):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources",
                     "--push-to-hub", "org/secret", "--private"]) == 0
    assert fake_hub.private == {"org/secret"} and fake_hub.repo_types["org/secret"] == "dataset"
    created = json.loads(next(r["body"] for r in fake_hub.requests if r["path"] == "/api/repos/create"))
    assert created["visibility"] == "private" and created["type"] == "dataset"


def test_large_exports_are_sharded_and_read_back_whole(tmp_path, fake_hub, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(hub, "ROWS_PER_SHARD", 3)
    monkeypatch.setattr(hub, "BATCH_ROWS", 2)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(7)))
        run(cfg, tmp_path / "out", push_to_hub="org/sharded")
    files = sorted(fake_hub.files("org/sharded"))
    assert [f for f in files if f.startswith("sft/")] == [f"sft/train-0000{k}-of-00003.parquet" for k in range(3)]
    rows = [r for f in files if f.startswith("sft/") for r in pq.read_table(tmp_path / "out" / "hub" / f).to_pylist()]
    assert rows == lines(tmp_path / "out" / "sft.jsonl") and len(rows) == 7

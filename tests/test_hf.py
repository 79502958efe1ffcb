"""Hugging Face datasets: links, the Hub API subset against a local server, choosing files, hostile answers."""

import io
import json

import pytest
from servers import Response, hub_routes

from oig.data.fetch import SourceOptions
from oig.data.hf import iter_rows, parse_link, parse_revision_info, resolve
from oig.data.hffiles import _glob, default_splits, pick_files
from oig.data.slices import HFEntry
from oig.errors import FetchError

SHA = "a" * 40
REPO = "org/qa"


def parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def opts(tmp_path, **kw) -> SourceOptions:
    kw.setdefault("allow_local", True)
    kw.setdefault("cache_dir", tmp_path / "cache")
    return SourceOptions(base_dir=tmp_path, **kw)


def cached_files(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# --- links ---------------------------------------------------------------------------------------


def test_links(tmp_path):
    o = opts(tmp_path, allow_local=False)
    assert parse_link("org/name", o).repo == "org/name"
    hub = parse_link("https://huggingface.co/datasets/org/name", o)
    assert (hub.endpoint, hub.repo, hub.folder) == ("https://huggingface.co", "org/name", None)
    local = parse_link("http://127.0.0.1:8080/datasets/org/name", opts(tmp_path))
    assert (local.endpoint, local.repo) == ("http://127.0.0.1:8080", "org/name")
    (tmp_path / "ds").mkdir()
    assert parse_link("ds", opts(tmp_path)).folder == tmp_path / "ds"


@pytest.mark.parametrize(("link", "message"), [
    ("https://example.com/datasets/org/name", "must be https://huggingface.co/datasets/ORG/NAME"),
    ("https://huggingface.co/org/name", "must be https://huggingface.co/datasets/ORG/NAME"),
    ("https://huggingface.co/datasets/org/name?x=1", "must be"),
    ("https://huggingface.co:8443/datasets/org/name", "must be"),
    ("http://127.0.0.1:8080/datasets/org/name", "must be"),
    ("https://[huggingface.co/datasets/org/name", "must be"),
    ("ds", "local paths need --allow-local-sources"),
    ("../outside", "local paths need --allow-local-sources"),
])
def test_refused_links(tmp_path, link, message):
    with pytest.raises(FetchError, match=message.replace("?", r"\?")):
        parse_link(link, opts(tmp_path, allow_local=False))


def test_missing_folder(tmp_path):
    with pytest.raises(FetchError, match="no such dataset folder"):
        parse_link("./nope", opts(tmp_path))


# --- choosing files ------------------------------------------------------------------------------


def test_split_names_in_files_and_folders():
    assert default_splits(["data/train-00000-of-00002.parquet", "data/validation-00000-of-00001.parquet",
                           "data/random-00000-of-00001.parquet"]) == {
        "train": ["data/train-00000-of-00002.parquet"], "validation": ["data/validation-00000-of-00001.parquet"],
        "random": ["data/random-00000-of-00001.parquet"]}
    assert default_splits(["en/dev.jsonl", "en/train.jsonl"]) == {"train": ["en/train.jsonl"],
                                                                  "validation": ["en/dev.jsonl"]}
    assert default_splits(["test/0000.parquet", "train.parquet"]) == {"test": ["test/0000.parquet"]}  # folders first
    assert default_splits(["data/mytrain.jsonl", "data/part-0.jsonl"]) == {
        "train": ["data/mytrain.jsonl", "data/part-0.jsonl"]}


def test_conventions():
    names = ["README.md", ".gitattributes", "data/train-00001-of-00002.parquet", "data/train-00000-of-00002.parquet",
             "data/test-00000-of-00001.parquet", "extra/train.csv"]
    assert pick_files(names, None, "train", None) == (
        ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"], "parquet")
    assert pick_files(names, None, "test", None) == (["data/test-00000-of-00001.parquet"], "parquet")
    with pytest.raises(FetchError, match="no data files for split 'validation'; splits found: train, test"):
        pick_files(names, None, "validation", None)
    # A config is a folder; without split names every file is train.
    assert pick_files(["en/train.jsonl", "fr/train.jsonl"], "fr", "train", None) == (["fr/train.jsonl"], "jsonl")
    assert pick_files(["all.jsonl", "more.jsonl"], None, "train", None) == (["all.jsonl", "more.jsonl"], "jsonl")
    with pytest.raises(FetchError, match="no data files for split 'test'"):
        pick_files(["all.jsonl"], None, "test", None)
    with pytest.raises(FetchError, match=r"no data files for config 'de' \(a folder de/\); folders with data: en, fr"):
        pick_files(["en/train.jsonl", "fr/train.jsonl"], "de", "train", None)
    with pytest.raises(FetchError, match="no parquet, JSON lines, JSON or CSV data files"):
        pick_files(["README.md", "train.txt", "script.py"], None, "train", None)
    # Several formats for one split: parquet is preferred, and only one format is read.
    assert pick_files(["train.jsonl", "train.parquet"], None, "train", None) == (["train.parquet"], "parquet")


def test_readme_configs():
    configs = [
        {"config_name": "chat", "data_files": [{"split": "train", "path": "chat/*.jsonl"},
                                               {"split": "test", "path": ["eval/chat-*.jsonl"]}]},
        {"config_name": "qa", "default": True, "data_files": "qa/**/*.parquet"},
    ]
    names = ["chat/a.jsonl", "chat/b.jsonl", "chat/sub/c.jsonl", "eval/chat-1.jsonl", "qa/x/y/1.parquet", "qa/2.parquet"]
    assert pick_files(names, "chat", "train", configs) == (["chat/a.jsonl", "chat/b.jsonl"], "jsonl")
    assert pick_files(names, "chat", "test", configs) == (["eval/chat-1.jsonl"], "jsonl")
    assert pick_files(names, None, "train", configs) == (["qa/2.parquet", "qa/x/y/1.parquet"], "parquet")
    with pytest.raises(FetchError, match="config 'chat' has no split 'validation'; it has 'train', 'test'"):
        pick_files(names, "chat", "validation", configs)
    with pytest.raises(FetchError, match="no config 'xx'; this dataset has 'chat', 'qa'"):
        pick_files(names, "xx", "train", configs)
    configs[1].pop("default")
    with pytest.raises(FetchError, match="several configs .* add `config: <name>`"):
        pick_files(names, None, "train", configs)


def test_readme_config_as_a_folder_and_script_only_datasets():
    configs = [{"config_name": "en", "data_dir": "en"}, {"config_name": "fr", "data_dir": "fr/"}]
    names = ["en/train.jsonl", "en/test.jsonl", "fr/train.jsonl"]
    assert pick_files(names, "fr", "train", configs) == (["fr/train.jsonl"], "jsonl")
    assert pick_files(names, "en", "test", configs) == (["en/test.jsonl"], "jsonl")
    with pytest.raises(FetchError, match=r"dataset scripts are never run.*refs/convert/parquet"):
        pick_files(["README.md", "loader.py"], None, "train", None)


def test_glob():
    assert _glob("data/*.parquet").fullmatch("data/a.parquet")
    assert not _glob("data/*.parquet").fullmatch("data/sub/a.parquet")
    assert _glob("data/**/*.parquet").fullmatch("data/a.parquet")
    assert _glob("data/**/*.parquet").fullmatch("data/x/y/a.parquet")
    assert _glob("./train-0000?.csv").fullmatch("train-00001.csv")
    assert _glob("shard-[!0].json").fullmatch("shard-1.json") and not _glob("shard-[!0].json").fullmatch("shard-0.json")


# --- hostile API answers -------------------------------------------------------------------------

HOSTILE_ANSWERS = {
    "not-json": (b"<html>rate limited</html>", "not JSON"),
    "list": (b"[]", "not a JSON object"),
    "no-sha": (b'{"siblings": []}', "`sha` is not a 40-character commit sha"),
    "sha-number": (json.dumps({"sha": 5, "siblings": []}).encode(), "`sha` is not"),
    "short-sha": (json.dumps({"sha": "abc", "siblings": []}).encode(), "`sha` is not"),
    "siblings-dict": (json.dumps({"sha": SHA, "siblings": {"a": 1}}).encode(), "`siblings` is not a list"),
    "sibling-str": (json.dumps({"sha": SHA, "siblings": ["a.jsonl"]}).encode(), "not a safe relative path"),
    "traversal": (json.dumps({"sha": SHA, "siblings": [{"rfilename": "../../etc/passwd"}]}).encode(), "not a safe"),
    "absolute": (json.dumps({"sha": SHA, "siblings": [{"rfilename": "/etc/passwd"}]}).encode(), "not a safe"),
    "backslash": (json.dumps({"sha": SHA, "siblings": [{"rfilename": "..\\x.jsonl"}]}).encode(), "not a safe"),
    "control": (json.dumps({"sha": SHA, "siblings": [{"rfilename": "a\nb.jsonl"}]}).encode(), "not a safe"),
    "deep": (b"[" * 100_000, "not JSON"),
}


@pytest.mark.parametrize("name", HOSTILE_ANSWERS)
def test_hostile_api_answers(tmp_path, local_server, name):
    body, message = HOSTILE_ANSWERS[name]
    srv = local_server({f"/api/datasets/{REPO}/revision/main": Response(200, body)})
    with pytest.raises(FetchError) as info:
        resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), opts(tmp_path))
    assert "unexpected answer from the Hub API" in str(info.value) and message in str(info.value)
    assert cached_files(tmp_path) == []


def test_answer_for_another_commit_is_refused():
    other = json.dumps({"sha": "b" * 40, "siblings": []}).encode()
    with pytest.raises(FetchError, match=f"asked for commit {SHA}, got {'b' * 40}"):
        parse_revision_info(other, "org/x", SHA)


def test_oversize_api_answer(tmp_path, local_server):
    srv = local_server({f"/api/datasets/{REPO}/revision/main": Response(200, b" " * 5000)})
    with pytest.raises(FetchError, match="larger than the limit of 1,000 bytes"):
        resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), opts(tmp_path, max_bytes=1000))
    assert cached_files(tmp_path) == []


def test_missing_dataset(tmp_path, local_server):
    srv = local_server({})
    with pytest.raises(FetchError, match="no such dataset or revision 'main'"):
        resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), opts(tmp_path))


def test_hostile_readme(tmp_path, local_server):
    readme = b"---\nconfigs: &a [1]\nx: *a\n---\n# card\n"
    srv = local_server(hub_routes(REPO, SHA, {"README.md": readme, "train.jsonl": b"{}\n"}))
    with pytest.raises(FetchError, match="README.md header is not readable YAML"):
        resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), opts(tmp_path))
    srv.routes.update(hub_routes(REPO, SHA, {"README.md": b"---\nconfigs: 3\n---\n", "train.jsonl": b"{}\n"}))
    with pytest.raises(FetchError, match="`configs:` is not a list of configs"):
        resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA), opts(tmp_path, cache_dir=tmp_path / "c2"))
    # Only the revision listing (checked, harmless) is cached; no README, no data.
    blobs = [p for p in cached_files(tmp_path) if p.startswith("blobs/")]
    assert len(blobs) == 1
    assert json.loads((tmp_path / "cache" / blobs[0]).read_bytes())["sha"] == SHA


# --- resolving and reading through the local Hub ----------------------------------------------------


def test_resolve_and_read_through_the_hub(tmp_path, local_server):
    files = {
        "README.md": b"---\nlicense: cc0-1.0\n---\n# QA\n",
        "data/train-00000-of-00002.parquet": parquet([{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]),
        "data/train-00001-of-00002.parquet": parquet([{"question": "q3", "answer": "a3"}]),
        "data/test-00000-of-00001.parquet": parquet([{"question": "t", "answer": "t"}]),
    }
    srv = local_server(hub_routes(REPO, SHA, files))
    o = opts(tmp_path)
    res = resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), o)
    assert res.revision == SHA and res.fmt == "parquet"
    assert res.files == ("data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet")
    rows = list(iter_rows(res, o))
    assert rows[0] == ("data/train-00000-of-00002.parquet row 1", {"question": "q0", "answer": "a0"})
    assert [r["question"] for _, r in rows] == ["q0", "q1", "q2", "q3"]
    # A pinned revision is answered from the cache: no request at all the second time.
    before = len(srv.requests)
    res = resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA), o)
    before_rows = len(srv.requests)
    assert len(list(iter_rows(res, o))) == 4
    assert len(srv.requests) == before_rows
    assert srv.paths()[before:] == [f"/api/datasets/{REPO}/revision/{SHA}"]


def test_revision_with_slash_is_quoted(tmp_path, local_server):
    routes = hub_routes(REPO, SHA, {"train.jsonl": b'{"question": "q", "answer": "a"}\n'}, branches=())
    routes[f"/api/datasets/{REPO}/revision/refs%2Fconvert%2Fparquet"] = routes[f"GET /api/datasets/{REPO}/revision/{SHA}"]
    srv = local_server(routes)
    res = resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}", revision="refs/convert/parquet"), opts(tmp_path))
    assert res.revision == SHA


def test_corrupt_data_file(tmp_path, local_server):
    srv = local_server(hub_routes(REPO, SHA, {"train.parquet": b"PAR1 garbage"}))
    o = opts(tmp_path)
    res = resolve(HFEntry(link=f"{srv.url}/datasets/{REPO}"), o)
    with pytest.raises(FetchError, match="train.parquet: not a readable parquet file"):
        list(iter_rows(res, o))


def test_local_folder(tmp_path):
    folder = tmp_path / "datasets" / "chat"
    (folder / "en").mkdir(parents=True)
    (folder / "en" / "train.jsonl").write_bytes(jsonl([{"prompt": "p", "completion": "c"}]))
    (folder / "en" / "test.jsonl").write_bytes(jsonl([{"prompt": "t", "completion": "t"}]))
    (folder / ".git").mkdir()
    (folder / ".git" / "train.jsonl").write_bytes(b"not data")
    o = opts(tmp_path)
    res = resolve(HFEntry(link="datasets/chat", config="en"), o)
    assert res.files == ("en/train.jsonl",) and len(res.revision) == 64
    assert list(iter_rows(res, o)) == [("en/train.jsonl line 1", {"prompt": "p", "completion": "c"})]
    (folder / "en" / "train.jsonl").write_bytes(jsonl([{"prompt": "p2", "completion": "c"}]))
    assert resolve(HFEntry(link="datasets/chat", config="en"), o).revision != res.revision

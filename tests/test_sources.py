"""materialize and check_remote: every section, pins, the cache, and bad data from links."""

import hashlib
import io
import json
import tracemalloc

import pytest
from servers import hub_routes

from oig.data.fetch import SourceOptions
from oig.data.slices import HFEntry, JsonlEntry, Slice
from oig.data.sources import check_remote, materialize
from oig.errors import FetchError, InvalidInput

SHA40 = "c" * 40
REPO = "org/qa"


def opts(tmp_path, **kw) -> SourceOptions:
    kw.setdefault("allow_local", True)
    kw.setdefault("cache_dir", tmp_path / "cache")
    return SourceOptions(base_dir=tmp_path, **kw)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def parquet(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_slice(tmp_path, **sections) -> Slice:
    return Slice(name="demo", path=tmp_path / "data" / "demo.yaml", **sections)


def lines(m) -> list[dict]:
    return [json.loads(line) for line in m.path.read_text(encoding="utf-8").splitlines()]


def cached_files(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


CHAT = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!", "weight": 0}, {"role": "user", "content": "Café?"},
                  {"role": "assistant", "content": "Oui.", "weight": 1}]},
    {"prompt": "2+2=", "completion": "4"},
]
CHAT_BYTES = jsonl(CHAT)


def test_inline_pairs(tmp_path):
    s = make_slice(tmp_path, io_pairs=[{"input": "hi", "output": "hello"}, {"input": "é", "output": "ü"}])
    m = materialize(s, opts(tmp_path))
    data = m.path.read_bytes()
    assert data == ('{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
                    '{"messages":[{"role":"user","content":"é"},{"role":"assistant","content":"ü"}]}\n').encode()
    assert (m.name, m.count, m.sha256, m.pins) == ("demo", 2, sha(data), [])
    mtime = m.path.stat().st_mtime_ns
    again = materialize(s, opts(tmp_path))
    assert again == m and again.path.stat().st_mtime_ns == mtime  # a cache hit: nothing rewritten


def test_all_sections_in_order_with_pins(tmp_path, local_server):
    hub = hub_routes(REPO, SHA40, {"data/train-00000-of-00001.parquet": parquet(
        [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])})
    srv = local_server({**hub, "/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, io_pairs=[{"input": "in", "output": "out"}],
                   huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", limit=3)],
                   openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256=sha(CHAT_BYTES))])
    m = materialize(s, opts(tmp_path))
    got = lines(m)
    assert m.count == 6 and len(got) == 6
    assert got[0] == {"messages": [{"role": "user", "content": "in"}, {"role": "assistant", "content": "out"}]}
    assert [r["messages"][0]["content"] for r in got[1:4]] == ["q0", "q1", "q2"]
    assert got[4] == CHAT[0]  # system message and weights 0/1 kept
    assert got[5] == {"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]}
    assert m.pins == [
        {"section": "HuggingFace", "link": f"{srv.url}/datasets/{REPO}", "revision": SHA40, "pinned": False, "rows": 3},
        {"section": "OpenAIJsonl", "link": f"{srv.url}/chat.jsonl", "sha256": sha(CHAT_BYTES), "pinned": True,
         "rows": 2},
    ]
    assert m.sha256 == sha(m.path.read_bytes())


def test_pinned_slice_second_run_makes_no_request(tmp_path, local_server):
    files = {"train-00000-of-00002.jsonl": jsonl([{"prompt": "a", "completion": "b"}]),
             "train-00001-of-00002.jsonl": jsonl([{"prompt": "c", "completion": "d"}])}
    srv = local_server({**hub_routes(REPO, SHA40, files), "/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40)],
                   openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256=sha(CHAT_BYTES))])
    first = materialize(s, opts(tmp_path))
    assert first.count == 4 and [p["pinned"] for p in first.pins] == [True, True]
    requests = len(srv.requests)
    assert requests == 4  # listing, two files, the JSONL
    second = materialize(s, opts(tmp_path, refresh=True))
    assert second == first
    assert len(srv.requests) == requests
    # The materialized file gone, the blobs still cached: converted again, still with no request.
    first.path.unlink()
    assert materialize(s, opts(tmp_path)).sha256 == first.sha256
    assert len(srv.requests) == requests


def test_unpinned_links_report_their_resolution(tmp_path, local_server):
    srv = local_server({**hub_routes(REPO, SHA40, {"train.jsonl": jsonl([{"question": "q", "answer": "a"}])}),
                        "/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}")],
                   openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl")])
    m = materialize(s, opts(tmp_path))
    assert [(p.get("revision"), p.get("sha256"), p["pinned"]) for p in m.pins] == [
        (SHA40, None, False), (None, sha(CHAT_BYTES), False)]
    n = len(srv.requests)
    materialize(s, opts(tmp_path))
    assert len(srv.requests) == n  # the url->sha index answers
    materialize(s, opts(tmp_path, refresh=True))
    assert srv.paths()[n:] == [f"/api/datasets/{REPO}/revision/main", "/chat.jsonl"]


def test_new_content_behind_an_unpinned_link_is_a_new_slice(tmp_path, local_server):
    srv = local_server({"/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl")])
    first = materialize(s, opts(tmp_path))
    srv.routes["/chat.jsonl"] = jsonl(CHAT[:1])
    second = materialize(s, opts(tmp_path, refresh=True))
    assert (first.count, second.count) == (2, 1) and first.path != second.path


def test_limit_stops_before_the_next_file(tmp_path, local_server):
    files = {f"data/train-0000{i}-of-00003.parquet": parquet([{"question": f"q{i}{j}", "answer": "a"} for j in range(4)])
             for i in range(3)}
    srv = local_server(hub_routes(REPO, SHA40, files))
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40, limit=4)])
    m = materialize(s, opts(tmp_path))
    assert m.count == 4 and m.pins[0]["rows"] == 4
    assert not any("00001" in p or "00002" in p for p in srv.paths())


def test_local_sources(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.csv").write_text("instruction,input,output\nAdd,1 1,2\n", encoding="utf-8")
    (tmp_path / "chat.jsonl").write_bytes(CHAT_BYTES)
    s = make_slice(tmp_path, huggingface=[HFEntry(link="ds")], openai_jsonl=[JsonlEntry(link="chat.jsonl")])
    m = materialize(s, opts(tmp_path))
    assert lines(m)[0] == {"messages": [{"role": "user", "content": "Add\n\n1 1"}, {"role": "assistant", "content": "2"}]}
    assert m.count == 3
    with pytest.raises(FetchError, match="local paths need --allow-local-sources"):
        materialize(s, opts(tmp_path, allow_local=False))
    # An edited local file is noticed: local sources are hashed on every run.
    (tmp_path / "ds" / "train.csv").write_text("instruction,input,output\nAdd,2 2,4\n", encoding="utf-8")
    assert lines(materialize(s, opts(tmp_path)))[0]["messages"][1]["content"] == "4"


# --- bad data: a clear message and nothing cached -------------------------------------------------


def test_malformed_jsonl_lines(tmp_path, local_server):
    body = CHAT_BYTES + b'{"messages": [}\n' + b"\xff\xfe\n" + b'{"question": "q", "answer": "a"}\n'
    srv = local_server({"/bad.jsonl": body})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/bad.jsonl")])
    with pytest.raises(InvalidInput) as info:
        materialize(s, opts(tmp_path))
    messages = [p.message for p in info.value.problems]
    assert messages == [
        f"OpenAIJsonl[0] {srv.url}/bad.jsonl: line 3: not valid JSON: Expecting value at column 15",
        f"OpenAIJsonl[0] {srv.url}/bad.jsonl: line 4: not UTF-8 (byte 1); save the file as UTF-8",
        f'OpenAIJsonl[0] {srv.url}/bad.jsonl: line 5: expected an OpenAI fine-tuning line: {{"messages": [...]}} '
        'or {"prompt": ..., "completion": ...}',
    ]
    assert {p.file for p in info.value.problems} == {str(s.path)}
    assert cached_files(tmp_path) == []


def test_bad_rows_in_a_dataset(tmp_path, local_server):
    rows = [{"question": "q", "answer": "a"}, {"question": "q", "answer": None}, {"question": 3, "answer": "a"}]
    srv = local_server(hub_routes(REPO, SHA40, {"train.jsonl": jsonl(rows)}))
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40)])
    with pytest.raises(InvalidInput) as info:
        materialize(s, opts(tmp_path))
    assert [p.message for p in info.value.problems] == [
        f"HuggingFace[0] {srv.url}/datasets/{REPO}: train.jsonl line 2: column 'answer' is empty",
        f"HuggingFace[0] {srv.url}/datasets/{REPO}: train.jsonl line 3: column 'question' is a number, not text",
    ]
    assert not (tmp_path / "cache" / "slices").exists() or not any((tmp_path / "cache" / "slices").iterdir())


def test_many_bad_rows_stop_early(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b"{}\n" * 1000)
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link="bad.jsonl")])
    with pytest.raises(InvalidInput) as info:
        materialize(s, opts(tmp_path))
    assert len(info.value.problems) == 21 and info.value.problems[-1].message == "stopped after 20 problems"


def test_empty_file_is_an_error(tmp_path, local_server):
    srv = local_server({"/empty.jsonl": b"\n\n"})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/empty.jsonl")])
    with pytest.raises(InvalidInput) as info:
        materialize(s, opts(tmp_path))
    assert info.value.problems[0].message.endswith("empty.jsonl: no rows")
    assert cached_files(tmp_path) == []


def test_sha_mismatch_and_oversize(tmp_path, local_server):
    srv = local_server({"/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256="d" * 64)])
    with pytest.raises(FetchError) as info:
        materialize(s, opts(tmp_path))
    assert str(info.value).startswith(str(s.path))
    assert f"has sha256 {sha(CHAT_BYTES)}, but the slice pins sha256 {'d' * 64}" in str(info.value)
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl")])
    with pytest.raises(FetchError, match="larger than the limit of 100 bytes"):
        materialize(s, opts(tmp_path, max_bytes=100))
    assert cached_files(tmp_path) == []


def test_lone_surrogate_is_a_row_problem(tmp_path):
    (tmp_path / "s.jsonl").write_bytes(b'{"prompt": "\\ud800", "completion": "x"}\n')
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link="s.jsonl")])
    with pytest.raises(InvalidInput) as info:
        materialize(s, opts(tmp_path))
    assert "lone surrogate" in info.value.problems[0].message


def test_streaming_keeps_memory_bounded(tmp_path):
    row = json.dumps({"prompt": "p" * 80, "completion": "c" * 80}).encode() + b"\n"
    (tmp_path / "big.jsonl").write_bytes(row * 20_000)  # 3.6 MB; held as dicts it would be ~20x that
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link="big.jsonl")])
    tracemalloc.start()
    try:
        m = materialize(s, opts(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m.count == 20_000
    assert peak < 3_000_000, peak  # ~2.1 MB at 5k, 20k and 80k rows alike: 1 MiB read chunks


# --- check_remote --------------------------------------------------------------------------------


def test_check_remote_prints_the_pins_to_add(tmp_path, local_server):
    routes = hub_routes(REPO, SHA40, {"train.jsonl": jsonl([{"question": "q", "answer": "a"}])}, branches=("main", "v1"))
    srv = local_server({**routes, "/chat.jsonl": CHAT_BYTES})
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}"),
                                          HFEntry(link=f"{srv.url}/datasets/{REPO}", revision="v1"),
                                          HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40)],
                   openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl"),
                                 JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256=sha(CHAT_BYTES))])
    found = check_remote(s, opts(tmp_path))
    assert [(p.file, p.line, p.col, p.severity) for p in found] == [(str(s.path), 0, 0, "warning")] * 3
    assert f"add `revision: {SHA40}`" in found[0].message
    assert f"`revision: v1` can move; replace it with `revision: {SHA40}`" in found[1].message
    assert f"add `sha256: {sha(CHAT_BYTES)}`" in found[2].message


def test_check_remote_errors(tmp_path, local_server):
    routes = hub_routes(REPO, SHA40, {"train.jsonl": jsonl([{"q": "x", "a": "y"}])})
    srv = local_server({**routes, "/chat.jsonl": CHAT_BYTES + b"not json\n"})
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40),
                                          HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40,
                                                  columns={"question": "q", "answer": "a"}),
                                          HFEntry(link=f"{srv.url}/datasets/org/missing", revision=SHA40),
                                          HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40,
                                                  columns={"question": "q", "output": "a"})],
                   openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256=sha(CHAT_BYTES + b"not json\n")),
                                 JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256="e" * 64)])
    found = check_remote(s, opts(tmp_path, allow_local=True))
    messages = [p.message for p in found]
    assert all(p.severity == "error" for p in found)
    assert "train.jsonl line 1: no known layout in columns (q, a)" in messages[0]
    assert "no such dataset or revision" in messages[1]
    assert "mixes the roles of two layouts" in messages[2]
    assert "chat.jsonl: line 3: not valid JSON" in messages[3]
    assert "chat.jsonl: line 3: not valid JSON" in messages[4]  # every row is checked, pinned or not
    assert "but the slice pins sha256 " + "e" * 64 in messages[5]
    assert len(found) == 6
    assert check_remote(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link="https://10.0.0.1/x.jsonl")]),
                        opts(tmp_path, allow_local=False))[0].message.endswith("10.0.0.1 is a private address "
                                                                               "(only public hosts are allowed)")


def test_check_remote_converts_every_row_not_a_sample(tmp_path, local_server):
    rows = [{"question": "q", "answer": "a"}] * 25 + [{"question": None, "answer": "a"}]
    srv = local_server(hub_routes(REPO, SHA40, {"train.jsonl": jsonl(rows)}))
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40)])
    found = check_remote(s, opts(tmp_path))
    assert len(found) == 1 and "line 26: column 'question' is empty" in found[0].message


BAD_AT_21 = jsonl(CHAT[:1] * 20 + [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}]
                  + CHAT[:1] * 4)


def test_check_remote_reports_a_bad_row_at_line_21_with_its_field_and_the_link_line(tmp_path, local_server):
    srv = local_server({"/chat.jsonl": BAD_AT_21})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl", sha256=sha(BAD_AT_21))])
    found = check_remote(s, opts(tmp_path), locate=lambda section, i: (7, 11))
    assert [(p.line, p.col, p.severity) for p in found] == [(7, 11, "error")]
    assert found[0].message == f"OpenAIJsonl[0] {srv.url}/chat.jsonl: line 21: message 1 has no text content (empty)"


def test_check_remote_too_large_link_is_not_fully_checked(tmp_path, local_server):
    from oig.data.sources import RemoteLimits

    srv = local_server({"/chat.jsonl": BAD_AT_21})
    s = make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=f"{srv.url}/chat.jsonl")])
    row = len(jsonl(CHAT[:1]))
    found = check_remote(s, opts(tmp_path), RemoteLimits(max_bytes=row * 10 + 5))
    assert [p.severity for p in found] == ["warning"]
    assert "not fully checked (10 rows checked of a file larger than --remote-max-bytes" in found[0].message
    assert "sha256" not in found[0].message  # no pin for a file nobody has read to the end
    assert "line 21" in check_remote(s, opts(tmp_path), RemoteLimits(max_bytes=len(BAD_AT_21)))[0].message


def test_validate_remote_through_the_cli(tmp_path, local_server, monkeypatch, capsys):
    from oig.cli import main

    srv = local_server({"/chat.jsonl": CHAT_BYTES})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.yaml").write_text(f"OpenAIJsonl:\n  - link: {srv.url}/chat.jsonl\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--remote", "--allow-local-sources", "data/chat.yaml"]) == 0
    assert f"add `sha256: {sha(CHAT_BYTES)}`" in capsys.readouterr().out


def test_unwritable_cache_is_a_clear_error(tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    s = make_slice(tmp_path, io_pairs=[{"input": "a", "output": "b"}])
    with pytest.raises(FetchError, match="cannot write to the cache in"):
        materialize(s, opts(tmp_path, cache_dir=tmp_path / "not-a-folder"))
    (tmp_path / "chat.jsonl").write_bytes(CHAT_BYTES)
    with pytest.raises(FetchError, match="cannot write to the cache in"):
        materialize(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link="chat.jsonl")]),
                    opts(tmp_path, cache_dir=tmp_path / "not-a-folder"))


def test_on_bad_rows_skip_leaves_out_and_counts_up_to_max_bad_rows(tmp_path, local_server):
    srv = local_server({"/chat.jsonl": BAD_AT_21})
    link = f"{srv.url}/chat.jsonl"
    m = materialize(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=link, max_bad_rows=1)]), opts(tmp_path))
    assert m.count == 24 and m.pins[0]["rows"] == 25 and m.pins[0]["bad_rows"] == 1
    with pytest.raises(InvalidInput) as exc:
        materialize(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=link, max_bad_rows=0)]), opts(tmp_path))
    [problem] = exc.value.problems
    assert problem.message.startswith(f"OpenAIJsonl[0] {link}: more than max_bad_rows: 0 rows do not convert")
    assert "line 21: message 1 has no text content" in problem.message
    found = check_remote(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=link, sha256=sha(BAD_AT_21),
                                                                       max_bad_rows=1)]), opts(tmp_path))
    assert [(p.severity, p.message) for p in found] == [
        ("warning", f"OpenAIJsonl[0] {link}: 1 of 25 rows do not convert and are skipped (on_bad_rows: skip, "
                    "max_bad_rows: 1)")]
    found = check_remote(make_slice(tmp_path, openai_jsonl=[JsonlEntry(link=link, sha256=sha(BAD_AT_21),
                                                                       max_bad_rows=0)]), opts(tmp_path))
    assert [p.severity for p in found] == ["error"] and "more than max_bad_rows: 0" in found[0].message


def test_check_remote_dataset_file_past_the_limit_is_not_fully_checked(tmp_path, local_server):
    from oig.data.sources import RemoteLimits

    data = jsonl([{"question": "q", "answer": "a"}] * 50)
    srv = local_server(hub_routes(REPO, SHA40, {"train.jsonl": data}))
    s = make_slice(tmp_path, huggingface=[HFEntry(link=f"{srv.url}/datasets/{REPO}", revision=SHA40)])
    [warning] = check_remote(s, opts(tmp_path), RemoteLimits(max_bytes=100))
    assert warning.severity == "warning"
    assert f"HuggingFace[0] {srv.url}/datasets/{REPO}: not fully checked (0 rows checked of a dataset file " \
           "larger than --remote-max-bytes 100" in warning.message
    assert check_remote(s, opts(tmp_path), RemoteLimits(max_bytes=len(data))) == []

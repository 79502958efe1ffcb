"""The call store: keys from content, values that survive reopening, WAL mode, a version check."""

from __future__ import annotations

import sqlite3

import pytest

from oig.errors import OigError
from oig.generate.store import CallStore, call_key


def test_keys_depend_on_content_not_on_key_order():
    a = call_key({"model": "m", "settings": {"temperature": 0.5, "max_tokens": 10}, "messages": []})
    b = call_key({"messages": [], "settings": {"max_tokens": 10, "temperature": 0.5}, "model": "m"})
    assert a == b and len(a) == 64
    assert call_key({"model": "m", "settings": {"temperature": 0.6, "max_tokens": 10}, "messages": []}) != a


def test_values_survive_reopening(tmp_path):
    path = tmp_path / "calls.sqlite"
    with CallStore(path) as store:
        store.put("k1", "chat", "m", {"text": "héllo", "usage": {"prompt_tokens": 3}})
        store.put("k1", "chat", "m", {"text": "again"})  # a replaced value keeps one row
        assert store.count() == 1 and store.writes == 2 and store.write_s > 0
    with CallStore(path) as store:
        assert store.get("k1") == {"text": "again"}
        assert store.get("missing") is None
        assert store.has(["k1", "k2"]) == {"k1"}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_damaged_value_is_asked_again(tmp_path):
    path = tmp_path / "calls.sqlite"
    with CallStore(path) as store:
        store.db.execute("INSERT INTO calls VALUES ('bad', 'chat', 'm', 'not json', 0, 0)")
        assert store.get("bad") is None


def test_a_store_from_another_version_is_refused(tmp_path):
    path = tmp_path / "calls.sqlite"
    CallStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(OigError, match="another version of oig generate"):
        CallStore(path)


def test_a_dry_run_store_creates_no_file(tmp_path):
    store = CallStore.open_readonly(tmp_path / "none" / "calls.sqlite")
    assert store.get("k") is None and store.count() == 0
    store.close()
    assert not (tmp_path / "none").exists()

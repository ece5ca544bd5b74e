"""The journal's schema v2 (wakegrid.journal): pins, and the paged, filtered history the API serves.

A real SQLite file in tmp_path; a v1 journal is written by the store itself with only the first
migration (as a daemon of the previous release wrote it), then opened by this one.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wakegrid.journal import MIGRATIONS, SqliteStore, Store

BASE = datetime(2026, 3, 1, 8, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return BASE + timedelta(minutes=minutes)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def store(path: Path):
    with SqliteStore(path) as opened:
        yield opened


def test_a_v1_journal_is_migrated_to_v2_and_keeps_every_row(path):
    with SqliteStore(path, migrations=MIGRATIONS[:1]) as v1:
        action_id = v1.begin_action("start", "nas", "wanted by stream")
        v1.log_decisions(at(0), [("node nas", "keep", "always_on")])
        v1.record_wake_request("stream", at(1), "192.0.2.4", "first request")
        v1.finish_wake("stream", at(2), True)
        v1.record_boot("nas", at(1), at(2))
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "pins" not in tables
    with SqliteStore(path) as v2:
        assert isinstance(v2, Store)
        assert v2.action(action_id)["target"] == "nas"
        assert [d["reason"] for d in v2.decisions()] == ["always_on"]
        assert [(w["service"], w["seconds"]) for w in v2.wakes()] == [("stream", 60.0)]
        assert [(b["node"], b["seconds"]) for b in v2.boots()] == [("nas", 60.0)]
        assert v2.pins() == []
        assert v2.pin("node", "nas", at(3)) is True
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS) == 2


def test_pins_are_kept_in_order_once_each_and_survive_a_reopen(store, path):
    assert store.pin("service", "stream", at(2)) is True
    assert store.pin("node", "nas", at(1)) is True
    assert store.pin("node", "nas", at(5)) is False  # already pinned: the first time stays
    assert [(p["kind"], p["name"], p["pinned_at"]) for p in store.pins()] == [
        ("node", "nas", at(1)),
        ("service", "stream", at(2)),
    ]
    with SqliteStore(path) as reopened:
        assert [p["name"] for p in reopened.pins()] == ["nas", "stream"]
        assert reopened.unpin("node", "nas") is True
        assert reopened.unpin("node", "nas") is False
    assert [p["name"] for p in store.pins()] == ["stream"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.pin("cluster", "nas"), r"unknown pin kind 'cluster' \(one of node, service\)"),
        (lambda s: s.unpin("vm", "nas"), r"unknown pin kind 'vm'"),
        (lambda s: s.pin("node", ""), r"name must be a non-empty string"),
        (lambda s: s.decisions(limit=-1), r"limit must be an integer ≥ 0, not -1"),
        (lambda s: s.wakes(offset=-5), r"offset must be an integer ≥ 0, not -5"),
        (lambda s: s.boots(offset=2**70), r"offset must be at most 9223372036854775807, not 1180591620717411303424"),
        (lambda s: s.boots(since=datetime(2026, 3, 1)), r"aware datetimes"),
        (lambda s: s.wakes(since=at(10), until=at(5)), r"until \(.*\) is before since \(.*\)"),
        (lambda s: s.decisions(since=at(10), until=at(5)), r"is before since"),
    ],
)
def test_invalid_filters_are_clear_errors(store, call, message):
    with pytest.raises(ValueError, match=message):
        call(store)


def test_decisions_filter_by_subject_verdict_and_time_and_page_newest_first(store):
    for minute in range(10):
        store.log_decisions(
            at(minute),
            [
                ("node nas", "wait" if minute % 2 else "keep", f"nas {minute}"),
                ("service stream", "keep", f"s {minute}"),
            ],
        )
    assert [d["reason"] for d in store.decisions(subject="node nas", limit=3)] == ["nas 9", "nas 8", "nas 7"]
    assert [d["reason"] for d in store.decisions(subject="node nas", limit=3, offset=8)] == ["nas 1", "nas 0"]
    assert [d["reason"] for d in store.decisions(subject="node nas", verdict="wait", since=at(5))] == [
        "nas 9",
        "nas 7",
        "nas 5",
    ]
    assert [d["reason"] for d in store.decisions(subject="service stream", since=at(2), until=at(4))] == ["s 3", "s 2"]
    assert store.decisions(subject="node ghost") == []


def test_wakes_and_boots_filter_by_name_and_time(store):
    for n in range(4):
        service = "stream" if n < 3 else "www"
        store.record_wake_request(service, at(10 * n), None, "test")
        store.finish_wake(service, at(10 * n + 1), n != 1)
        store.record_boot("nas" if n % 2 else "pve1", at(10 * n), at(10 * n + 2))
    wakes = store.wakes(service="stream")
    assert [(w["finished_at"], w["ok"]) for w in wakes] == [(at(21), True), (at(11), False), (at(1), True)]
    assert [w["finished_at"] for w in store.wakes(service="stream", limit=1, offset=1)] == [at(11)]
    assert [w["service"] for w in store.wakes(since=at(11), until=at(31))] == ["stream", "stream"]
    assert [w["service"] for w in store.wakes(since=at(11), until=at(32))] == ["www", "stream", "stream"]
    assert [(b["node"], b["up_at"]) for b in store.boots(node="nas")] == [("nas", at(32)), ("nas", at(12))]
    assert [b["seconds"] for b in store.boots(node="pve1", until=at(22))] == [120.0]

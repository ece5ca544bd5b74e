"""The journal on real SQLite files: actions and their idempotency keys, the decision log that
writes only changes, wakes and boots, the memory a restarted daemon decides from, retention that
keeps the file bounded, threads, a process killed mid-transaction, and the faults of a real disk
(full, read-only, corrupt, a directory) as a clear :class:`JournalError`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from wakegrid.journal import INTERRUPTED, MIGRATIONS, JournalError, SqliteStore, Store
from wakegrid.state import Backoff, Booting, WakeRequest

T0 = datetime(2026, 12, 6, 14, 2, 11, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as opened:
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    """A second, plain connection: what is really in the file."""
    return sqlite3.connect(path, isolation_level=None)


# --------------------------------------------------------------------------- the file


def test_the_file_is_a_wal_journal_with_its_schema_version(store, path):
    assert isinstance(store, Store)
    conn = raw(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_a_migration_added_later_runs_once_and_keeps_the_data(path):
    with SqliteStore(path) as first:
        action_id = first.begin_action("start", "nas", "wanted by stream")
    calls = []

    def add_priority(conn):
        calls.append(1)
        conn.execute("ALTER TABLE actions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")

    for _ in range(2):
        with SqliteStore(path, migrations=(*MIGRATIONS, add_priority)) as migrated:
            assert migrated.action(action_id)["target"] == "nas"
    assert calls == [1]
    conn = raw(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS) + 1
    assert conn.execute("SELECT priority FROM actions").fetchone()[0] == 0
    # the older daemon refuses a journal it does not understand, and says so
    newer = rf"newer wakegrid \(schema version {len(MIGRATIONS) + 1}; this one knows up to {len(MIGRATIONS)}\)"
    with pytest.raises(JournalError, match=newer):
        SqliteStore(path)


def test_a_failing_migration_leaves_the_journal_as_it_was(path):
    SqliteStore(path).close()

    def broken(conn):
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("this is not SQL")

    with pytest.raises(JournalError, match=r"cannot open: .*syntax error"):
        SqliteStore(path, migrations=(*MIGRATIONS, broken))
    conn = raw(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


# --------------------------------------------------------------------------- actions


def test_an_action_goes_from_planned_to_done_with_its_timings_and_events(store):
    action_id = store.begin_action("start", "nas", "wanted by stream", "start:nas", {"node": "nas"}, at=at(0))
    row = store.action(action_id)
    assert (row["state"], row["created_at"], row["started_at"], row["finished_at"]) == ("planned", at(0), None, None)
    store.set_action_state(action_id, "running", at=at(1))
    store.add_event(action_id, "runner_on_ok", {"task": "send magic packet", "host": "gw-dijon"}, at=at(2))
    store.add_event(action_id, "odd", {"when": at(3), "set": {1}}, at=at(3))  # not JSON: kept as text
    store.set_action_state(action_id, "running", at=at(4))  # running again: started_at stays
    store.set_action_state(action_id, "done", at=at(40))
    row = store.action(action_id)
    assert row["state"] == "done"
    assert (row["started_at"], row["finished_at"]) == (at(1), at(40))
    assert row["extravars"] == {"node": "nas"}
    assert row["key"] == "start:nas"
    assert [(e["kind"], e["at"]) for e in row["events"]] == [("runner_on_ok", at(2)), ("odd", at(3))]
    assert row["events"][0]["data"] == {"task": "send magic packet", "host": "gw-dijon"}
    assert row["events"][1]["data"] == {"when": str(at(3)), "set": "{1}"}


def test_a_finished_action_does_not_change_again(store):
    action_id = store.begin_action("stop", "jellyfin", "idle")
    store.set_action_state(action_id, "failed", error="shutdown.yml: jellyfin unreachable")
    assert store.action(action_id)["error"] == "shutdown.yml: jellyfin unreachable"
    with pytest.raises(ValueError, match="action #1 is already failed: it cannot become done"):
        store.set_action_state(action_id, "done")
    running = store.begin_action("stop", "nas", "idle")
    store.set_action_state(running, "running")
    with pytest.raises(ValueError, match="is running: it cannot be planned again"):
        store.set_action_state(running, "planned")


def test_bad_action_input_is_refused_clearly(store):
    action_id = store.begin_action("start", "nas", "r")
    with pytest.raises(ValueError, match="unknown action state 'finished'"):
        store.set_action_state(action_id, "finished")
    with pytest.raises(KeyError, match="no action #99"):
        store.set_action_state(99, "done")
    with pytest.raises(KeyError, match="no action #99"):
        store.add_event(99, "runner_on_ok", {})
    with pytest.raises(KeyError, match="no action #99"):
        store.action(99)
    with pytest.raises(ValueError, match="event data must be a mapping"):
        store.add_event(action_id, "x", ["not", "a", "mapping"])
    with pytest.raises(ValueError, match="kind must be a non-empty string"):
        store.begin_action("", "nas", "r")
    with pytest.raises(ValueError, match="aware datetimes"):
        store.begin_action("start", "nas", "r", at=datetime(2026, 12, 6, 14, 0))
    with pytest.raises(ValueError, match="limit must be an integer ≥ 0"):
        store.actions(limit=-1)
    with pytest.raises(ValueError, match="unknown action state"):
        store.actions(state="sleeping")
    # nothing half-written by the refusals
    assert [e["kind"] for e in store.action(action_id)["events"]] == []


def test_the_same_key_while_unfinished_is_the_same_action(store):
    first = store.begin_action("start", "nas", "wanted by stream", "start:nas")
    assert store.begin_action("start", "nas", "wanted by photos", "start:nas") == first
    store.set_action_state(first, "running")
    assert store.begin_action("start", "nas", "again", "start:nas") == first
    assert store.begin_action("start", "nas", "no key") != first  # no key: no deduplication
    store.set_action_state(first, "done")
    second = store.begin_action("start", "nas", "woken again", "start:nas")
    assert second != first
    assert store.action(second)["reason"] == "woken again"


def test_the_same_key_from_many_threads_and_two_processes_is_one_action(store, path):
    other = SqliteStore(path)  # another process on the same file (its own connection)
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def begin(journal):
        barrier.wait()
        ids.append(journal.begin_action("start", "nas", "race", "start:nas"))

    threads = [threading.Thread(target=begin, args=(store if i % 2 else other,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert len(store.actions()) == 1
    other.close()


def test_actions_are_listed_newest_first_by_node_and_state(store):
    for node in ("nas", "pve1", "nas", "jellyfin"):
        store.begin_action("start", node, f"start {node}")
    store.set_action_state(1, "done")
    assert [a["id"] for a in store.actions()] == [4, 3, 2, 1]
    assert [a["id"] for a in store.actions(node="nas")] == [3, 1]
    assert [a["id"] for a in store.actions(state="planned")] == [4, 3, 2]
    assert [a["id"] for a in store.actions(limit=2, offset=1)] == [3, 2]
    assert "events" not in store.actions()[0]


def test_a_second_store_on_a_file_left_open_interrupts_what_was_unfinished(path):
    killed = SqliteStore(path)  # never closed: what a killed process leaves
    started = killed.begin_action("start", "nas", "wanted by stream", "start:nas")
    killed.set_action_state(started, "running", at=at(1))
    planned = killed.begin_action("stop", "sandbox", "idle")
    finished = killed.begin_action("routes", None, "pool change")
    killed.set_action_state(finished, "done")

    restarted = SqliteStore(path)
    interrupted = restarted.interrupt_unfinished(at=at(60))
    assert [(a["id"], a["state"], a["key"]) for a in interrupted] == [
        (started, "running", "start:nas"),
        (planned, "planned", None),
    ]
    assert interrupted[0]["started_at"] == at(1)
    for action_id in (started, planned):
        row = restarted.action(action_id)
        assert (row["state"], row["error"], row["finished_at"]) == ("interrupted", INTERRUPTED, at(60))
    assert restarted.action(finished)["state"] == "done"
    assert restarted.interrupt_unfinished() == []
    assert restarted.memory(T0, at(60)).running == {}
    # the key is free again: the daemon resumes with a new action
    assert restarted.begin_action("start", "nas", "resumed", "start:nas") not in (started, planned)


KILLED_MID_WAKE = """
import os, signal, sys
from datetime import UTC, datetime
from wakegrid.journal import SqliteStore
store = SqliteStore(sys.argv[1])
action = store.begin_action("start", "nas", "wanted by stream", "start:nas")
store.set_action_state(action, "running")
store.note_booting("nas", datetime(2026, 12, 6, 14, 2, 11, tzinfo=UTC), "magic packet sent from gw-dijon")
store.add_event(action, "runner_on_ok", {"task": "wake"})
# killed in the middle of a write: a transaction holding the write lock, never committed
store._conn.execute("BEGIN IMMEDIATE")
store._conn.execute("INSERT INTO events (action_id, at, kind, data) VALUES (?, 'x', 'lost', '{}')", (action,))
print(action, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_process_killed_mid_transaction_leaves_a_journal_the_next_one_resumes(path):
    child = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WAKE, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -9, child.stderr
    action_id = int(child.stdout)
    restarted = SqliteStore(path, busy_timeout=1.0)  # the dead process's lock is gone: no wait
    memory = restarted.memory(T0, at(30))
    assert memory.running == {"nas": f"start #{action_id}"}
    # the booting note survives: the restarted daemon gives nas the rest of its time, no second packet
    assert memory.booting == {"nas": Booting(T0, "magic packet sent from gw-dijon")}
    assert [a["id"] for a in restarted.interrupt_unfinished()] == [action_id]
    assert [e["kind"] for e in restarted.action(action_id)["events"]] == ["runner_on_ok"]  # the lost one is lost


# --------------------------------------------------------------------------- decision log


def tick(*entries: str) -> list[tuple[str, str, str]]:
    return [tuple(entry.split("|")) for entry in entries]


def test_a_tick_where_nothing_changed_writes_nothing(store, path):
    first = tick("service stream|keep|kept awake: 2 requests in flight", "node nas|keep|needed by stream")
    assert store.log_decisions(at(0), first) == first
    size = store.size_bytes()
    for second in range(1, 50):
        assert store.log_decisions(at(second), first) == []
    assert store.size_bytes() == size
    changed = tick("service stream|keep|kept awake: 1 request in flight", "node nas|keep|needed by stream")
    assert store.log_decisions(at(60), changed) == changed[:1]
    assert [(d["at"], d["reason"]) for d in store.decisions(subject="service stream")] == [
        (at(60), "kept awake: 1 request in flight"),
        (at(0), "kept awake: 2 requests in flight"),
    ]
    assert len(store.decisions()) == 3


def test_a_verdict_that_comes_back_is_a_change_each_time(store):
    for second, entry in enumerate(["node nas|stop|idle 21m", "node nas|keep|in use", "node nas|stop|idle 21m"]):
        assert store.log_decisions(at(second), tick(entry)) == tick(entry)
    # the same subject twice in one tick: each change against the previous one
    assert store.log_decisions(at(9), tick("node nas|keep|a", "node nas|keep|a", "node nas|keep|b")) == tick(
        "node nas|keep|a", "node nas|keep|b"
    )
    assert [d["verdict"] for d in store.decisions(subject="node nas")] == ["keep", "keep", "stop", "keep", "stop"]


def test_the_decision_log_remembers_the_last_rows_across_a_restart(path):
    decisions = [SimpleNamespace(subject="route stream", verdict="route", reason="dijon: handshake stale (212 s)")]
    with SqliteStore(path) as first:
        assert first.log_decisions(at(0), decisions) == [("route stream", "route", "dijon: handshake stale (212 s)")]
    with SqliteStore(path) as second:
        assert second.log_decisions(at(5), decisions) == []
        assert second.log_decisions(at(5), [("route stream", "route", "every site back")]) != []


def test_decisions_are_read_by_subject_since_a_time_and_by_page(store):
    for second in range(10):
        store.log_decisions(at(second), [("service a", "keep", f"reason {second}"), ("service b", "wait", f"{second}")])
    assert len(store.decisions()) == 20
    assert [d["reason"] for d in store.decisions(subject="service a", since=at(7))] == [
        "reason 9",
        "reason 8",
        "reason 7",
    ]
    assert [d["id"] for d in store.decisions(limit=3, offset=2)] == [18, 17, 16]
    with pytest.raises(ValueError, match="aware datetimes"):
        store.decisions(since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="subject must be a non-empty string"):
        store.log_decisions(at(0), [("", "keep", "x")])


# --------------------------------------------------------------------------- wakes, boots, memory


def test_a_wake_resolves_the_requests_pending_when_the_service_became_ready(store):
    store.record_wake_request("stream", at(0), "10.231.9.5", "request from 10.231.9.5")
    store.record_wake_request("stream", at(4), "10.231.9.6", "request from 10.231.9.6")
    store.record_wake_request("stream", at(50), None, "POST /api/wake by admin")  # after ready: still pending
    memory = store.memory(T0, at(10))
    assert memory.wake_requests == {"stream": WakeRequest("stream", at(50), None, "POST /api/wake by admin")}
    assert store.finish_wake("stream", at(42), ok=True) == 2
    memory = store.memory(T0, at(60))
    assert memory.wake_requests["stream"].at == at(50)
    assert memory.woken_at == {"stream": at(42)}
    assert store.finish_wake("stream", at(55), ok=False) == 1
    assert store.finish_wake("stream", at(56), ok=True) == 0  # nothing pending: no wake journaled
    assert store.memory(T0, at(60)).wake_requests == {}
    assert store.memory(T0, at(60)).woken_at == {"stream": at(42)}  # a failed wake woke nothing

    history = store.wake_history()["stream"]
    assert (history.wakes, history.failed, history.requests) == (2, 1, 3)
    assert history.mean_seconds == 42.0  # over the successful wakes
    assert history.last_seconds is None  # the last one failed
    assert history.last_at == at(55)
    assert [r.reason for r in history.last_requests] == ["POST /api/wake by admin"]
    assert store.wake_history("photos") == {}


def test_wake_requests_nobody_finished_expire(path):
    with SqliteStore(path, wake_request_ttl=timedelta(minutes=10)) as store:
        store.record_wake_request("stream", at(0), "10.231.9.5", "request")
        assert "stream" in store.memory(T0, at(599)).wake_requests
        assert store.memory(T0, at(601)).wake_requests == {}


def test_boot_history_counts_boots_with_their_mean_and_last_time(store):
    store.record_boot("nas", at(0), at(40))
    store.record_boot("nas", at(100), at(120))
    store.record_boot("pve1", at(0), at(90))
    history = store.boot_history()
    assert set(history) == {"nas", "pve1"}
    nas = history["nas"]
    assert (nas.boots, nas.mean_seconds, nas.last_seconds, nas.last_at) == (2, 30.0, 20.0, at(120))
    assert set(store.boot_history("pve1")) == {"pve1"}
    assert store.boot_history("sandbox") == {}
    with pytest.raises(ValueError, match=r"nas: up at .* before its start"):
        store.record_boot("nas", at(10), at(5))


def test_memory_assembles_everything_decisions_remember(store):
    store.note_activity("stream", at(5))
    store.note_activity("stream", at(3))  # older: changes nothing
    store.note_booting("nas", at(10), "Wake-on-LAN magic packet sent from gw-dijon")
    store.note_booting("pve1", at(11), "first")
    store.clear_booting("pve1")
    backoff = store.note_start_failure("jellyfin", at(20), "wake.yml: Proxmox API timed out")
    store.set_pool("stream", ("dijon",))
    store.set_pool("photos", ("thory",))
    store.set_pool("photos", ())  # every site back: no row
    start = store.begin_action("start", "nas", "wanted by stream")
    stop = store.begin_action("stop", "sandbox", "idle")
    store.set_action_state(stop, "running")
    store.begin_action("routes", None, "pool change")
    done = store.begin_action("stop", "pve1", "idle")
    store.set_action_state(done, "done")

    memory = store.memory(T0, at(30))
    assert memory.started_at == T0
    assert memory.last_activity == {"stream": at(5)}
    assert memory.booting == {"nas": Booting(at(10), "Wake-on-LAN magic packet sent from gw-dijon")}
    assert memory.backoff == {"jellyfin": backoff}
    assert memory.pools == {"stream": ("dijon",)}
    assert memory.running == {"nas": f"start #{start}", "sandbox": f"stop #{stop}"}
    assert memory.wake_requests == {}


def test_start_failures_back_off_exponentially_up_to_the_cap(store):
    delays = [
        (store.note_start_failure("nas", at(0), f"failure {n}").until - at(0)).total_seconds() for n in range(1, 10)
    ]
    assert delays == [10, 20, 40, 80, 160, 320, 600, 600, 600]
    assert store.memory(T0, at(0)).backoff["nas"] == Backoff(9, at(600), "failure 9")
    for _ in range(100):  # however many failures: no overflow
        store.note_start_failure("nas", at(0), "again", base=1.0, cap=3600.0)
    store.clear_backoff("nas")
    assert store.note_start_failure("nas", at(0), "fresh").failures == 1
    with pytest.raises(ValueError, match="0 < base ≤ cap"):
        store.note_start_failure("nas", at(0), "x", base=0)


def test_activity_is_written_only_when_it_moves_forward(store, path):
    store.note_activity("stream", at(5))
    size = store.size_bytes()
    for _ in range(100):
        store.note_activity("stream", at(5))
    assert store.size_bytes() == size
    store.note_activity("stream", at(6))
    with SqliteStore(path) as again:
        again.note_activity("stream", at(1))
        assert again.memory(T0, at(10)).last_activity == {"stream": at(6)}


def test_bad_pool_and_wake_input_is_refused(store):
    with pytest.raises(ValueError, match="tuple of site names"):
        store.set_pool("stream", "dijon")
    with pytest.raises(ValueError, match="tuple of site names"):
        store.set_pool("stream", ("dijon", ""))
    with pytest.raises(ValueError, match="service must be a non-empty string"):
        store.record_wake_request("", at(0), None, "r")
    with pytest.raises(ValueError, match="aware datetimes"):
        store.note_activity("stream", datetime(2026, 12, 6))
    assert store.memory(T0, at(0)).pools == {}


# --------------------------------------------------------------------------- threads


def test_threads_write_events_while_memory_is_read(store):
    actions = [store.begin_action("start", f"node{i}", "load") for i in range(4)]
    for action_id in actions:
        store.set_action_state(action_id, "running")
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(action_id: int) -> None:
        try:
            for n in range(300):
                store.add_event(action_id, "runner_on_ok", {"n": n})
                if n % 50 == 0:
                    store.log_decisions(at(n), [(f"node node{action_id}", "wait", f"start #{action_id} at {n}")])
                    store.note_activity(f"service{action_id}", at(n))
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                memory = store.memory(T0, at(0))
                assert set(memory.running) == {f"node{i}" for i in range(4)}
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(action_id,)) for action_id in actions]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    for action_id in actions:
        assert [e["data"]["n"] for e in store.action(action_id)["events"]] == list(range(300))
    assert len(store.decisions(limit=1000)) == 4 * 6


# --------------------------------------------------------------------------- retention


def test_pruning_keeps_the_file_bounded_and_never_touches_unfinished_actions(store):
    old = T0 - timedelta(days=60)
    running = store.begin_action("start", "nas", "still running", "start:nas", at=old)
    store.set_action_state(running, "running", at=old)
    store.add_event(running, "runner_on_start", {"task": "wake"}, at=old)
    store.log_decisions(old, [("node pve1", "keep", "always_on")])  # the current reason, however old
    for n in range(300):
        action_id = store.begin_action("stop", f"node{n}", "idle " * 20, at=old)
        for e in range(20):
            store.add_event(action_id, "runner_on_ok", {"stdout": "x" * 200, "n": e}, at=old)
        store.set_action_state(action_id, "done", at=old)
    for n in range(3000):
        store.log_decisions(at(n), [("service stream", "keep", f"kept awake: {n} requests " + "x" * 100)])
    store.record_wake_request("stream", old, "10.0.0.1", "request")
    store.finish_wake("stream", old + timedelta(seconds=30), ok=True)
    store.record_boot("nas", old, old + timedelta(seconds=40))
    store.note_activity("gone-service", old)
    grown = store.size_bytes()

    deleted = store.prune(at(3000), keep_days=30, keep_rows=1000)
    assert deleted["actions"] == 300
    assert deleted["events"] == 300 * 20
    assert deleted["decisions"] == 3000 + 1 - 1000
    assert (deleted["wakes"], deleted["wake_requests"], deleted["boots"], deleted["activity"]) == (1, 1, 1, 1)
    assert store.size_bytes() < grown / 3

    row = store.action(running)
    assert row["state"] == "running"
    assert [e["kind"] for e in row["events"]] == ["runner_on_start"]
    assert store.memory(T0, at(3000)).running == {"nas": f"start #{running}"}
    # the decision log is cut to the row cap; a no-change tick after pruning still writes nothing
    assert len(store.decisions(limit=5000)) == 1000
    assert store.log_decisions(at(3001), [("service stream", "keep", "kept awake: 2999 requests " + "x" * 100)]) == []
    assert store.prune(at(3000), keep_days=30, keep_rows=1000) == dict.fromkeys(deleted, 0)


def test_pruning_by_age_keeps_each_subjects_last_decision(store):
    old = T0 - timedelta(days=60)
    store.log_decisions(old, [("node pve1", "keep", "always_on"), ("node nas", "stop", "idle")])
    store.log_decisions(old + timedelta(hours=1), [("node nas", "keep", "in use")])
    assert store.prune(T0, keep_days=30)["decisions"] == 1
    assert sorted((d["subject"], d["reason"]) for d in store.decisions()) == [
        ("node nas", "in use"),
        ("node pve1", "always_on"),
    ]


def test_insert_and_prune_cycles_do_not_grow_the_file(store):
    sizes = []
    for cycle in range(6):
        now = at(cycle * 86_400)
        for _ in range(100):
            action_id = store.begin_action("start", "nas", "cycle", at=now)
            store.add_event(action_id, "runner_on_ok", {"stdout": "y" * 500}, at=now)
            store.set_action_state(action_id, "done", at=now)
        store.prune(now, keep_days=30, keep_rows=100)
        sizes.append(store.size_bytes())
    assert max(sizes[2:]) <= sizes[1] * 1.1, sizes


def test_ids_are_never_given_twice_even_after_pruning(store):
    first = store.begin_action("start", "nas", "r", at=T0)
    store.set_action_state(first, "done", at=T0)
    store.log_decisions(T0, [("node nas", "start", "wanted")])
    store.prune(at(86_400 * 40), keep_days=30)
    assert store.actions() == []
    assert store.begin_action("start", "nas", "r") == first + 1


def test_bad_retention_settings_are_refused(store):
    with pytest.raises(ValueError, match="keep_days must be > 0"):
        store.prune(T0, keep_days=0)
    with pytest.raises(ValueError, match="keep_rows must be an integer ≥ 1"):
        store.prune(T0, keep_rows=0)


# --------------------------------------------------------------------------- faults


def assert_clear(error: JournalError, path: Path, cause: str) -> None:
    message = str(error)
    assert message.startswith(f"journal {path}: "), message
    assert cause in message, message
    assert error.__suppress_context__ or error.__context__ is None  # no sqlite3 traceback chained to it


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(JournalError) as caught:
        SqliteStore(tmp_path)
    assert_clear(caught.value, tmp_path, "it is a directory, not a file")
    missing = tmp_path / "no-such-dir" / "journal.sqlite3"
    with pytest.raises(JournalError) as caught:
        SqliteStore(missing)
    assert_clear(caught.value, missing, f"its directory {missing.parent} does not exist")


def test_a_file_sqlite_cannot_use_is_refused():
    with pytest.raises(JournalError) as caught:
        SqliteStore("/proc/version")
    assert_clear(caught.value, Path("/proc/version"), "SQLite cannot use this file")
    with pytest.raises(JournalError) as caught:
        SqliteStore("/dev/null")
    assert_clear(caught.value, Path("/dev/null"), "it is not a regular file")


def test_a_file_that_is_not_a_database_is_refused(path):
    path.write_bytes(b"wakegrid was here, but not SQLite\n" * 200)
    with pytest.raises(JournalError) as caught:
        SqliteStore(path)
    assert_clear(caught.value, path, "the file is corrupt or not a SQLite database (file is not a database)")
    assert "move journal.sqlite3 aside" in str(caught.value)


def test_a_corrupt_journal_is_refused(path):
    with SqliteStore(path) as store:
        for n in range(2000):
            store.log_decisions(at(n), [(f"service {n}", "keep", "x" * 200)])
    with path.open("r+b") as file:
        file.seek(5 * 4096)
        file.write(b"\xa5" * 3 * 4096)
    with pytest.raises(JournalError) as caught:
        SqliteStore(path)
    assert_clear(caught.value, path, "corrupt")


def test_another_database_is_not_taken_for_a_journal(path):
    conn = raw(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    with pytest.raises(JournalError) as caught:
        SqliteStore(path)
    assert_clear(caught.value, path, "not a wakegrid journal (a SQLite database with other tables: invoices)")


def test_a_closed_journal_says_so(store, path):
    store.close()
    store.close()
    with pytest.raises(JournalError) as caught:
        store.memory(T0, T0)
    assert_clear(caught.value, path, "cannot read the memory: the journal is closed")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tiny file system of our own (2 MiB), to fill or make read-only for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_a_clear_error_and_writes_resume_when_space_returns(tmpfs):
    path = tmpfs / "journal.sqlite3"
    store = SqliteStore(path)
    action_id = store.begin_action("start", "nas", "wanted by stream")
    filler = tmpfs / "filler"
    with filler.open("wb") as file, pytest.raises(OSError, match="No space left"):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    with pytest.raises(JournalError) as caught:
        for n in range(100):
            store.add_event(action_id, "runner_on_ok", {"stdout": "x" * 2000, "n": n})
    assert_clear(caught.value, path, f"cannot record an event: the disk is full (0 bytes free on {tmpfs})")
    with pytest.raises(JournalError, match="the disk is full"):
        store.log_decisions(at(0), [("node nas", "start", "wanted by stream")])
    # reads go on, and nothing half-written is visible
    assert store.memory(T0, at(0)).running == {"nas": f"start #{action_id}"}
    assert store.decisions() == []
    filler.unlink()
    store.add_event(action_id, "runner_on_ok", {"n": "after"})
    # the failed decision was not remembered as written: the next tick writes it
    assert store.log_decisions(at(1), [("node nas", "start", "wanted by stream")]) != []
    store.close()


def test_a_read_only_disk_is_a_clear_error(tmpfs):
    path = tmpfs / "journal.sqlite3"
    with SqliteStore(path) as store:
        store.begin_action("start", "nas", "r")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(JournalError) as caught:
        SqliteStore(path)
    assert_clear(caught.value, path, "cannot open: cannot write it: Read-only file system")
    with pytest.raises(JournalError) as caught:
        SqliteStore(tmpfs / "new.sqlite3")
    assert_clear(caught.value, tmpfs / "new.sqlite3", f"cannot create a file in {tmpfs}: Read-only file system")

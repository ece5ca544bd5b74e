"""The reconciler's journal: what it did and why, and what it must remember across a restart.

The daemon is level-triggered: every round recomputes everything from a fresh observation.
What an observation cannot tell is kept here, behind the small :class:`Store` interface
(SQLite by default, :class:`SqliteStore`; a PostgreSQL store will implement the same):

- **actions** (a start, a stop, a routes push) with an idempotency key, a state
  (``planned`` → ``running`` → ``done`` | ``failed`` | ``interrupted``), timings and the
  runner's events. A second :meth:`~Store.begin_action` with the key of an unfinished
  action returns that action: a killed daemon that restarts finds its runs
  (:meth:`~Store.interrupt_unfinished`) instead of starting them twice;
- the **decision log**: a subject's row is written only when its verdict or reason
  changes, so a tick where nothing changed writes nothing;
- **wakes**: the requests that asked for a service, when it became ready, how long
  machines took to boot (:meth:`~Store.wake_history`, :meth:`~Store.boot_history`);
- the **memory** decisions depend on (:class:`wakegrid.state.Memory`): pending wake
  requests, last activity, nodes booting since a journaled step (so a restarted daemon
  gives a booting machine the rest of its time instead of a second burst of magic
  packets), start backoff, the sites left out of each pool, the runs in progress.

Retention (:meth:`~Store.prune`) deletes old rows, never an unfinished action, and gives
the space back to the file system: the database does not grow without bound.

Every failure of the database (a full or read-only disk, a corrupt file, a path that is a
directory) is a :class:`JournalError` naming the file and the cause in words. Times are
aware datetimes, stored in UTC; a naive datetime is refused (``ValueError``).

SQLite specifics stay in :class:`SqliteStore`: WAL mode (readers never wait for the
writer), ``busy_timeout`` for a second process on the file, foreign keys on, incremental
auto-vacuum, and a ``schema_version`` table with :data:`MIGRATIONS` applied in order at
open. Its queries keep to what PostgreSQL also understands (``ON CONFLICT`` upserts, partial
indexes, ``RETURNING``, ``LIMIT … OFFSET``; only the ``?`` placeholders and the DDL's
``AUTOINCREMENT`` differ); times are ISO 8601 text in UTC, so text order is time order.
One connection serves every thread, one call at a time under a lock: each call is a
short transaction (milliseconds), cheap enough to call from the event loop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

from wakegrid.state import Backoff, Booting, Memory, WakeRequest

ActionState = Literal["planned", "running", "done", "failed", "interrupted"]
ACTION_STATES: tuple[ActionState, ...] = ("planned", "running", "done", "failed", "interrupted")
UNFINISHED: tuple[ActionState, ...] = ("planned", "running")
# Actions whose target is a node: they fill Memory.running (a routes push targets no node).
NODE_ACTION_KINDS = ("start", "stop")
# A wake request nobody finished within this long is no longer pending: its client is long gone.
WAKE_REQUEST_TTL = timedelta(hours=1)
INTERRUPTED = "interrupted: the daemon stopped before the run finished"


class JournalError(Exception):
    """The journal's database failed; the message names the file and the cause in words."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        self.path = str(path)
        super().__init__(f"journal {self.path}: {message}")


class EventRow(TypedDict):
    id: int
    action_id: int
    at: datetime
    kind: str
    data: dict[str, Any]


class ActionRow(TypedDict):
    id: int
    kind: str  # "start", "stop", "routes"
    target: str | None  # the node of a start or stop
    reason: str
    key: str | None  # idempotency key
    extravars: dict[str, Any]
    state: ActionState
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    events: NotRequired[list[EventRow]]  # only from Store.action()


class DecisionRow(TypedDict):
    id: int
    at: datetime
    subject: str  # "service stream", "node jellyfin", "route stream"
    verdict: str
    reason: str


class WakeRow(TypedDict):
    id: int
    service: str
    requested_at: datetime
    finished_at: datetime
    ok: bool
    seconds: float
    requests: int


class BootRow(TypedDict):
    id: int
    node: str
    started_at: datetime
    up_at: datetime
    seconds: float


class PinRow(TypedDict):
    kind: str  # "node" | "service"
    name: str
    pinned_at: datetime


@dataclass(frozen=True)
class NodeBoots:
    """How a node boots: from the journaled start step to being seen up."""

    node: str
    boots: int
    mean_seconds: float
    last_seconds: float
    last_at: datetime  # when it was last seen up after a boot


@dataclass(frozen=True)
class ServiceWakes:
    """A service's wakes: each resolves the requests pending when it became ready (or failed)."""

    service: str
    wakes: int
    failed: int
    requests: int  # requests that triggered the wakes
    mean_seconds: float | None  # from the first request to ready, over successful wakes
    last_seconds: float | None
    last_at: datetime
    last_requests: tuple[WakeRequest, ...]  # the requests of the last wake, oldest first


@runtime_checkable
class Store(Protocol):
    """What the daemon keeps; implemented by :class:`SqliteStore` (and a PostgreSQL store later).

    Every method may raise :class:`JournalError`. Times are aware datetimes (``ValueError`` if naive);
    the optional ``at`` arguments default to now.
    """

    # actions
    def begin_action(
        self,
        kind: str,
        target: str | None,
        reason: str,
        key: str | None = None,
        extravars: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> int:
        """A new ``planned`` action, or the unfinished one that already has ``key``."""
        ...

    def set_action_state(
        self, action_id: int, state: ActionState, error: str | None = None, at: datetime | None = None
    ) -> None:
        """Move an action on (running stamps ``started_at``, done/failed/interrupted ``finished_at``)."""
        ...

    def add_event(self, action_id: int, kind: str, data: Mapping[str, Any], at: datetime | None = None) -> int: ...

    def action(self, action_id: int) -> ActionRow:
        """One action with its events; ``KeyError`` when there is none."""
        ...

    def actions(
        self, limit: int = 50, offset: int = 0, node: str | None = None, state: ActionState | None = None
    ) -> list[ActionRow]:
        """Actions, newest first, without their events."""
        ...

    def interrupt_unfinished(self, at: datetime | None = None) -> list[ActionRow]:
        """At start: actions a killed process left planned or running become ``interrupted``; returned."""
        ...

    # decision log
    def log_decisions(self, at: datetime, decisions: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Journal the (subject, verdict, reason) that changed since the subject's last row; returns those."""
        ...

    def decisions(
        self,
        limit: int = 100,
        offset: int = 0,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        verdict: str | None = None,
    ) -> list[DecisionRow]: ...

    # wakes
    def record_wake_request(self, service: str, at: datetime, client: str | None, reason: str) -> int: ...

    def finish_wake(self, service: str, at: datetime, ok: bool) -> int:
        """Resolve the service's requests pending at ``at``; returns how many."""
        ...

    def record_boot(self, node: str, started_at: datetime, up_at: datetime) -> int: ...

    def wake_history(self, service: str | None = None) -> dict[str, ServiceWakes]: ...

    def boot_history(self, node: str | None = None) -> dict[str, NodeBoots]: ...

    # history, page by page (newest first)
    def wakes(
        self,
        limit: int = 50,
        offset: int = 0,
        service: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[WakeRow]: ...

    def boots(
        self,
        limit: int = 50,
        offset: int = 0,
        node: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[BootRow]: ...

    # the dashboard's front page
    def pin(self, kind: str, name: str, at: datetime | None = None) -> bool:
        """True when newly pinned."""
        ...

    def unpin(self, kind: str, name: str) -> bool:
        """True when it was pinned."""
        ...

    def pins(self) -> list[PinRow]: ...

    # what decisions remember
    def note_activity(self, service: str, at: datetime) -> None: ...

    def note_booting(self, node: str, since: datetime, step: str) -> None: ...

    def clear_booting(self, node: str) -> None: ...

    def note_start_failure(
        self, node: str, at: datetime, error: str, base: float = 10.0, cap: float = 600.0
    ) -> Backoff: ...

    def clear_backoff(self, node: str) -> None: ...

    def set_pool(self, service: str, excluded_sites: tuple[str, ...]) -> None: ...

    def memory(self, started_at: datetime, now: datetime) -> Memory: ...

    # housekeeping
    def prune(self, now: datetime, keep_days: float = 30.0, keep_rows: int = 200_000) -> dict[str, int]: ...

    def size_bytes(self) -> int: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- schema

Migration = Callable[[sqlite3.Connection], None]

# AUTOINCREMENT: an id is never given twice, even after pruning ("start #12" in a log line names one action).
_V1 = (
    """CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        target TEXT,
        reason TEXT NOT NULL,
        idempotency_key TEXT,
        extravars TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('planned', 'running', 'done', 'failed', 'interrupted')),
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    )""",
    # the idempotency key: unique among unfinished actions only (a finished key may come back)
    "CREATE UNIQUE INDEX actions_open_key ON actions (idempotency_key) WHERE state IN ('planned', 'running')",
    "CREATE INDEX actions_target ON actions (target, id)",
    "CREATE INDEX actions_state ON actions (state, id)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action_id INTEGER NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX events_action ON events (action_id, id)",
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        subject TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL
    )""",
    "CREATE INDEX decisions_subject ON decisions (subject, id)",
    "CREATE INDEX decisions_at ON decisions (at)",
    """CREATE TABLE wakes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        ok INTEGER NOT NULL,
        seconds REAL NOT NULL,
        requests INTEGER NOT NULL
    )""",
    "CREATE INDEX wakes_service ON wakes (service, id)",
    """CREATE TABLE wake_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        at TEXT NOT NULL,
        client TEXT,
        reason TEXT NOT NULL,
        wake_id INTEGER REFERENCES wakes (id) ON DELETE CASCADE,
        resolved_at TEXT
    )""",
    "CREATE INDEX wake_requests_pending ON wake_requests (service, at) WHERE resolved_at IS NULL",
    "CREATE INDEX wake_requests_wake ON wake_requests (wake_id)",
    """CREATE TABLE boots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node TEXT NOT NULL,
        started_at TEXT NOT NULL,
        up_at TEXT NOT NULL,
        seconds REAL NOT NULL
    )""",
    "CREATE INDEX boots_node ON boots (node, id)",
    "CREATE TABLE activity (service TEXT PRIMARY KEY, at TEXT NOT NULL)",
    "CREATE TABLE booting (node TEXT PRIMARY KEY, since TEXT NOT NULL, step TEXT NOT NULL)",
    """CREATE TABLE backoff (
        node TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        retry_at TEXT NOT NULL,
        last_error TEXT NOT NULL,
        last_at TEXT NOT NULL
    )""",
    "CREATE TABLE pools (service TEXT PRIMARY KEY, excluded TEXT NOT NULL)",
)


def _schema_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


def _schema_v2(conn: sqlite3.Connection) -> None:
    # What an admin pinned to the dashboard's front page (a fleet node or service, by name).
    conn.execute(
        """CREATE TABLE pins (
            kind TEXT NOT NULL CHECK (kind IN ('node', 'service')),
            name TEXT NOT NULL,
            pinned_at TEXT NOT NULL,
            PRIMARY KEY (kind, name)
        )"""
    )
    conn.execute("CREATE INDEX wakes_finished ON wakes (finished_at)")
    conn.execute("CREATE INDEX boots_up ON boots (up_at)")


# MIGRATIONS[i] takes the schema from version i to i + 1, inside the transaction that records i + 1.
# Append, never edit: a journal written by an older daemon is brought up to date at open.
MIGRATIONS: tuple[Migration, ...] = (_schema_v1, _schema_v2)

PIN_KINDS = ("node", "service")
INT_MAX = 2**63 - 1  # the largest integer SQLite (and PostgreSQL's bigint) stores


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(at: datetime) -> str:
    """UTC, fixed width: text order is time order (as in PostgreSQL's timestamptz)."""
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise ValueError(f"{at!r}: the journal takes aware datetimes (UTC)")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _nonnegative(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0, not {value!r}")
    if value > INT_MAX:
        raise ValueError(f"{name} must be at most {INT_MAX}, not {value}")
    return value


def _filters(
    limit: int, offset: int, time_column: str, since: datetime | None, until: datetime | None, **equal: str | None
) -> tuple[str, list[Any]]:
    """A WHERE clause (with its parameters) for a page of a history table; bad bounds are ValueErrors."""
    _nonnegative("limit", limit)
    _nonnegative("offset", offset)
    if since is not None and until is not None and until < since:
        raise ValueError(f"until ({until.isoformat()}) is before since ({since.isoformat()})")
    where: list[str] = []
    params: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append(f"{time_column} >= ?")
        params.append(_ts(since))
    if until is not None:
        where.append(f"{time_column} < ?")
        params.append(_ts(until))
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def _pin_kind(kind: str) -> None:
    if kind not in PIN_KINDS:
        raise ValueError(f"unknown pin kind {kind!r} (one of {', '.join(PIN_KINDS)})")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return value


_ACTION_COLUMNS = (
    "id, kind, target, reason, idempotency_key, extravars, state, error, created_at, started_at, finished_at"
)


def _action_row(row: Sequence[Any]) -> ActionRow:
    return ActionRow(
        id=row[0],
        kind=row[1],
        target=row[2],
        reason=row[3],
        key=row[4],
        extravars=json.loads(row[5]),
        state=row[6],
        error=row[7],
        created_at=datetime.fromisoformat(row[8]),
        started_at=_dt(row[9]),
        finished_at=_dt(row[10]),
    )


def _os_cause(path: Path) -> str | None:
    """Why the operating system refuses to let us write ``path`` (or create it), in its words."""
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
        else:
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"cannot write it: {reason}" if path.exists() else f"cannot create a file in {path.parent}: {reason}"
    return None


# --------------------------------------------------------------------------- SQLite


class SqliteStore:
    """The journal in one SQLite file (WAL mode; ``-wal`` and ``-shm`` files beside it).

    ``busy_timeout``: how long a call waits for another process holding the write lock.
    One daemon process writes a journal; a second process may read it (or take over after
    the first was killed: nothing is locked between transactions).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        wake_request_ttl: timedelta = WAKE_REQUEST_TTL,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.wake_request_ttl = wake_request_ttl
        self._migrations = tuple(migrations)
        self._lock = threading.RLock()
        # Process-local caches so a no-change round writes nothing: subject → (verdict, reason)
        # of its last row, service → last activity journaled. Filled from the file at first use.
        self._last_decision: dict[str, tuple[str, str]] | None = None
        self._activity: dict[str, str] | None = None
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ opening, errors

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise JournalError(self.path, "cannot open: it is a directory, not a file")
        if not self.path.parent.is_dir():
            raise JournalError(self.path, f"cannot open: its directory {self.path.parent} does not exist")
        if self.path.exists() and not self.path.is_file():
            raise JournalError(self.path, "cannot open: it is not a regular file")
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Only takes effect on a new file (before its first table); pruning then frees pages.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(self.path, f"cannot open: WAL mode refused (journal mode stays {mode})")
            # WAL with synchronous NORMAL survives a killed process; a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            # A corrupt file is found at start, not in the middle of a round (retention bounds its cost).
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise JournalError(
                    self.path, "cannot open: the file is corrupt: " + "; ".join(problems) + self._corrupt_advice()
                )
            self._migrate(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._error("open", exc) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        known = len(self._migrations)
        while True:
            conn.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then sees the new version
            try:
                version = self._version(conn)
                if version > known:
                    raise JournalError(
                        self.path,
                        f"written by a newer wakegrid (schema version {version}; this one knows up to {known})",
                    )
                if version == known:
                    conn.execute("COMMIT")
                    return
                self._migrations[version](conn)
                conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _version(self, conn: sqlite3.Connection) -> int:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in tables:
            return conn.execute("SELECT version FROM schema_version").fetchone()[0]
        if tables:
            listed = ", ".join(sorted(tables)[:5])
            raise JournalError(self.path, f"not a wakegrid journal (a SQLite database with other tables: {listed})")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0

    def _corrupt_advice(self) -> str:
        return f" (move {self.path.name} aside, with its -wal and -shm files, and a new journal is started)"

    def _error(self, what: str, exc: sqlite3.Error) -> JournalError:
        """The sqlite3 exception as a sentence: what failed and why, never a bare library message."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        detail = str(exc)
        if name == "SQLITE_FULL" or "disk is full" in detail:
            try:
                free = os.statvfs(self.path.parent).f_bavail * os.statvfs(self.path.parent).f_frsize
                cause = f"the disk is full ({free} bytes free on {self.path.parent})"
            except OSError:
                cause = "the disk is full"
        elif name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in detail:
            cause = f"the file is corrupt or not a SQLite database ({detail})" + self._corrupt_advice()
        elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            cause = f"locked by another process for more than {self.busy_timeout:g} s ({detail})"
        elif name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM", "SQLITE_AUTH")):
            os_cause = _os_cause(self.path)
            cause = f"{os_cause} ({detail})" if os_cause else f"SQLite cannot use this file ({detail})"
        else:
            cause = detail
        return JournalError(self.path, f"cannot {what}: {cause}")

    @contextmanager
    def _transaction(self, what: str, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; a database failure becomes a :class:`JournalError`."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise JournalError(self.path, f"cannot {what}: the journal is closed")
            try:
                # IMMEDIATE: take the write lock at once, so a read-then-write cannot be overtaken
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise self._error(what, exc) from None
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # SQLite may have rolled back already (a full disk does); the connection stays usable
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ actions

    def begin_action(
        self,
        kind: str,
        target: str | None,
        reason: str,
        key: str | None = None,
        extravars: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> int:
        """A new ``planned`` action, or the unfinished one that already has ``key`` (its id)."""
        _text("kind", kind)
        if target is not None:
            _text("target", target)
        if key is not None:
            _text("key", key)
        created = _ts(at or _now())
        variables = json.dumps(dict(extravars or {}), default=str, ensure_ascii=False)
        with self._transaction("begin an action") as conn:
            if key is not None:
                row = conn.execute(
                    "SELECT id FROM actions WHERE idempotency_key = ? AND state IN ('planned', 'running')", (key,)
                ).fetchone()
                if row is not None:
                    return row[0]
            return conn.execute(
                "INSERT INTO actions (kind, target, reason, idempotency_key, extravars, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'planned', ?) RETURNING id",
                (kind, target, str(reason), key, variables, created),
            ).fetchone()[0]

    def set_action_state(
        self, action_id: int, state: ActionState, error: str | None = None, at: datetime | None = None
    ) -> None:
        """Move an action on. ``running`` stamps ``started_at``; a final state stamps ``finished_at``.

        A finished action does not change again (``ValueError``); an unknown one is a ``KeyError``.
        """
        if state not in ACTION_STATES:
            raise ValueError(f"unknown action state {state!r} (one of {', '.join(ACTION_STATES)})")
        stamp = _ts(at or _now())
        with self._transaction("change an action's state") as conn:
            row = conn.execute("SELECT state, started_at FROM actions WHERE id = ?", (action_id,)).fetchone()
            if row is None:
                raise KeyError(f"no action #{action_id}")
            current, started = row
            if current not in UNFINISHED:
                raise ValueError(f"action #{action_id} is already {current}: it cannot become {state}")
            if state == "planned":
                if current == "running":
                    raise ValueError(f"action #{action_id} is running: it cannot be planned again")
                return
            if state == "running":
                conn.execute(
                    "UPDATE actions SET state = 'running', started_at = ? WHERE id = ?", (started or stamp, action_id)
                )
                return
            conn.execute(
                "UPDATE actions SET state = ?, error = ?, finished_at = ? WHERE id = ?",
                (state, error, stamp, action_id),
            )

    def add_event(self, action_id: int, kind: str, data: Mapping[str, Any], at: datetime | None = None) -> int:
        """Journal one event of an action (``data`` as JSON; what JSON cannot hold is stored as text)."""
        _text("kind", kind)
        if not isinstance(data, Mapping):
            raise ValueError(f"event data must be a mapping, not {type(data).__name__}")
        text = json.dumps(dict(data), default=str, ensure_ascii=False)
        stamp = _ts(at or _now())
        with self._transaction("record an event") as conn:
            try:
                return conn.execute(
                    "INSERT INTO events (action_id, at, kind, data) VALUES (?, ?, ?, ?) RETURNING id",
                    (action_id, stamp, kind, text),
                ).fetchone()[0]
            except sqlite3.IntegrityError:
                raise KeyError(f"no action #{action_id}") from None

    def action(self, action_id: int) -> ActionRow:
        with self._transaction("read an action", write=False) as conn:
            row = conn.execute(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE id = ?", (action_id,)).fetchone()
            if row is None:
                raise KeyError(f"no action #{action_id}")
            events = conn.execute(
                "SELECT id, action_id, at, kind, data FROM events WHERE action_id = ? ORDER BY id", (action_id,)
            ).fetchall()
        result = _action_row(row)
        result["events"] = [
            EventRow(id=e[0], action_id=e[1], at=datetime.fromisoformat(e[2]), kind=e[3], data=json.loads(e[4]))
            for e in events
        ]
        return result

    def actions(
        self, limit: int = 50, offset: int = 0, node: str | None = None, state: ActionState | None = None
    ) -> list[ActionRow]:
        """Actions, newest first, without their events; ``node`` filters on the target."""
        _nonnegative("limit", limit)
        _nonnegative("offset", offset)
        if state is not None and state not in ACTION_STATES:
            raise ValueError(f"unknown action state {state!r} (one of {', '.join(ACTION_STATES)})")
        where, params = [], []
        if node is not None:
            where.append("target = ?")
            params.append(node)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._transaction("list actions", write=False) as conn:
            rows = conn.execute(
                f"SELECT {_ACTION_COLUMNS} FROM actions{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_action_row(row) for row in rows]

    def interrupt_unfinished(self, at: datetime | None = None) -> list[ActionRow]:
        """Run at start: the actions a killed process left planned or running become ``interrupted``.

        Returned (oldest first, as they were) so the daemon can resume: their keys are free again.
        """
        stamp = _ts(at or _now())
        with self._transaction("interrupt unfinished actions") as conn:
            rows = conn.execute(
                f"SELECT {_ACTION_COLUMNS} FROM actions WHERE state IN ('planned', 'running') ORDER BY id"
            ).fetchall()
            conn.execute(
                "UPDATE actions SET state = 'interrupted', error = ?, finished_at = ?"
                " WHERE state IN ('planned', 'running')",
                (INTERRUPTED, stamp),
            )
        return [_action_row(row) for row in rows]

    # ------------------------------------------------------------------ decision log

    def log_decisions(
        self, at: datetime, decisions: Iterable[tuple[str, str, str] | Any]
    ) -> list[tuple[str, str, str]]:
        """Journal each (subject, verdict, reason) that differs from the subject's last row; returns those.

        Also takes objects with ``subject``, ``verdict`` and ``reason`` (``wakegrid.decide.Decision``).
        A round where nothing changed writes nothing and does not touch the file.
        """
        stamp = _ts(at)
        entries = []
        for entry in decisions:
            subject, verdict, reason = (
                entry if isinstance(entry, tuple) else (entry.subject, entry.verdict, entry.reason)
            )
            entries.append((_text("subject", subject), _text("verdict", verdict), str(reason)))
        with self._lock:
            last = self._decision_cache()
            changed: list[tuple[str, str, str]] = []
            pending: dict[str, tuple[str, str]] = {}
            for subject, verdict, reason in entries:
                if pending.get(subject, last.get(subject)) != (verdict, reason):
                    changed.append((subject, verdict, reason))
                    pending[subject] = (verdict, reason)
            if changed:
                with self._transaction("log decisions") as conn:
                    conn.executemany(
                        "INSERT INTO decisions (at, subject, verdict, reason) VALUES (?, ?, ?, ?)",
                        [(stamp, *row) for row in changed],
                    )
                last.update(pending)  # only once committed
            return changed

    def _decision_cache(self) -> dict[str, tuple[str, str]]:
        if self._last_decision is None:
            with self._transaction("read the decision log", write=False) as conn:
                rows = conn.execute(
                    "SELECT subject, verdict, reason FROM decisions"
                    " WHERE id IN (SELECT MAX(id) FROM decisions GROUP BY subject)"
                ).fetchall()
            self._last_decision = {subject: (verdict, reason) for subject, verdict, reason in rows}
        return self._last_decision

    def decisions(
        self,
        limit: int = 100,
        offset: int = 0,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        verdict: str | None = None,
    ) -> list[DecisionRow]:
        """The decision log, newest first: each row a change of a subject's verdict or reason."""
        clause, params = _filters(limit, offset, "at", since, until, subject=subject, verdict=verdict)
        with self._transaction("read the decision log", write=False) as conn:
            rows = conn.execute(
                f"SELECT id, at, subject, verdict, reason FROM decisions{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [
            DecisionRow(id=r[0], at=datetime.fromisoformat(r[1]), subject=r[2], verdict=r[3], reason=r[4]) for r in rows
        ]

    # ------------------------------------------------------------------ wakes and boots

    def record_wake_request(self, service: str, at: datetime, client: str | None, reason: str) -> int:
        """Somebody wants ``service``: pending (in :meth:`memory`) until :meth:`finish_wake`."""
        _text("service", service)
        stamp = _ts(at)
        with self._transaction("record a wake request") as conn:
            return conn.execute(
                "INSERT INTO wake_requests (service, at, client, reason) VALUES (?, ?, ?, ?) RETURNING id",
                (service, stamp, client, str(reason)),
            ).fetchone()[0]

    def finish_wake(self, service: str, at: datetime, ok: bool) -> int:
        """``service`` is ready (``ok``) or its wake failed: resolve the requests pending at ``at``.

        One wake is journaled, timed from its first request to ``at``; returns how many requests
        it resolved (0: none pending, nothing journaled). A successful wake sets ``Memory.woken_at``.
        """
        _text("service", service)
        stamp = _ts(at)
        with self._transaction("finish a wake") as conn:
            pending = conn.execute(
                "SELECT id, at FROM wake_requests WHERE service = ? AND resolved_at IS NULL AND at <= ? ORDER BY at",
                (service, stamp),
            ).fetchall()
            if not pending:
                return 0
            first = datetime.fromisoformat(pending[0][1])
            wake_id = conn.execute(
                "INSERT INTO wakes (service, requested_at, finished_at, ok, seconds, requests)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (service, pending[0][1], stamp, 1 if ok else 0, (at - first).total_seconds(), len(pending)),
            ).fetchone()[0]
            conn.executemany(
                "UPDATE wake_requests SET wake_id = ?, resolved_at = ? WHERE id = ?",
                [(wake_id, stamp, request_id) for request_id, _ in pending],
            )
            return len(pending)

    def record_boot(self, node: str, started_at: datetime, up_at: datetime) -> int:
        """``node`` was seen up at ``up_at`` after a step started it at ``started_at``."""
        _text("node", node)
        started, up = _ts(started_at), _ts(up_at)
        seconds = (up_at - started_at).total_seconds()
        if seconds < 0:
            raise ValueError(f"{node}: up at {up} before its start at {started}")
        with self._transaction("record a boot") as conn:
            return conn.execute(
                "INSERT INTO boots (node, started_at, up_at, seconds) VALUES (?, ?, ?, ?) RETURNING id",
                (node, started, up, seconds),
            ).fetchone()[0]

    def boot_history(self, node: str | None = None) -> dict[str, NodeBoots]:
        """Per node (or only ``node``): boots journaled (within retention), mean and last boot time."""
        clause, params = ("WHERE node = ?", (node,)) if node is not None else ("", ())
        with self._transaction("read boot history", write=False) as conn:
            stats = conn.execute(
                f"SELECT node, COUNT(*), AVG(seconds), MAX(id) FROM boots {clause} GROUP BY node", params
            ).fetchall()
            if not stats:
                return {}
            last = {
                row[0]: row
                for row in conn.execute(
                    f"SELECT node, seconds, up_at FROM boots WHERE id IN ({','.join('?' * len(stats))})",
                    [s[3] for s in stats],
                )
            }
        return {
            name: NodeBoots(name, count, mean, last[name][1], datetime.fromisoformat(last[name][2]))
            for name, count, mean, _ in stats
        }

    def wake_history(self, service: str | None = None) -> dict[str, ServiceWakes]:
        """Per service (or only ``service``): wakes, failures, requests that triggered them, time to ready."""
        clause, params = ("WHERE service = ?", (service,)) if service is not None else ("", ())
        with self._transaction("read wake history", write=False) as conn:
            stats = conn.execute(
                "SELECT service, COUNT(*), SUM(1 - ok), SUM(requests), AVG(CASE WHEN ok = 1 THEN seconds END),"
                f" MAX(id) FROM wakes {clause} GROUP BY service",
                params,
            ).fetchall()
            if not stats:
                return {}
            marks = ",".join("?" * len(stats))
            last_ids = [s[5] for s in stats]
            last = {
                row[0]: row
                for row in conn.execute(
                    f"SELECT id, ok, seconds, finished_at FROM wakes WHERE id IN ({marks})", last_ids
                )
            }
            requests: dict[int, list[WakeRequest]] = {}
            for wake_id, name, at, client, reason in conn.execute(
                f"SELECT wake_id, service, at, client, reason FROM wake_requests WHERE wake_id IN ({marks})"
                " ORDER BY at, id",
                last_ids,
            ):
                requests.setdefault(wake_id, []).append(WakeRequest(name, datetime.fromisoformat(at), client, reason))
        history = {}
        for name, count, failed, total, mean, last_id in stats:
            _, ok, seconds, finished = last[last_id]
            history[name] = ServiceWakes(
                service=name,
                wakes=count,
                failed=failed,
                requests=total,
                mean_seconds=mean,
                last_seconds=seconds if ok else None,
                last_at=datetime.fromisoformat(finished),
                last_requests=tuple(requests.get(last_id, ())),
            )
        return history

    def wakes(
        self,
        limit: int = 50,
        offset: int = 0,
        service: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[WakeRow]:
        """Wakes, newest first (by when they finished): time from the first request to ready, or failed."""
        clause, params = _filters(limit, offset, "finished_at", since, until, service=service)
        with self._transaction("read wakes", write=False) as conn:
            rows = conn.execute(
                "SELECT id, service, requested_at, finished_at, ok, seconds, requests FROM wakes"
                f"{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [
            WakeRow(
                id=r[0],
                service=r[1],
                requested_at=datetime.fromisoformat(r[2]),
                finished_at=datetime.fromisoformat(r[3]),
                ok=bool(r[4]),
                seconds=r[5],
                requests=r[6],
            )
            for r in rows
        ]

    def boots(
        self,
        limit: int = 50,
        offset: int = 0,
        node: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[BootRow]:
        """Boots, newest first (by when the node was seen up)."""
        clause, params = _filters(limit, offset, "up_at", since, until, node=node)
        with self._transaction("read boots", write=False) as conn:
            rows = conn.execute(
                f"SELECT id, node, started_at, up_at, seconds FROM boots{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [
            BootRow(
                id=r[0],
                node=r[1],
                started_at=datetime.fromisoformat(r[2]),
                up_at=datetime.fromisoformat(r[3]),
                seconds=r[4],
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ pins

    def pin(self, kind: str, name: str, at: datetime | None = None) -> bool:
        """Pin a node or service to the dashboard's front page; True when it was not pinned yet."""
        _pin_kind(kind)
        stamp = _ts(at or _now())
        with self._transaction("pin") as conn:
            return (
                conn.execute(
                    "INSERT INTO pins (kind, name, pinned_at) VALUES (?, ?, ?) ON CONFLICT (kind, name) DO NOTHING",
                    (kind, _text("name", name), stamp),
                ).rowcount
                == 1
            )

    def unpin(self, kind: str, name: str) -> bool:
        _pin_kind(kind)
        with self._transaction("unpin") as conn:
            return conn.execute("DELETE FROM pins WHERE kind = ? AND name = ?", (kind, name)).rowcount == 1

    def pins(self) -> list[PinRow]:
        """What is pinned, oldest first (the front page's order)."""
        with self._transaction("read pins", write=False) as conn:
            rows = conn.execute("SELECT kind, name, pinned_at FROM pins ORDER BY pinned_at, kind, name").fetchall()
        return [PinRow(kind=r[0], name=r[1], pinned_at=datetime.fromisoformat(r[2])) for r in rows]

    # ------------------------------------------------------------------ what decisions remember

    def note_activity(self, service: str, at: datetime) -> None:
        """The latest activity of ``service`` (an older ``at`` changes nothing; no write when unchanged)."""
        _text("service", service)
        stamp = _ts(at)
        with self._lock:
            if self._activity is None:
                with self._transaction("read activity", write=False) as conn:
                    self._activity = dict(conn.execute("SELECT service, at FROM activity").fetchall())
            known = self._activity.get(service)
            if known is not None and known >= stamp:
                return
            with self._transaction("note activity") as conn:
                conn.execute(
                    "INSERT INTO activity (service, at) VALUES (?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET at = excluded.at WHERE excluded.at > activity.at",
                    (service, stamp),
                )
            self._activity[service] = stamp

    def note_booting(self, node: str, since: datetime, step: str) -> None:
        """``node`` was started by ``step`` at ``since`` and is not up yet (replaces a previous note)."""
        _text("node", node)
        stamp = _ts(since)
        with self._transaction("note a booting node") as conn:
            conn.execute(
                "INSERT INTO booting (node, since, step) VALUES (?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET since = excluded.since, step = excluded.step",
                (node, stamp, str(step)),
            )

    def clear_booting(self, node: str) -> None:
        with self._transaction("clear a booting node") as conn:
            conn.execute("DELETE FROM booting WHERE node = ?", (node,))

    def note_start_failure(
        self, node: str, at: datetime, error: str, base: float = 10.0, cap: float = 600.0
    ) -> Backoff:
        """One more failed start of ``node``: not tried again before ``at + min(cap, base·2^(n-1))``."""
        _text("node", node)
        if not (base > 0 and cap >= base):
            raise ValueError(f"backoff needs 0 < base ≤ cap (base {base!r}, cap {cap!r})")
        stamp = _ts(at)
        with self._transaction("note a failed start") as conn:
            row = conn.execute("SELECT failures FROM backoff WHERE node = ?", (node,)).fetchone()
            failures = (row[0] if row else 0) + 1
            # 2**60 · base is past any cap: no float overflow however many failures pile up
            delay = min(cap, base * 2 ** min(failures - 1, 60))
            until = at + timedelta(seconds=delay)
            conn.execute(
                "INSERT INTO backoff (node, failures, retry_at, last_error, last_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET failures = excluded.failures, retry_at = excluded.retry_at,"
                " last_error = excluded.last_error, last_at = excluded.last_at",
                (node, failures, _ts(until), str(error), stamp),
            )
        return Backoff(failures=failures, until=until.astimezone(UTC), last_error=str(error))

    def clear_backoff(self, node: str) -> None:
        with self._transaction("clear a backoff") as conn:
            conn.execute("DELETE FROM backoff WHERE node = ?", (node,))

    def set_pool(self, service: str, excluded_sites: tuple[str, ...]) -> None:
        """The sites left out of ``service``'s pool as pushed to Caddy (empty: every site is in)."""
        _text("service", service)
        if isinstance(excluded_sites, str) or not all(isinstance(site, str) and site for site in excluded_sites):
            raise ValueError(f"excluded sites must be a tuple of site names, not {excluded_sites!r}")
        with self._transaction("set a pool") as conn:
            if excluded_sites:
                conn.execute(
                    "INSERT INTO pools (service, excluded) VALUES (?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET excluded = excluded.excluded",
                    (service, json.dumps(list(excluded_sites))),
                )
            else:
                conn.execute("DELETE FROM pools WHERE service = ?", (service,))

    def memory(self, started_at: datetime, now: datetime) -> Memory:
        """Everything decisions remember, read in one consistent snapshot.

        Wake requests: the latest pending one per service, younger than ``wake_request_ttl``.
        ``running``: node → its unfinished start or stop ("start #12"; the newest if several).
        """
        _ts(started_at)
        oldest = _ts(now - self.wake_request_ttl)
        kinds = ",".join("?" * len(NODE_ACTION_KINDS))
        with self._transaction("read the memory", write=False) as conn:
            requests = conn.execute(
                "SELECT service, at, client, reason FROM wake_requests"
                " WHERE resolved_at IS NULL AND at >= ? ORDER BY at, id",
                (oldest,),
            ).fetchall()
            woken = conn.execute("SELECT service, MAX(finished_at) FROM wakes WHERE ok = 1 GROUP BY service").fetchall()
            activity = conn.execute("SELECT service, at FROM activity").fetchall()
            backoff = conn.execute("SELECT node, failures, retry_at, last_error FROM backoff").fetchall()
            booting = conn.execute("SELECT node, since, step FROM booting").fetchall()
            running = conn.execute(
                "SELECT target, kind, id FROM actions WHERE state IN ('planned', 'running')"
                f" AND kind IN ({kinds}) AND target IS NOT NULL ORDER BY id",
                NODE_ACTION_KINDS,
            ).fetchall()
            pools = conn.execute("SELECT service, excluded FROM pools").fetchall()
        return Memory(
            started_at=started_at,
            wake_requests={s: WakeRequest(s, datetime.fromisoformat(at), c, r) for s, at, c, r in requests},
            woken_at={s: datetime.fromisoformat(at) for s, at in woken},
            last_activity={s: datetime.fromisoformat(at) for s, at in activity},
            backoff={n: Backoff(f, datetime.fromisoformat(until), e) for n, f, until, e in backoff},
            booting={n: Booting(datetime.fromisoformat(since), step) for n, since, step in booting},
            running={node: f"{kind} #{action_id}" for node, kind, action_id in running},
            pools={s: tuple(json.loads(sites)) for s, sites in pools},
        )

    # ------------------------------------------------------------------ housekeeping

    def prune(self, now: datetime, keep_days: float = 30.0, keep_rows: int = 200_000) -> dict[str, int]:
        """Delete what is older than ``keep_days``, and the oldest rows past ``keep_rows`` per table.

        Never an unfinished action or its events. The decision log keeps each subject's last row
        while it is younger than the row cap (it says why things are as they are). Frees the
        space in the file (incremental vacuum, WAL truncated). Returns rows deleted per table.
        """
        if not keep_days > 0:
            raise ValueError(f"keep_days must be > 0, not {keep_days!r}")
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, int) or keep_rows < 1:
            raise ValueError(f"keep_rows must be an integer ≥ 1, not {keep_rows!r}")
        cutoff = _ts(now - timedelta(days=keep_days))
        deleted: dict[str, int] = {}

        def cap(conn: sqlite3.Connection, table: str, where: str = "") -> int:
            """The id at and below which rows of ``table`` are past the row cap (-1: none)."""
            row = conn.execute(
                f"SELECT id FROM {table} {where} ORDER BY id DESC LIMIT 1 OFFSET ?", (keep_rows,)
            ).fetchone()
            return row[0] if row else -1

        finished = "state NOT IN ('planned', 'running')"
        with self._transaction("prune") as conn:
            last_action = cap(conn, "actions", f"WHERE {finished}")
            old_actions = f"SELECT id FROM actions WHERE {finished} AND (finished_at < ? OR id <= ?)"
            deleted["events"] = conn.execute(
                f"DELETE FROM events WHERE action_id IN ({old_actions})", (cutoff, last_action)
            ).rowcount
            deleted["actions"] = conn.execute(
                f"DELETE FROM actions WHERE {finished} AND (finished_at < ? OR id <= ?)", (cutoff, last_action)
            ).rowcount
            deleted["events"] += conn.execute(
                f"DELETE FROM events WHERE id <= ? AND action_id IN (SELECT id FROM actions WHERE {finished})",
                (cap(conn, "events"),),
            ).rowcount
            deleted["decisions"] = conn.execute(
                "DELETE FROM decisions WHERE (at < ? AND id NOT IN (SELECT MAX(id) FROM decisions GROUP BY subject))"
                " OR id <= ?",
                (cutoff, cap(conn, "decisions")),
            ).rowcount
            last_wake = cap(conn, "wakes")
            deleted["wake_requests"] = conn.execute(
                "DELETE FROM wake_requests WHERE wake_id IN (SELECT id FROM wakes WHERE finished_at < ? OR id <= ?)"
                " OR (wake_id IS NULL AND at < ?)",
                (cutoff, last_wake, cutoff),
            ).rowcount
            deleted["wake_requests"] += conn.execute(
                "DELETE FROM wake_requests WHERE id <= ?", (cap(conn, "wake_requests"),)
            ).rowcount
            deleted["wakes"] = conn.execute(
                "DELETE FROM wakes WHERE finished_at < ? OR id <= ?", (cutoff, last_wake)
            ).rowcount
            deleted["boots"] = conn.execute(
                "DELETE FROM boots WHERE up_at < ? OR id <= ?", (cutoff, cap(conn, "boots"))
            ).rowcount
            # Keyed by fleet names: rows of services and nodes long gone from the fleet go too.
            deleted["activity"] = conn.execute("DELETE FROM activity WHERE at < ?", (cutoff,)).rowcount
            deleted["booting"] = conn.execute("DELETE FROM booting WHERE since < ?", (cutoff,)).rowcount
            deleted["backoff"] = conn.execute("DELETE FROM backoff WHERE retry_at < ?", (cutoff,)).rowcount
        with self._lock:
            self._last_decision = None  # a pruned subject's last row may be gone: reload from the file
            self._activity = None
        if any(deleted.values()):
            self._reclaim()
        return deleted

    def _reclaim(self) -> None:
        """Give freed pages back to the file system: the file and its WAL shrink."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise JournalError(self.path, "cannot reclaim space: the journal is closed")
            try:
                # executescript steps the pragma to its end (execute frees one page only); no transaction is open
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise self._error("reclaim space", exc) from None

    def size_bytes(self) -> int:
        """The database file and its write-ahead log, in bytes."""
        total = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):  # no WAL file while nobody has the journal open
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

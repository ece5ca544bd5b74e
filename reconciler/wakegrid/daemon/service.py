"""``wakegrid daemon``: the reconciler as a long-running process.

APScheduler 3's ``AsyncIOScheduler`` drives the periodic jobs on one asyncio loop: the round
(observe, decide, act) every ``interval``, never two at once, and journal housekeeping. The HTTP
app (uvicorn) runs on the same loop. Signals: SIGTERM/SIGINT stop cleanly (runs in flight get
``stop_grace`` to finish, then are cancelled and journaled as interrupted); SIGHUP re-reads the
fleet (an invalid one is refused, the running one kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from wakegrid.daemon.app import create_app
from wakegrid.daemon.config import DaemonConfig
from wakegrid.daemon.logs import get_logger
from wakegrid.daemon.reconciler import Reconciler
from wakegrid.journal import JournalError, SqliteStore

log = get_logger("daemon")

JOURNAL_FILE = "journal.sqlite3"


class _Server(uvicorn.Server):
    """uvicorn on our loop, with our signal handling (it would install its own)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def open_store(state_dir: str | Path) -> SqliteStore:
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(directory, f"cannot create the state directory: {exc.strerror}") from None
    return SqliteStore(directory / JOURNAL_FILE)


def tls_problem(config: DaemonConfig) -> str | None:
    """Why the configured certificate and key cannot serve HTTPS (naming the key and the file); None if they can."""
    tls = config.tls
    if tls is None:
        return None
    for key, path, marker, what in (
        ("tls.cert", tls.cert, b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
        ("tls.key", tls.key, b"PRIVATE KEY-----", "a PEM private key"),
    ):
        try:
            content = Path(path).read_bytes()
        except OSError as exc:
            return f"{key}: cannot read {path}: {exc.strerror or exc}"
        if marker not in content:
            return f"{key}: {path} is not {what}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_passphrase() -> str:
        # Never a prompt on a terminal nobody watches: an encrypted key is refused.
        raise ValueError("is encrypted: the daemon needs it unencrypted")

    try:
        context.load_cert_chain(tls.cert, tls.key, password=no_passphrase)
    except ValueError as exc:
        return f"tls.key: {tls.key} {exc}"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"tls.key: {tls.key} is not the key of {tls.cert}"
        return f"tls: {tls.cert} and {tls.key} are not a PEM certificate and its key ({exc.reason or exc})"
    return None


async def serve(fleet: str | Path, config: DaemonConfig, state_dir: str | Path, *, dry_run: bool = False) -> int:
    problem = tls_problem(config)
    if problem is not None:
        log.error("cannot serve HTTPS", extra={"fields": {"error": problem}})
        return 1
    store = open_store(state_dir)
    reconciler = Reconciler(fleet, config, store, dry_run=dry_run)
    for action in store.interrupt_unfinished():
        log.warning(
            "a run of the previous process was interrupted; the next rounds re-observe and finish what is wanted",
            extra={"fields": {"action": action.get("id"), "kind": action.get("kind"), "target": action.get("target")}},
        )
    host, _, port = config.listen.rpartition(":")
    try:
        # Bound here, not by uvicorn (which exits the process on failure): a taken port is a clear error.
        listener = socket.create_server((host.strip("[]"), int(port)), reuse_port=False)
    except OSError as exc:
        log.error("cannot listen", extra={"fields": {"listen": config.listen, "error": exc.strerror or str(exc)}})
        store.close()
        return 1
    server = _Server(
        uvicorn.Config(
            create_app(reconciler),
            host=host.strip("[]"),
            port=int(port),
            log_config=None,
            access_log=False,
            # The TCP peer is what edge_addresses checks: uvicorn must not replace it with X-Forwarded-For.
            proxy_headers=False,
            ssl_certfile=config.tls.cert if config.tls else None,
            ssl_keyfile=config.tls.key if config.tls else None,
        )
    )
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        reconciler.run_rounds,
        "interval",
        seconds=config.interval,
        id="round",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
        misfire_grace_time=None,
    )
    scheduler.add_job(
        _housekeeping,
        "interval",
        args=[reconciler],
        seconds=config.housekeeping_interval,
        id="housekeeping",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC) + timedelta(seconds=30),
    )

    def run_round_now() -> None:
        job = scheduler.get_job("round")
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    reconciler.on_kick = run_round_now
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reconciler.reload)

    http = asyncio.ensure_future(server.serve(sockets=[listener]))
    scheduler.start()
    log.info(
        "wakegrid daemon started",
        extra={
            "fields": {
                "fleet": str(fleet),
                "listen": config.listen,
                "https": config.tls is not None,
                "state_dir": str(state_dir),
                "interval": config.interval,
                "dry_run": dry_run,
            }
        },
    )
    stop = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait({http, stop}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if http in done and http.exception() is not None:
        log.error("the HTTP server failed", extra={"fields": {"error": str(http.exception())}})
        code = 1
    log.info("stopping", extra={"fields": {"grace": config.stop_grace}})
    scheduler.shutdown(wait=False)
    await reconciler.close(config.stop_grace)
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http, timeout=5)
    stop.cancel()
    store.close()
    log.info("stopped")
    return code


async def _housekeeping(reconciler: Reconciler) -> None:
    journal = reconciler.config.journal
    try:
        pruned = await asyncio.to_thread(
            reconciler.store.prune, datetime.now(UTC), keep_days=journal.keep_days, keep_rows=journal.keep_rows
        )
        reconciler.metrics.journal_bytes.set(reconciler.store.size_bytes())
    except JournalError as exc:
        reconciler.metrics.journal_errors.inc()
        log.error("journal housekeeping failed", extra={"fields": {"error": str(exc)}})
        return
    log.info("journal pruned", extra={"fields": {"pruned": pruned}})

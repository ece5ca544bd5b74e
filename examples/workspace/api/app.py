#!/usr/bin/env python3
"""The workspace API: an activity log in PostgreSQL and a live feed of it over WebSocket.

    GET  /health              200 {"status": "ok", ...} when PostgreSQL answers, else 503 (no token needed)
    GET  /activity?limit=N    the last N entries, newest first (1 to 500, default 50)
    POST /activity            {"actor": "...", "action": "...", "detail": {...}} -> 201 and the stored entry
    GET  /feed                WebSocket: every entry stored from now on, one JSON text message each

Every path but /health needs the token: ``Authorization: Bearer <token>``, or ``?token=`` on /feed
(a browser cannot set headers on a WebSocket). Configured by the environment: WORKSPACE_API_TOKEN
(required), WORKSPACE_API_PORT (8000), WORKSPACE_INSTANCE (a label /health reports) and libpq's own
PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.

Python's standard library (asyncio HTTP/1.1 and RFC 6455 framing, kept small) and Debian's
python3-psycopg2; database calls run in a worker thread so a slow query never stalls the feed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import struct
import sys
import threading
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import psycopg2
import psycopg2.extras

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_BODY = 64 * 1024
MAX_HEADERS = 100
SCHEMA = """
CREATE TABLE IF NOT EXISTS activity (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
)
"""


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- the database


class Database:
    """One connection, used by one thread at a time; reconnects after any failure."""

    def __init__(self):
        self._connection = None
        self._lock = threading.Lock()

    def _connect(self):
        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(connect_timeout=3, application_name="workspace-api")
            self._connection.autocommit = True
            with self._connection.cursor() as cursor:
                cursor.execute(SCHEMA)
        return self._connection

    def run(self, query: str, params: tuple = ()) -> list[dict]:
        with self._lock:
            try:
                with self._connect().cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
                    cursor.execute(query, params)
                    return [dict(row) for row in cursor.fetchall()] if cursor.description else []
            except psycopg2.Error:
                if self._connection is not None:
                    self._connection.close()
                self._connection = None
                raise


def entry(row: dict) -> dict:
    return {**row, "at": row["at"].isoformat()}


# --------------------------------------------------------------------------- the application


class App:
    def __init__(self, token: str, instance: str):
        self.token = token.encode()
        self.instance = instance
        self.database = Database()
        self.feeds: set[asyncio.Queue] = set()

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]], allow_query: bool = False) -> bool:
        given = headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not token and allow_query:
            token = (query.get("token") or [""])[-1]
        return bool(token) and hmac.compare_digest(token.encode(), self.token)

    async def db(self, query: str, params: tuple = ()) -> list[dict]:
        return await asyncio.to_thread(self.database.run, query, params)

    async def health(self) -> tuple[int, dict]:
        try:
            await self.db("SELECT 1 AS ok")
        except psycopg2.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return 503, {"status": "unavailable", "database": first, "instance": self.instance}
        return 200, {"status": "ok", "database": "ok", "instance": self.instance, "feeds": len(self.feeds)}

    async def list_activity(self, query: dict[str, list[str]]) -> tuple[int, list]:
        text = (query.get("limit") or ["50"])[-1]
        if not text.isdigit() or not 1 <= int(text) <= 500:
            raise HttpError(400, f"limit must be a whole number from 1 to 500, got {text!r}")
        rows = await self.db("SELECT id, at, actor, action, detail FROM activity ORDER BY id DESC LIMIT %s", (text,))
        return 200, [entry(row) for row in rows]

    async def add_activity(self, body: bytes) -> tuple[int, dict]:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            raise HttpError(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, 'the body must be a JSON object: {"actor": ..., "action": ...}')
        fields = {name: data.get(name) for name in ("actor", "action")}
        for name, value in fields.items():
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise HttpError(400, f"{name} must be a non-empty string of at most 200 characters")
        detail = data.get("detail", {})
        if not isinstance(detail, dict):
            raise HttpError(400, "detail must be a JSON object")
        (row,) = await self.db(
            "INSERT INTO activity (actor, action, detail) VALUES (%s, %s, %s) RETURNING id, at, actor, action, detail",
            (fields["actor"], fields["action"], json.dumps(detail)),
        )
        stored = entry(row)
        for feed in list(self.feeds):
            feed.put_nowait(stored)
        return 201, stored

    # ---- HTTP/1.1

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self.one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done."""
        line = await reader.readline()
        if not line:
            return False
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            await respond(writer, 400, {"error": "bad request line"}, keep_alive=False)
            return False
        headers: dict[str, str] = {}
        for _header in range(MAX_HEADERS):
            header = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            if not header:
                break
            name, _colon, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            await respond(writer, 431, {"error": "too many headers"}, keep_alive=False)
            return False
        url = urlsplit(target)
        query = parse_qs(url.query)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await respond(writer, 413, {"error": f"the body must be at most {MAX_BODY} bytes"}, keep_alive=False)
            return False
        body = await reader.readexactly(int(length)) if int(length) else b""
        try:
            if url.path == "/health" and method in ("GET", "HEAD"):
                status, payload = await self.health()
            elif url.path == "/feed" and method == "GET":
                if not self.authorized(headers, query, allow_query=True):
                    raise HttpError(401, "a valid token is required")
                await self.feed(reader, writer, headers)
                return False
            elif url.path == "/activity":
                if not self.authorized(headers, query):
                    raise HttpError(401, "a valid token is required")
                if method == "GET":
                    status, payload = await self.list_activity(query)
                elif method == "POST":
                    status, payload = await self.add_activity(body)
                else:
                    raise HttpError(405, "GET or POST")
            else:
                raise HttpError(404, f"no {method} {url.path}")
        except HttpError as exc:
            status, payload = exc.status, {"error": exc.message}
        except psycopg2.Error:
            status, payload = 503, {"error": "the database is unavailable"}
        await respond(writer, status, payload, keep_alive, head=method == "HEAD")
        return keep_alive

    # ---- WebSocket (RFC 6455): text messages out, pings answered, close honoured

    async def feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        key = headers.get("sec-websocket-key", "")
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            await respond(writer, 426, {"error": "a WebSocket upgrade is required"}, keep_alive=False)
            return
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        # Subscribed before the client hears 101: an entry posted right after the handshake is on its feed.
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self.feeds.add(queue)
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        listener = asyncio.create_task(self.read_frames(reader, writer))
        try:
            while not listener.done():
                getter = asyncio.create_task(queue.get())
                done, _pending = await asyncio.wait({getter, listener}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await send_frame(writer, 0x1, json.dumps(getter.result()).encode())
                else:
                    getter.cancel()
        finally:
            self.feeds.discard(queue)
            listener.cancel()

    async def read_frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            if length > MAX_BODY:
                await send_frame(writer, 0x8, struct.pack("!H", 1009))
                return
            mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            if opcode == 0x8:
                await send_frame(writer, 0x8, payload[:2])
                return
            if opcode == 0x9:
                await send_frame(writer, 0xA, payload)


async def send_frame(writer: asyncio.StreamWriter, opcode: int, payload: bytes) -> None:
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    writer.write(head + payload)
    await writer.drain()


async def respond(writer, status: int, payload, keep_alive: bool, head: bool = False) -> None:
    body = json.dumps(payload, default=str).encode() + b"\n"
    reason = HTTPStatus(status).phrase
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if status == 401:
        lines.append('WWW-Authenticate: Bearer realm="workspace"')
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body))
    await writer.drain()


async def main() -> int:
    token = os.environ.get("WORKSPACE_API_TOKEN", "")
    if len(token) < 16:
        print("workspace-api: WORKSPACE_API_TOKEN must be set to at least 16 characters", file=sys.stderr)
        return 2
    port = int(os.environ.get("WORKSPACE_API_PORT", "8000"))
    app = App(token, os.environ.get("WORKSPACE_INSTANCE", "workspace"))
    server = await asyncio.start_server(app.serve, host="0.0.0.0", port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"workspace-api: listening on port {port} ({app.instance})", flush=True)
    await stop.wait()
    server.close()  # open feeds end with the process: waiting for them would outlast the stop grace period
    print("workspace-api: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

#!/usr/bin/env python3
"""A command-line client of the workspace API (standard library only: it runs on any python3).

    client.py --url https://workspace.lab.wakegrid.test --token T health
    client.py --url URL --token T post ACTOR ACTION       # store an activity, print it
    client.py --url URL --token T list [--limit N]
    client.py --url URL --token T feed [--count N]         # print N feed messages (WebSocket), then exit
    client.py --url URL --token T roundtrip ACTOR ACTION   # open the feed, post, wait for it on the feed

``--connect ADDRESS`` dials that address instead of resolving the URL's host (which still names the
service: TLS SNI and Host), as a client of the edge does before DNS points at it; ``--cafile`` trusts
that CA (the lab edge's internal CA). Prints one JSON document per result; exits 1 on an HTTP error,
2 on a connection or protocol error, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from urllib.parse import urlsplit


class ClientError(Exception):
    pass


class Api:
    def __init__(self, url: str, token: str, connect: str | None, cafile: str | None, timeout: float):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"--url must be http(s)://HOST[:PORT], got {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.connect_to = connect or self.host
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=cafile) if self.tls else None

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((self.connect_to, self.port), timeout=self.timeout)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _head(self, method: str, path: str, extra: dict[str, str], length: int | None) -> bytes:
        headers = {"Host": self.host, "Authorization": f"Bearer {self.token}", **extra}
        if length is not None:
            headers.update({"Content-Type": "application/json", "Content-Length": str(length)})
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        return "\r\n".join(lines).encode()

    def request(self, method: str, path: str, payload=None) -> tuple[int, object]:
        body = json.dumps(payload).encode() if payload is not None else b""
        with self._socket() as sock:
            sock.sendall(self._head(method, path, {"Connection": "close"}, len(body) if payload is not None else None))
            sock.sendall(body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _blank, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        text = rest.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def feed(self) -> FeedSocket:
        key = base64.b64encode(os.urandom(16)).decode()
        sock = self._socket()
        upgrade = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        sock.sendall(self._head("GET", "/feed", upgrade, None))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise ClientError("the connection closed during the WebSocket handshake")
            head += chunk
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in f"{status_line} ":
            sock.close()
            raise ClientError(f"the feed refused the WebSocket upgrade: {status_line}")
        return FeedSocket(sock)


class FeedSocket:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ClientError("the feed closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def message(self) -> dict:
        while True:
            head = self._read(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                raise ClientError("the feed closed")

    def close(self) -> None:
        try:
            mask = os.urandom(4)
            code = bytes(b ^ mask[i % 4] for i, b in enumerate(struct.pack("!H", 1000)))
            self.sock.sendall(bytes([0x88, 0x80 | 2]) + mask + code)
        except OSError:
            pass
        self.sock.close()


def roundtrip(api: Api, actor: str, action: str) -> dict:
    """Post while the feed is open: the stored row and the feed message must be the same entry."""
    feed = api.feed()
    received: dict = {}

    def listen():
        try:
            received["message"] = feed.message()
        except (ClientError, OSError, ValueError) as exc:
            received["error"] = str(exc)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    started = time.monotonic()
    status, stored = api.request("POST", "/activity", {"actor": actor, "action": action})
    listener.join(api.timeout)
    feed.close()
    if status != 201:
        raise ClientError(f"POST /activity answered {status}: {stored}")
    if "message" not in received:
        raise ClientError(f"no feed message within {api.timeout}s: {received.get('error', 'timeout')}")
    return {"stored": stored, "feed": received["message"], "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default=os.environ.get("WORKSPACE_API_TOKEN", ""))
    parser.add_argument("--connect", help="dial this address instead of the URL's host")
    parser.add_argument("--cafile", help="trust this CA certificate (PEM)")
    parser.add_argument("--timeout", type=float, default=10)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health")
    for name in ("post", "roundtrip"):
        command = sub.add_parser(name)
        command.add_argument("actor")
        command.add_argument("action")
    sub.add_parser("list").add_argument("--limit", type=int, default=50)
    sub.add_parser("feed").add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        api = Api(args.url, args.token, args.connect, args.cafile, args.timeout)
        if args.command == "health":
            status, result = api.request("GET", "/health")
        elif args.command == "post":
            status, result = api.request("POST", "/activity", {"actor": args.actor, "action": args.action})
        elif args.command == "list":
            status, result = api.request("GET", f"/activity?limit={args.limit}")
        elif args.command == "feed":
            feed = api.feed()
            for _round in range(args.count):
                print(json.dumps(feed.message()), flush=True)
            feed.close()
            return 0
        else:
            status, result = 200, roundtrip(api, args.actor, args.action)
    except (ClientError, OSError, ValueError) as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if status >= 400:
        print(f"client: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

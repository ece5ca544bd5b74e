#!/usr/bin/env python3
"""Steady HTTPS load on one public endpoint, one JSON line per request.

Runs inside the lab's client host (Debian's python3, standard library only): the
failover test and benchmark copy it there with ``docker cp`` and read its output.

Requests are scheduled open-loop at ``--rate`` per second (request *n* starts at
``n / rate`` seconds after the first), each in its own thread over a fresh TLS
connection, so a slow answer never delays the next request: what the edge sees is
a steady stream whatever happens to one backend. The TCP connection goes to
``--connect`` (the edge's address) while the TLS SNI and the Host header are the
URL's host name, as if DNS had resolved the service's domain to the edge.

Each finished request is one JSON line on stdout (or ``--out``)::

    {"seq": 12, "method": "GET", "start": 1700000000.123, "late_ms": 0.1, "latency_ms": 4.2,
     "status": 200, "error": null, "node": "gw-dijon", "site": "dijon", "server": "..."}

``start`` is the wall-clock time (``time.time()``) the request started, ``late_ms`` how far
behind its schedule it started (the machine was too busy), ``error`` an exception name and
message when no HTTP answer came (connect refused, timeout, TLS failure...). ``node`` and
``site`` come from the lab app's JSON body, or its ``X-Lab-Node`` header.

The run stops after ``--duration`` seconds, or when standard input reaches end of file with
``--until-stdin-eof`` (how a test driving ``docker exec -i`` stops it), then waits for the
requests in flight (each bounded by ``--timeout``) and writes a summary to stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse

BODY_PREVIEW = 200


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with the SNI and Host header of the URL's host name."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to a fixed address, with the URL's Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class Recorder:
    """Writes one JSON line per finished request (thread-safe) and keeps the counts."""

    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.by_site: dict[str, int] = {}

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            self.sent += 1
            if record["error"] or record["status"] is None or (record["status"] >= 500 and not record["upstream"]):
                self.failed += 1
            site = record.get("site") or "-"
            self.by_site[site] = self.by_site.get(site, 0) + 1
            self.stream.write(line + "\n")
            self.stream.flush()


def tls_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def one_request(args, url, context, body: bytes | None, seq: int, scheduled: float, recorder: Recorder) -> None:
    started_wall = time.time()
    started = time.monotonic()
    record = {
        "seq": seq,
        "method": args.method,
        "start": round(started_wall, 6),
        "late_ms": round((started - scheduled) * 1000, 3),
        "latency_ms": None,
        "status": None,
        "error": None,
        "node": None,
        "site": None,
        "server": None,
        "upstream": False,
    }
    port = url.port or (443 if url.scheme == "https" else 80)
    if url.scheme == "https":
        conn = PinnedHTTPSConnection(url.hostname, port, args.connect, context, args.timeout)
    else:
        conn = PinnedHTTPConnection(url.hostname, port, args.connect, args.timeout)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = {"Connection": "close", "User-Agent": "wakegrid-loadgen/1", "X-Loadgen-Seq": str(seq)}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    try:
        conn.request(args.method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        record["status"] = response.status
        record["server"] = response.getheader("Server")
        record["node"] = response.getheader("X-Lab-Node")
        # The lab app names itself in its Server header, also on the errors it generates (501 for a
        # method it does not implement): that tells a backend's answer from one Caddy made up.
        record["upstream"] = bool(record["node"]) or "wakegrid-lab-app" in (record["server"] or "")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            record["node"] = reply.get("node") or record["node"]
            record["site"] = reply.get("site")
        elif response.status >= 400 and data:
            record["body"] = data[:BODY_PREVIEW].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        record["latency_ms"] = round((time.monotonic() - started) * 1000, 3)
    recorder.write(record)


def watch_stdin(stop: threading.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    stop.set()


def run(args) -> int:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SystemExit(f"--url must be an http(s) URL with a host name, got {args.url!r}")
    context = tls_context(args.cafile, args.insecure) if url.scheme == "https" else None
    body = os.urandom(args.body_size) if args.method in ("POST", "PUT") else None
    out = open(args.out, "a", buffering=1) if args.out else sys.stdout  # noqa: SIM115 - closed below
    recorder = Recorder(out)
    stop = threading.Event()
    if args.until_stdin_eof:
        threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    slots = threading.BoundedSemaphore(args.max_in_flight)
    threads: list[threading.Thread] = []
    interval = 1.0 / args.rate
    began = time.monotonic()
    seq = 0
    try:
        while not stop.is_set():
            scheduled = began + seq * interval
            if args.duration and scheduled - began >= args.duration:
                break
            delay = scheduled - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            slots.acquire()

            def task(n=seq, at=scheduled):
                try:
                    one_request(args, url, context, body, n, at, recorder)
                finally:
                    slots.release()

            thread = threading.Thread(target=task, daemon=True)
            thread.start()
            threads.append(thread)
            threads = [t for t in threads if t.is_alive()] if seq % 100 == 0 else threads
            seq += 1
    except KeyboardInterrupt:
        pass
    for thread in threads:
        thread.join(args.timeout + 5)
    elapsed = time.monotonic() - began
    summary = {
        "summary": True,
        "scheduled": seq,
        "sent": recorder.sent,
        "failed": recorder.failed,
        "by_site": recorder.by_site,
        "seconds": round(elapsed, 3),
    }
    print(json.dumps(summary), file=sys.stderr, flush=True)
    if out is not sys.stdout:
        out.close()
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="https://www.lab.wakegrid.test/", help="what to ask (its host: SNI, Host)")
    parser.add_argument("--connect", required=True, help="address to connect to (the edge), whatever DNS says")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until stopped)")
    parser.add_argument("--until-stdin-eof", action="store_true", help="stop when standard input is closed")
    parser.add_argument("--method", choices=("GET", "POST", "PUT", "HEAD"), default="GET")
    parser.add_argument("--body-size", type=int, default=512, help="bytes of random body for POST/PUT")
    parser.add_argument("--timeout", type=float, default=15.0, help="per request: connect, and each read")
    parser.add_argument("--max-in-flight", type=int, default=500, help="requests in flight at most")
    trust = parser.add_mutually_exclusive_group(required=False)
    trust.add_argument("--cafile", help="CA certificate(s) to trust (the edge's internal CA root)")
    trust.add_argument("--insecure", action="store_true", help="do not verify the certificate (explicitly)")
    parser.add_argument("--out", help="append the JSON lines to this file instead of stdout")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if not args.duration and not args.until_stdin_eof:
        parser.error("give --duration or --until-stdin-eof, or the load never stops")
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))

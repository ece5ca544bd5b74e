#!/usr/bin/env python3
"""A tiny lab backend: ``/health`` → 200, ``/`` → which service, node and site answered (GET or POST).

``GET /stream?seconds=N`` is a long-lived response: one JSON line at once, then one a second
for N seconds (1 to 3600, default 60), no Content-Length, the end of the body being the end of
the connection. Through the edge it is a request in flight for all that time, as a video
stream or a WebSocket is (the reconciler must not put a service to sleep under it).

Standard library only (it runs on Debian's python3 inside lab hosts and inner
containers). Configured by the environment (one service: APP_SERVICE, APP_NODE,
APP_SITE, APP_PORT, APP_HEALTH; what the systemd unit uses) or by arguments
(``--node N --site S --serve SERVICE:PORT:HEALTH_PATH`` repeated; what inner
Docker containers use).
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

STREAM_DEFAULT_SECONDS = 60
STREAM_MAX_SECONDS = 3600


def stream_seconds(query: str) -> int:
    """N of ``seconds=N`` (default STREAM_DEFAULT_SECONDS); ValueError with the reason when it is not 1..max."""
    values = parse_qs(query, keep_blank_values=True).get("seconds")
    if not values:
        return STREAM_DEFAULT_SECONDS
    text = values[-1]
    if not text.isdigit() or not 1 <= int(text) <= STREAM_MAX_SECONDS:
        raise ValueError(f"seconds must be a whole number from 1 to {STREAM_MAX_SECONDS}, got {text!r}")
    return int(text)


class _Server(ThreadingHTTPServer):
    # A woken service gets every held request at once (the reconciler delivers them together):
    # socketserver's listen backlog of 5 would drop most of a burst of 50 connections.
    request_queue_size = 128


def make_handler(service: str, node: str, site: str, health: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "wakegrid-lab-app/1"

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if path == health:
                self._send(200, {"status": "ok", "service": service, "node": node, "site": site})
            elif path == "/stream":
                self._stream(query)
            elif path == "/":
                self._send(200, {"service": service, "node": node, "site": site, "host": socket.gethostname()})
            else:
                self._send(404, {"error": "not found", "node": node})

        do_HEAD = do_GET

        def do_POST(self):
            # Read the whole body: closing with unread data sends a reset, which a proxy counts
            # as a failed backend.
            received = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self._send(200, {"service": service, "node": node, "site": site, "received": received})

        def _stream(self, query):
            try:
                seconds = stream_seconds(query)
            except ValueError as exc:
                self._send(400, {"error": str(exc), "node": node})
                return
            # No Content-Length: the body ends with the connection, and a proxy passes each line on
            # as it comes (Caddy flushes responses of unknown length at once).
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Lab-Node", node)
            self.end_headers()
            if self.command == "HEAD":
                return
            started = time.monotonic()
            try:
                for chunk in range(seconds + 1):
                    # On a fixed beat from the start, whatever the time spent writing.
                    time.sleep(max(0.0, started + chunk - time.monotonic()))
                    line = {"chunk": chunk, "of": seconds, "service": service, "node": node, "site": site}
                    self.wfile.write((json.dumps(line) + "\n").encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client (or the proxy) went away: the stream ends here

        def _send(self, status, body):
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Lab-Node", node)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, fmt, *args):  # access lines go to the journal / docker logs
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=os.environ.get("APP_NODE", socket.gethostname()))
    parser.add_argument("--site", default=os.environ.get("APP_SITE", ""))
    parser.add_argument("--serve", action="append", default=[], help="SERVICE:PORT:HEALTH_PATH (repeatable)")
    args = parser.parse_args(argv)
    env = os.environ
    serve = args.serve or [f"{env['APP_SERVICE']}:{env['APP_PORT']}:{env.get('APP_HEALTH', '/health')}"]
    servers = []
    for spec in serve:
        service, port, health = spec.split(":", 2)
        handler = make_handler(service, args.node, args.site, health or "/health")
        server = _Server(("0.0.0.0", int(port)), handler)
        servers.append(server)
        print(f"serving {service} on :{port} (health {health}) as {args.node}@{args.site}", flush=True)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()

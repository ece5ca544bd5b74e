#!/usr/bin/env python3
"""A tiny lab backend: ``/health`` → 200, ``/`` → which service, node and site answered (GET or POST).

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(service: str, node: str, site: str, health: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "wakegrid-lab-app/1"

        def do_GET(self):
            if self.path.split("?")[0] == health:
                self._send(200, {"status": "ok", "service": service, "node": node, "site": site})
            elif self.path.split("?")[0] == "/":
                self._send(200, {"service": service, "node": node, "site": site, "host": socket.gethostname()})
            else:
                self._send(404, {"error": "not found", "node": node})

        do_HEAD = do_GET

        def do_POST(self):
            # Read the whole body: closing with unread data sends a reset, which a proxy counts
            # as a failed backend.
            received = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self._send(200, {"service": service, "node": node, "site": site, "received": received})

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
        server = ThreadingHTTPServer(("0.0.0.0", int(port)), handler)
        servers.append(server)
        print(f"serving {service} on :{port} (health {health}) as {args.node}@{args.site}", flush=True)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()

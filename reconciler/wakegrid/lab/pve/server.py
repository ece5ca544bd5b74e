"""The HTTPS server (pveproxy's part: TLS, envelope, proxying to other nodes) and the emulator's command line."""

from __future__ import annotations

import argparse
import errno
import http.client
import http.server
import json
import logging
import re
import signal
import ssl
import sys
import threading
import urllib.parse
from pathlib import Path

from .errors import ApiError
from .handlers import Emulator, _Proxy
from .node import STATUS_INTERVAL
from .store import NODE_RE
from .tls import _client_ssl_context, ensure_certificate

log = logging.getLogger("wakegrid.lab.pve")

HEARTBEAT_INTERVAL = 1.0  # seconds between two heartbeats of a node (membership; the guests' status: --status-interval)


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as proxmoxer's session expects
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: ApiServer

    def setup(self) -> None:
        # TLS handshake here, in the request's own thread, so a slow client cannot block accept()
        self.request.settimeout(30)
        self.request.do_handshake()
        super().setup()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    _raw_body = b""

    def _read_params(self, query: str) -> dict[str, object]:
        params: dict[str, object] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self._raw_body = self.rfile.read(length) if length else b""
        if not body:
            return params
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, "invalid JSON body") from None
            if isinstance(data, dict):
                params.update({k: v for k, v in data.items() if v is not None})
        else:
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return params

    def _serve(self, method: str) -> None:
        emu = self.server.emulator
        url = urllib.parse.urlsplit(self.path)
        try:
            params = self._read_params(url.query)
        except ApiError as exc:
            self._reply(exc.status, exc.message, {"data": None})
            return
        if not url.path.startswith("/api2/json/"):
            self._reply(501, f"Method '{method} {url.path}' not implemented", {"data": None})
            return
        path = url.path[len("/api2/json") :].rstrip("/") or "/"
        try:
            status, reason, body = emu.dispatch(method, path, params, self.headers)
        except _Proxy as proxy:
            self._proxy(method, proxy.node)
            return
        self._reply(status, reason, body)

    def _proxy(self, method: str, node: str) -> None:
        """pveproxy forwards a request for another node to that node's API, as it came."""
        emu = self.server.emulator
        try:
            host, port = emu.node_address(node)
        except ApiError as exc:
            self._reply(exc.status, exc.message, {"data": None})
            return
        if not emu.state.node_online(node):  # a powered-off host does not answer
            self._reply(595, "No route to host", {"data": None})
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("authorization", "cookie", "csrfpreventiontoken", "accept", "content-type")
        }
        conn = http.client.HTTPSConnection(host, port, timeout=60, context=_client_ssl_context())
        try:
            conn.request(method, self.path, body=self._raw_body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except OSError as exc:
            self._reply(595, exc.strerror or str(exc) or "Connection refused", {"data": None})
            return
        finally:
            conn.close()
        self._reply(resp.status, resp.reason, payload)

    def _reply(self, status: int, reason: str, body: dict | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        # the reason phrase carries PVE's error message: one line, latin-1 only
        reason = re.sub(r"\s+", " ", reason).strip().encode("latin-1", "replace").decode("latin-1")
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(payload)


class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator, ssl_context: ssl.SSLContext):
        self.emulator = emulator
        self.ssl_context = ssl_context
        super().__init__(address, ApiHandler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            log.debug("connection from %s failed: %s", client_address, exc)
        else:
            super().handle_error(request, client_address)


def serve(args: argparse.Namespace) -> int:
    emulator = Emulator(
        args.node,
        args.cluster_dir,
        args.docker_socket,
        args.migrate_delay,
        args.stop_timeout,
        status_interval=args.status_interval,
        copy_rate=args.copy_rate,
    )
    if args.node not in emulator.state.nodes():
        log.error("node %s is not in %s/cluster.json", args.node, args.cluster_dir)
        return 2
    cert, key = ensure_certificate(Path(args.cert_dir or emulator.state.node_dir(args.node)), args.node)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ApiServer((args.listen, args.port), emulator, ctx)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())

    def beat() -> None:
        while not stopping.is_set():
            try:
                emulator.heartbeat()
            except Exception:  # a failed heartbeat must not kill the node; the next one retries
                log.exception("heartbeat failed")
            stopping.wait(HEARTBEAT_INTERVAL)

    emulator.heartbeat()
    beat_thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    beat_thread.start()
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    log.info("PVE emulator for node %s listening on https://%s:%d", args.node, args.listen, args.port)
    if not args.no_onboot:
        emulator.startall()  # pve-guests.service: start the guests marked onboot

    stopping.wait()
    log.info("node %s powering off: stopping its guests", args.node)
    emulator.stopall()  # pve-guests.service on shutdown, before pveproxy goes away
    server.shutdown()
    server.server_close()
    beat_thread.join(10)  # so that no late "online" heartbeat overwrites the last one
    emulator.heartbeat(online=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Proxmox VE API emulator for the wakegrid lab")
    parser.add_argument("--node", required=True, help="this node's name (a key of cluster.json's nodes)")
    parser.add_argument("--cluster-dir", required=True, help="the shared cluster directory (like /etc/pve)")
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.add_argument("--cert-dir", help="where pve-ssl.pem/pve-ssl.key live (default: <cluster-dir>/nodes/<node>)")
    parser.add_argument(
        "--migrate-delay",
        type=float,
        default=2.0,
        help="seconds a migration takes to copy a default-size (8 GiB) volume; bigger ones take longer",
    )
    parser.add_argument(
        "--copy-rate", type=float, help="bytes per second of the simulated migration copy (overrides --migrate-delay)"
    )
    parser.add_argument("--stop-timeout", type=int, default=30, help="clean shutdown time per guest on poweroff")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=STATUS_INTERVAL,
        help="seconds between two broadcasts of the guests' status read by /cluster/resources (pvestatd: 10)",
    )
    parser.add_argument("--no-onboot", action="store_true", help="do not start onboot guests at startup")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not NODE_RE.match(args.node):
        parser.error(f"invalid node name {args.node!r}")
    try:
        return serve(args)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error("port %d is already in use", args.port)
            return 1
        raise

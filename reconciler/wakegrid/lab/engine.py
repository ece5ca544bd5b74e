"""A minimal Docker Engine API client over the unix socket, standard library only.

Lab helpers (the Proxmox emulator, the Wake-on-LAN listener) run inside lab hosts that
have Debian's python3 and nothing else, so they cannot use the ``docker`` SDK. This
module speaks just enough of the Engine API to look at, start and stop containers.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

__all__ = ["Engine", "EngineError"]

API_VERSION = "v1.41"  # Docker 20.10, the oldest engine the lab runs; newer engines accept it


class EngineError(Exception):
    """The Docker Engine refused a request (``status`` is the HTTP status, the text is Docker's message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """Docker Engine client; one short-lived connection per call, so it is safe to share between threads."""

    def __init__(self, socket_path: str = "/var/run/docker.sock", timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(self, method: str, path: str, query: dict | None = None, timeout: float | None = None):
        url = f"/{API_VERSION}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        conn = _UnixHTTPConnection(self.socket_path, self.timeout if timeout is None else timeout)
        try:
            try:
                conn.request(method, url, headers={"Content-Length": "0"} if method == "POST" else {})
                resp = conn.getresponse()
                body = resp.read()
            except OSError as exc:
                raise EngineError(0, f"cannot reach the Docker Engine at {self.socket_path}: {exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                message = json.loads(body)["message"]
            except (ValueError, KeyError, TypeError):
                message = body.decode("utf-8", "replace").strip() or resp.reason
            raise EngineError(resp.status, message)
        return resp.status, (json.loads(body) if body.strip() else None)

    @staticmethod
    def _quote(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def inspect(self, name: str) -> dict | None:
        """``docker inspect`` of a container, or None when it does not exist."""
        try:
            return self._request("GET", f"/containers/{self._quote(name)}/json")[1]
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def is_running(self, name: str) -> bool:
        info = self.inspect(name)
        return bool(info and info["State"]["Running"])

    def start(self, name: str) -> None:
        """Start a container; starting a running one is a no-op (Docker answers 304)."""
        self._request("POST", f"/containers/{self._quote(name)}/start")

    def stop(self, name: str, timeout: int = 10) -> None:
        """Send the container's stop signal, SIGKILL after ``timeout`` seconds; no-op when stopped."""
        path = f"/containers/{self._quote(name)}/stop"
        self._request("POST", path, {"t": int(timeout)}, timeout=self.timeout + timeout)

    def kill(self, name: str, signal: str = "SIGKILL") -> None:
        """Send a signal to the container's main process (Docker answers 409 when it is not running)."""
        self._request("POST", f"/containers/{self._quote(name)}/kill", {"signal": signal})

    def containers(self, labels: dict[str, str] | None = None, include_stopped: bool = True) -> list[dict]:
        """List containers (stopped ones too by default) carrying all of ``labels``."""
        query: dict[str, str] = {"all": "1" if include_stopped else "0"}
        if labels:
            query["filters"] = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        return self._request("GET", "/containers/json", query)[1]

    def memory_usage(self, name: str) -> int:
        """Memory used by a running container in bytes (page cache excluded, like ``docker stats``); 0 if unknown."""
        try:
            stats = self._request("GET", f"/containers/{self._quote(name)}/stats", {"stream": "0", "one-shot": "1"})[1]
        except EngineError:
            return 0
        mem = (stats or {}).get("memory_stats") or {}
        usage = int(mem.get("usage") or 0)
        detail = mem.get("stats") or {}
        cache = detail.get("inactive_file", detail.get("total_inactive_file", detail.get("cache", 0)))
        return max(usage - int(cache or 0), 0)

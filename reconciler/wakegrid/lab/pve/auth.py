"""Authentication as pveproxy does it: API tokens, tickets (``/access/ticket``, ``PVEAuthCookie``) and CSRF tokens.

Tickets and CSRF tokens are signed with the cluster's key, so every node of a cluster accepts them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.cookies
import re
import time
import urllib.parse

from .errors import ApiError
from .schema import P, check_params
from .store import ClusterState

TICKET_LIFETIME = 7200  # PVE tickets are valid two hours


class Auth:
    """The authentication of a node's API; ``state`` is the cluster directory that holds keys and credentials."""

    state: ClusterState

    def make_ticket(self, user: str) -> str:
        stamp = f"{int(time.time()):08X}"
        plain = f"PVE:{user}:{stamp}"
        sig = base64.b64encode(hmac.new(self.state.authkey(), plain.encode(), hashlib.sha256).digest()).decode()
        return f"{plain}::{sig}"

    def verify_ticket(self, ticket: str) -> str | None:
        match = re.fullmatch(r"PVE:([^:\s]+):([0-9A-F]{8})::(\S+)", ticket or "")
        if not match:
            return None
        plain = f"PVE:{match.group(1)}:{match.group(2)}"
        expected = base64.b64encode(hmac.new(self.state.authkey(), plain.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, match.group(3)):
            return None
        if not -300 < time.time() - int(match.group(2), 16) < TICKET_LIFETIME:
            return None
        return match.group(1)

    def make_csrf(self, user: str) -> str:
        stamp = f"{int(time.time()):08X}"
        digest = hmac.new(self.state.authkey(), f"csrf:{stamp}:{user}".encode(), hashlib.sha256).digest()
        return f"{stamp}:{base64.b64encode(digest).decode().rstrip('=')}"

    def verify_csrf(self, token: str, user: str) -> bool:
        stamp, _, sig = (token or "").partition(":")
        if not re.fullmatch(r"[0-9A-F]{8}", stamp):
            return False
        digest = hmac.new(self.state.authkey(), f"csrf:{stamp}:{user}".encode(), hashlib.sha256).digest()
        fresh = -300 < time.time() - int(stamp, 16) < TICKET_LIFETIME
        return fresh and hmac.compare_digest(base64.b64encode(digest).decode().rstrip("="), sig)

    def api_ticket(self, params: dict[str, object]) -> dict:
        checked = check_params(
            params,
            {
                "username": P(optional=False),
                "password": P(optional=False),
                "realm": P(),
                "otp": P(),
                "path": P(),
                "privs": P(),
                "new-format": P("boolean"),
                "tfa-challenge": P(),
            },
        )
        username = str(checked["username"])
        if "@" not in username:
            username = f"{username}@{checked.get('realm', 'pam')}"
        password = str(checked["password"])
        known = self.state.users().get(username)
        ok = (known is not None and hmac.compare_digest(known, password)) or self.verify_ticket(password) == username
        if not ok:
            raise ApiError(401, "authentication failure")
        return {
            "username": username,
            "ticket": self.make_ticket(username),
            "CSRFPreventionToken": self.make_csrf(username),
            "clustername": self.state.cluster().get("name", "lab"),
            "cap": {"vms": {"VM.PowerMgmt": 1, "VM.Audit": 1, "VM.Migrate": 1}, "nodes": {"Sys.Audit": 1}},
        }

    def authenticate(self, method: str, headers) -> str:
        """The user (``user@realm`` or ``user@realm!tokenid``) of a request, or a 401 ApiError."""
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("PVEAPIToken="):
            full, sep, secret = authorization[len("PVEAPIToken=") :].strip().partition("=")
            if not sep or "!" not in full:
                raise ApiError(401, "invalid token value!")
            known = self.state.tokens().get(full)
            if known is None:
                username, tokenid = full.split("!", 1)
                raise ApiError(401, f"no such token '{tokenid}' for user '{username}'")
            if not hmac.compare_digest(known, secret):
                raise ApiError(401, "invalid token value!")
            return full
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(headers.get("Cookie") or "")
        ticket = cookies["PVEAuthCookie"].value if "PVEAuthCookie" in cookies else None
        if ticket is None:
            raise ApiError(401, "No ticket")
        username = self.verify_ticket(urllib.parse.unquote(ticket))
        if username is None:
            raise ApiError(401, "permission denied - invalid PVE ticket")
        if method != "GET" and not self.verify_csrf(headers.get("CSRFPreventionToken") or "", username):
            raise ApiError(401, "Permission denied - invalid csrf token")
        return username

"""Who reaches the daemon's admin surface, and how often end users may ask for wakes (docs/security.md).

- **Where from.** :class:`AdminNetworkGuard` (ASGI, before routing) answers 403 to any request for
  ``/api``, ``/admin``, ``/docs``, ``/redoc``, ``/openapi.json`` or ``/metrics`` whose client is
  outside ``admin.networks``, whatever it presents. ``/healthz`` and the wake path are not its.
- **Who.** :func:`read_access` and :func:`admin_access` (FastAPI dependencies): the admin token as
  ``Authorization: Bearer``, or a dashboard session (cookie; changes also need its CSRF token), or —
  for reads only, when ``admin.anonymous_read`` is on — nothing. The token is compared in constant
  time and never logged or returned.
- **The client's address.** The TCP peer; only when the peer is one of ``edge_addresses`` (the
  edge's Caddy, which appends the address it saw) the rightmost ``X-Forwarded-For`` entry. A
  malformed entry from the edge means the client is unknown: refused.
- **Wake rate.** :class:`RateLimiter`: a token bucket per client, with bounded memory.

Refusals are RFC 9457 problems (:func:`wakegrid.web.wake.problem`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wakegrid.daemon.logs import get_logger
from wakegrid.secret import SecretError
from wakegrid.web.chain import IPAddress, address_in, networks, parse_address
from wakegrid.web.wake import SERVICE_HEADER, problem

if TYPE_CHECKING:
    from wakegrid.daemon.config import DaemonConfig

log = get_logger("security")

SESSION_COOKIE = "wakegrid_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
# Everything under these answers only inside admin.networks (a path is guarded when it is one of
# them or lies below one).
GUARDED_PREFIXES = ("/api", "/admin", "/docs", "/redoc", "/openapi.json", "/metrics")
MAX_SESSIONS = 256  # logged-in dashboards at once; the oldest goes first
MAX_RATE_CLIENTS = 10_000  # clients a RateLimiter remembers; the least recently seen goes first
MAX_CSRF_FORM = 64 * 1024  # a form carrying a CSRF field is small
SHORT_TOKEN = 16  # characters: shorter admin tokens are guessable, and said so at start


# --------------------------------------------------------------------------- refusals


class Refused(Exception):
    """An admin request refused (401/403), raised by the dependencies; answered as a problem.

    :class:`AdminNetworkGuard` turns it into the response (and :func:`refused_handler` does, when an
    app registers it as an exception handler). ``status_code`` as an HTTPException has it.
    """

    def __init__(self, status_code: int, title: str, detail: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}

    def response(self) -> Response:
        return problem(self.status_code, self.title, self.detail, kind=self.kind, headers=self.headers)


async def refused_handler(_request: Request, exc: Exception) -> Response:
    """For ``app.add_exception_handler(Refused, refused_handler)``."""
    assert isinstance(exc, Refused)
    return exc.response()


def _outside(client: IPAddress | None) -> Refused:
    who = str(client) if client is not None else "a client whose address is unknown"
    return Refused(403, "Forbidden", f"{who} is outside the admin networks", kind="outside-admin-networks")


def _unauthorized(detail: str) -> Refused:
    return Refused(
        401, "Unauthorized", detail, kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="wakegrid"'}
    )


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Session:
    """A logged-in dashboard: its cookie value ``id``, the CSRF token its forms carry, when it ends (epoch s)."""

    id: str
    csrf: str
    expires: float


class SessionStore:
    """Dashboard sessions, in memory (a restart logs everyone out), at most ``limit`` at once."""

    def __init__(self, ttl: float, limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        now = self._clock()
        self._purge(now)
        while len(self._sessions) >= self.limit:
            oldest = min(self._sessions.values(), key=lambda s: s.expires)
            del self._sessions[oldest.id]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.ttl)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is not None and session.expires <= self._clock():
            self._sessions.pop(session.id, None)
            return None
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _purge(self, now: float) -> None:
        for session in [s for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[session.id]


def set_session_cookie(response: Response, session: Session, ttl: float | None = None) -> None:
    """The session's cookie: only over HTTPS, never to scripts, never on another site's requests."""
    max_age = ttl if ttl is not None else session.expires - time.time()
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=max(0, int(max_age)),
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket per client: ``requests`` at once, then one more every ``per / requests`` seconds.

    Memory is bounded: past ``max_clients`` the least recently seen client is forgotten (its bucket
    was most likely full again anyway: forgetting it changes nothing for it).
    """

    def __init__(
        self,
        requests: int,
        per: float,
        max_clients: int = MAX_RATE_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests < 1 or per <= 0 or max_clients < 1:
            raise ValueError("a rate limit needs requests >= 1, per > 0 and max_clients >= 1")
        self.requests = requests
        self.per = per
        self.max_clients = max_clients
        self._refill = requests / per  # tokens per second
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str) -> float | None:
        """None when ``client`` may go on (and it is counted); else the seconds until it may."""
        now = self._clock()
        tokens, at = self._buckets.pop(client, (float(self.requests), now))
        tokens = min(float(self.requests), tokens + max(0.0, now - at) * self._refill)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)  # the most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self._refill


# --------------------------------------------------------------------------- the guard


@dataclass(frozen=True)
class Access:
    """Who was let in: ``via`` is "token", "session" or "anonymous"."""

    client: IPAddress
    via: str
    session: Session | None = None


class Guard:
    """The admin surface's gatekeeper, built once per app from the daemon's config."""

    def __init__(self, config: DaemonConfig) -> None:
        admin = config.admin
        self.networks = networks(admin.networks)
        self.edges = networks(config.edge_addresses)
        self.anonymous_read = admin.anonymous_read
        self.sessions = SessionStore(admin.session_ttl)
        self.rate = RateLimiter(admin.wake_rate.requests, admin.wake_rate.per)
        self._token_digest = self._load_token(config)

    @staticmethod
    def _load_token(config: DaemonConfig) -> bytes | None:
        # Read once, kept only as its digest: no repr, log or debugger view of the guard shows the token.
        secret = config.admin.token
        if secret is None:
            log.warning("no admin token configured: the API and the dashboard refuse every admin request")
            return None
        try:
            token = secret.reveal()
        except SecretError as exc:  # names the key and the source, never a value
            log.error(
                "the admin token cannot be read: the API and the dashboard refuse every admin request",
                extra={"fields": {"error": str(exc)}},
            )
            return None
        if len(token) < SHORT_TOKEN:
            log.warning(
                f"the admin token is shorter than {SHORT_TOKEN} characters: it can be guessed; "
                "generate one with `openssl rand -base64 32`",
                extra={"fields": {"source": secret.source}},
            )
        return _digest(token)

    @property
    def has_token(self) -> bool:
        return self._token_digest is not None

    def check_token(self, presented: str) -> bool:
        """Whether ``presented`` is the admin token, in constant time (digests: not even its length leaks)."""
        if self._token_digest is None or not presented:
            return False
        return hmac.compare_digest(_digest(presented), self._token_digest)

    def client(self, request: HTTPConnection) -> IPAddress | None:
        """The client's address; None when it cannot be known (refuse it)."""
        return self.client_of(request.scope)

    def client_of(self, scope: Scope) -> IPAddress | None:
        peer = parse_address((scope.get("client") or ("",))[0])
        if peer is None or not address_in(peer, self.edges):
            return peer  # X-Forwarded-For from anyone but the edge is a claim, not a fact
        forwarded = [value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"]
        if not forwarded:
            return peer  # the edge host itself (an admin's curl there), not a request it proxied
        # The edge appends the address it saw: the rightmost entry. Anything left of it the client wrote.
        last = ",".join(forwarded).rsplit(",", 1)[-1].strip()
        return parse_address(last)

    def inside(self, client: IPAddress | None) -> bool:
        return client is not None and address_in(client, self.networks)

    def session_of(self, request: HTTPConnection) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def _guard_of(request: HTTPConnection) -> Guard:
    guard = getattr(request.app.state, "guard", None)
    if not isinstance(guard, Guard):
        # Fail closed: an app wired without its guard refuses every admin request.
        log.error("the app has no security guard (app.state.guard): admin request refused")
        raise Refused(403, "Forbidden", "admin access is not configured", kind="no-guard")
    return guard


def _bearer(request: HTTPConnection) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without one ("" for another scheme)."""
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    # Header values arrive as latin-1: the token's own bytes, read as the UTF-8 they are.
    return token.strip().encode("latin-1").decode("utf-8", "replace")


def _log_refusal(request: HTTPConnection, client: IPAddress | None, refusal: Refused) -> None:
    log.warning(
        "admin request refused",
        extra={
            "fields": {
                "client": str(client),
                "path": request.url.path,
                "method": request.scope.get("method", "WEBSOCKET"),
                "status": refusal.status_code,
                "reason": refusal.kind,
            }
        },
    )


def _admitted(request: HTTPConnection) -> tuple[Guard, IPAddress, str | None]:
    guard = _guard_of(request)
    client = guard.client(request)
    if not guard.inside(client):
        refusal = _outside(client)
        _log_refusal(request, client, refusal)
        raise refusal
    assert client is not None
    token = _bearer(request)
    if token is not None and not guard.check_token(token):
        refusal = _unauthorized("wrong admin token" if guard.has_token else "no admin token is configured")
        _log_refusal(request, client, refusal)
        raise refusal
    return guard, client, token


async def read_access(request: Request) -> Access:
    """Reading: the token, a session, or (``anonymous_read``) nothing — from inside the admin networks."""
    guard, client, token = _admitted(request)
    if token is not None:
        return Access(client, "token")
    session = guard.session_of(request)
    if session is not None:
        return Access(client, "session", session)
    if guard.anonymous_read:
        return Access(client, "anonymous")
    refusal = _unauthorized("this needs the admin token (Authorization: Bearer) or a dashboard session")
    _log_refusal(request, client, refusal)
    raise refusal


async def admin_access(request: Request) -> Access:
    """Changing: the token, or a session with its CSRF token (header or form field) — from inside the networks."""
    guard, client, token = _admitted(request)
    if token is not None:
        return Access(client, "token")
    session = guard.session_of(request)
    if session is None:
        refusal = _unauthorized("this needs the admin token (Authorization: Bearer) or a dashboard session")
        _log_refusal(request, client, refusal)
        raise refusal
    presented = request.headers.get(CSRF_HEADER) or await _csrf_field(request)
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        refusal = Refused(
            403, "Forbidden", f"the session's CSRF token is missing or wrong ({CSRF_HEADER})", kind="bad-csrf"
        )
        _log_refusal(request, client, refusal)
        raise refusal
    return Access(client, "session", session)


async def _csrf_field(request: Request) -> str:
    """The ``csrf`` field of a small urlencoded form; "" otherwise."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    declared = request.headers.get("content-length", "")
    if content_type != "application/x-www-form-urlencoded" or not declared.isdigit():
        return ""
    if int(declared) > MAX_CSRF_FORM:
        return ""
    body = await request.body()  # kept by the request: the route still reads it
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=100)
    except ValueError:  # too many fields: no CSRF token read from it
        return ""
    return (fields.get(CSRF_FIELD) or [""])[0]


# --------------------------------------------------------------------------- the ASGI front


def guarded(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in GUARDED_PREFIXES)


class AdminNetworkGuard:
    """ASGI middleware: the admin surface (:data:`GUARDED_PREFIXES`) answers only inside the admin networks.

    Requests carrying ``X-Wakegrid-Service`` are the wake path's (whatever their path: a sleeping app's
    own ``/api``), which checks its own peer. It also answers the dependencies' :class:`Refused`.
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        wake_path = any(name == SERVICE_HEADER.encode() for name, _ in scope.get("headers", ()))
        if not wake_path and guarded(scope.get("path", "")):
            client = self.guard.client_of(scope)
            if not self.guard.inside(client):
                refusal = _outside(client)
                _log_refusal(HTTPConnection(scope), client, refusal)
                await self._refuse(scope, receive, send, refusal)
                return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Refused as refusal:
            if started:
                raise
            await self._refuse(scope, receive, send, refusal)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refused) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await refusal.response()(scope, receive, send)

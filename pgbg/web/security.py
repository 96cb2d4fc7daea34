"""Who may see the dashboard and who may act: HTTP Basic, CSRF tokens, response headers.

Basic authentication guards every path but ``/healthz`` (which says only whether the
database answers) once a password is set. Both the user and the password are compared in
constant time, always both, so neither a wrong user nor a wrong password answers faster.

CSRF: a signed double-submit token. The cookie ``pgbg_csrf`` holds ``nonce.signature``
(HMAC-SHA256 of the nonce under the app's secret); every form that POSTs carries the same
value in a hidden field. A POST is accepted only when the field equals the cookie and the
signature is the app's: another site can neither read the cookie nor forge one. Cookies do
not keep to a port, so the cookie of a dashboard reached on an explicit port is named
``pgbg_csrf_<port>``, and its path is the app's mount point: two dashboards on one host
(two ports, two mounts) each keep their own instead of replacing the other's.

Paths are judged as the app's routes see them (without the mount's ``root_path``).
``allowed_hosts``: the Host header must name one of them (``pgbg web`` without a password
on loopback allows only loopback names, so a DNS-rebound page cannot reach it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from starlette.requests import cookie_parser

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "pgbg_csrf"
CSRF_FIELD = "csrf"
OPEN_PATHS = frozenset({"/healthz"})
MAX_BODY = 1 << 20  # bytes a request body may carry (forms here are small)
HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
NO_STORE = (b"cache-control", b"no-store")  # pages: always fresh, never in a shared cache
STATIC = (b"cache-control", b"private, max-age=3600")


def credentials_match(header: str | None, user: str | bytes, password: str | bytes) -> bool:
    """Whether an ``Authorization`` header carries ``user`` and ``password``, compared as
    bytes: a password set from a non-UTF-8 shell (held as lone surrogates) is its bytes."""
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, sep, given_password = decoded.partition(b":")
    user_ok = hmac.compare_digest(given_user, _bytes(user))
    password_ok = hmac.compare_digest(given_password, _bytes(password))
    return bool(sep) and user_ok and password_ok


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


class Csrf:
    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def new_token(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 200:
            return False
        nonce, _, signature = token.partition(".")
        return hmac.compare_digest(signature.encode(), self._sign(nonce).encode())

    def accepts(self, cookie: str | None, field: str | None) -> bool:
        """Whether a POST's form field matches its cookie, and the cookie is ours."""
        if not cookie or not field:
            return False
        return hmac.compare_digest(cookie.encode(), field.encode()) and self.valid(cookie)


def _cookie(scope: Scope, name: str) -> str | None:
    """The cookie as the endpoints read it (Starlette's lenient parser: another
    application's odd cookie on the same host hides nothing)."""
    found = _cookies(scope, name)
    return found[0] if found else None


def _cookies(scope: Scope, name: str) -> list[str]:
    """Every value the request carries for cookie ``name`` (a browser sends one per path
    that matches, the most specific first)."""
    values: list[str] = []
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                found = cookie_parser(part).get(name)
                if found is not None:
                    values.append(found)
    return values


def route_path(scope: Scope) -> str:
    """The path as the app's routes see it: without the mount point (``root_path``)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def host_port(host: str | None) -> tuple[str, str | None]:
    """A Host header's name (lowercase, brackets kept for IPv6) and port, if it has one."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return name + "]", port or None
    name, sep, port = host.rpartition(":")
    if not sep:
        return host, None
    return name, port or None


def cookie_name(scope: Scope) -> str:
    """``pgbg_csrf``, or ``pgbg_csrf_<port>`` when the browser reaches the app on an
    explicit port (the browser keeps one cookie jar for every port of a host)."""
    _name, port = host_port(_header(scope, b"host"))
    return f"{CSRF_COOKIE}_{port}" if port and port.isdigit() else CSRF_COOKIE


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Guard:
    """ASGI middleware: authentication, the CSRF cookie (``scope["state"]["csrf"]``: the
    token forms must carry) and the security headers on every response."""

    def __init__(self, app: ASGIApp, *, user: str, password: str | None, csrf: Csrf,
                 secure_cookie: bool = False,
                 allowed_hosts: Collection[str] | None = None) -> None:
        self.app, self.user, self.password, self.csrf = app, user, password, csrf
        self.secure_cookie = secure_cookie
        self.allowed_hosts = ({h.lower() for h in allowed_hosts} if allowed_hosts is not None
                              else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if (self.allowed_hosts is not None
                and host_port(_header(scope, b"host"))[0] not in self.allowed_hosts):
            await self._refuse(send, 400, b"this dashboard answers only to the names of "
                               b"this machine (localhost, 127.0.0.1, [::1]): the Host header "
                               b"names another\n")
            return
        if (self.password and path not in OPEN_PATHS
                and not credentials_match(_header(scope, b"authorization"), self.user,
                                          self.password)):
            await self._refuse(send)
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await self._refuse(send, 413, b"request body too large\n")
            return
        received = 0

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:  # chunked, past the limit: the form cannot be read
                    return {"type": "http.disconnect"}
            return message

        name = cookie_name(scope)
        cookie = next((c for c in _cookies(scope, name) if self.csrf.valid(c)), None)
        fresh = cookie is None
        token = self.csrf.new_token() if cookie is None else cookie
        state = scope.setdefault("state", {})
        state["csrf"] = token
        state["csrf_cookie"] = cookie  # the request's own valid cookie, if it has one
        cookie_path = str(scope.get("root_path", "")) or "/"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(HEADERS)
                headers.append(STATIC if path.startswith("/static/") else NO_STORE)
                if fresh:
                    flags = "; Secure" if self.secure_cookie else ""
                    headers.append((b"set-cookie", (
                        f"{name}={token}; Path={cookie_path}; HttpOnly; SameSite=Strict"
                        f"{flags}").encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive_bounded, send_with_headers)

    async def _refuse(self, send: Send, status: int = 401,
                      body: bytes = b"authentication required\n") -> None:
        challenge = [(b"www-authenticate", b'Basic realm="pgbg", charset="UTF-8"')]
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *(challenge if status == 401 else []), *HEADERS, NO_STORE]})
        await send({"type": "http.response.body", "body": body})

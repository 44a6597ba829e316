"""The built-in reverse proxy, for operators without nginx or Caddy.

A WSGI middleware in front of the Flask app: a request whose Host and path
match a ``gateway.routes`` entry with an ``upstream`` passes the same check
as forward-auth and, when allowed, goes to the upstream with the identity
headers; every other request goes to the Flask app untouched. Bodies stream
both ways in small chunks, so Flask's ``MAX_CONTENT_LENGTH`` does not apply
and a transfer of any size holds no more than a chunk in memory, and the
database session is released before the first byte moves.

Start-up refuses a route whose host Portcullis would not serve: its host
must be a protected host (``gateway.protected_hosts`` or the public URL's
host), because the check and the return-URL rule (GW-1) trust only those,
and a route must not widen where sign-in may send people without that one
list saying so. Its host must also receive the session cookie (the public
host, or a host under ``sessions.cookie_domain``), or every signed-in visit
would loop back to the sign-in page.

WebSocket upgrades are answered 501: use forward-auth behind nginx or Caddy.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import sqlalchemy as sa
import urllib3
from flask import Flask, Response, g, render_template_string, request
from werkzeug.wsgi import LimitedStream, get_content_length

from idp.clientip import is_trusted, parse_address
from idp.db import db
from idp.gateway.forward import (
    IDENTITY_HEADERS,
    _allowed,
    _denied,
    _wants_html,
    sign_in_answer,
)
from idp.services import gateway
from idp.services.returnurl import protected_hosts
from idp.settings import SettingsError
from idp.state import settings, state
from idp.web.errors import audit_refusal
from idp.web.requests import current_client, session_cookie_name

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# Meaningful for one connection only (RFC 9110 7.6.1): never forwarded in
# either direction, nor the headers a Connection header names, nor Proxy-*.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
# What a client must never tell the upstream about itself: the identity and
# the client's address are ours to state (ASVS 4.1.3).
SPOOFABLE_PREFIXES = ("x-auth-", "x-forwarded-", "proxy-")
# Nor name another request than the one checked: some frameworks route by
# X-Original-URL or X-Rewrite-URL, or build links from X-Host. The deploy/
# examples drop the same headers.
SPOOFABLE = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-original-method",
        "x-rewrite-url",
        "x-host",
    }
)
# Ours to set on the upstream connection: Host names the upstream,
# Content-Length follows the body as sent, and the server in front of us
# has already answered any Expect: 100-continue.
REPLACED = frozenset({"host", "content-length", "expect"})
# Our cookies under every name they take: a session token handed to one
# upstream could be replayed against every other protected app.
OWN_COOKIES = frozenset(
    {
        "portcullis_session",
        "__Host-portcullis_session",
        "__Secure-portcullis_session",
        "portcullis_flow",
        "__Host-portcullis_flow",
    }
)
PATH_SAFE = "/!$&'()*+,;=:@"

PAGES = {
    400: ("Invalid request", "The address of this request is not valid."),
    404: ("Not found", "Nothing is served at this address."),
    411: ("Length required", "A request body needs a length or chunked framing."),
    501: (
        "WebSocket not supported",
        (
            "The built-in proxy of Portcullis does not carry WebSocket connections. "
            "Put this app behind nginx or Caddy with Portcullis forward-auth instead."
        ),
    ),
    502: (
        "Application unreachable",
        (
            "You were let through, but the application behind this address did "
            "not answer. It may be down or restarting; try again shortly."
        ),
    ),
    503: (
        "Temporarily unavailable",
        (
            "Portcullis cannot reach its data store right now, so it cannot check "
            "this request. Try again shortly."
        ),
    ),
    504: (
        "Application too slow",
        (
            "You were let through, but the application behind this address took "
            "too long to answer. Try again shortly."
        ),
    ),
}
# Shown under the app's address, where our flow cookie (and so any flash
# message) is not sent: no flashes, and assets from the public URL.
_PAGE = """{% extends "base.html" %}
{% block title %}{{ title }}{% endblock %}
{% block body %}
<main class="container auth">
  <article class="auth-card">
    <header class="brand">
      <span class="brand-mark" aria-hidden="true">▥</span> Portcullis
    </header>
    <h1 class="h-page">{{ title }}</h1>
    <p>{{ message }}</p>
    <small class="muted">Error {{ status }} · request {{ g.request_id }}</small>
  </article>
</main>
{% endblock %}"""


def init_app(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` when some route has an upstream; refuse at
    start-up a route host that is not protected or gets no session cookie."""
    routes = app.extensions["idp"].settings["gateway"]["routes"]
    if not any(route["upstream"] for route in routes):
        return
    with app.app_context():
        _refuse_unreachable_hosts()
    proxy = ReverseProxy(app, app.wsgi_app)
    app.extensions["idp_proxy"] = proxy
    app.wsgi_app = proxy  # type: ignore[method-assign]


def _refuse_unreachable_hosts() -> None:
    s = settings()
    protected = protected_hosts()
    cookie_domain = s["sessions"]["cookie_domain"].lower().strip(".")
    for number, route in enumerate(s["gateway"]["routes"], start=1):
        host = route["host"]
        if not route["upstream"]:
            continue
        where = f"gateway.routes[{number}]"
        if host not in protected:
            raise SettingsError(
                f"{where}: host {host} has an upstream but is not in "
                "gateway.protected_hosts; add it there"
            )
        under_cookie = cookie_domain and (
            host == cookie_domain or host.endswith("." + cookie_domain)
        )
        if host != s.public_host.lower() and not under_cookie:
            raise SettingsError(
                f"{where}: host {host} would never receive the session cookie; "
                "set sessions.cookie_domain to a domain above it and the "
                "public host, or route a path of the public host instead"
            )


@dataclass
class _Exchange:
    """One proxied request, from the check to its last byte."""

    request_id: str
    started: float
    method: str
    label: str = "(unmatched)"
    client_ip: str = "unknown"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def log(self, status: int, *, sent: int | None = None, cut: bool = False) -> None:
        # The route pattern, never the path or query: they may carry secrets.
        log.info(
            "proxy request_id=%s method=%s route=%s status=%d ms=%.1f%s%s client=%s",
            self.request_id,
            self.method[:16],
            self.label,
            status,
            (time.perf_counter() - self.started) * 1000,
            "" if sent is None else f" bytes={sent}",
            " cut=yes" if cut else "",
            self.client_ip,
        )


class ReverseProxy:
    """WSGI middleware: proxied routes here, everything else to ``inner``."""

    def __init__(self, app: Flask, inner: WSGIApplication) -> None:
        self._app = app
        self._inner = inner
        s = app.extensions["idp"].settings
        self._hosts = frozenset(
            r["host"] for r in s["gateway"]["routes"] if r["upstream"]
        )
        self._timeout = urllib3.Timeout(
            connect=s["gateway"]["proxy_connect_timeout_seconds"],
            read=s["gateway"]["proxy_read_timeout_seconds"],
        )
        # As many kept connections per upstream as a worker has threads.
        self.pool = urllib3.PoolManager(
            num_pools=max(10, len(self._hosts)),
            maxsize=max(1, int(s["server"]["threads"])),
            retries=False,
        )

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if _host_name(environ.get("HTTP_HOST", "")) not in self._hosts:
            return self._inner(environ, start_response)
        exchange = _Exchange(
            request_id=secrets.token_hex(8),
            started=time.perf_counter(),
            method=environ.get("REQUEST_METHOD", "GET"),
        )
        with self._app.request_context(environ):
            g.request_id = exchange.request_id
            try:
                outcome = self._decide(environ, exchange)
            finally:
                # A long transfer must never hold a database connection.
                db.session.remove()
            if isinstance(outcome, Response):
                return outcome(environ, start_response)
        if outcome is None:
            return self._inner(environ, start_response)
        return self._send(exchange, environ, start_response)

    # --- inside a request context: the check -----------------------------

    def _decide(
        self, environ: WSGIEnvironment, exchange: _Exchange
    ) -> Response | _Exchange | None:
        """Our own answer, the exchange ready to forward, or None (Flask's)."""
        exchange.client_ip = current_client().ip or "unknown"
        raw = _original(environ)
        if raw is None or raw.host != _host_name(environ.get("HTTP_HOST", "")):
            audit_refusal(reason="bad_request")
            return _answer(_page(400), exchange)
        # The upstream is chosen by the path as sent; the check applies the
        # role rule of every route that any reading of the path falls under.
        route = gateway.route_for(raw.host, raw.path, with_upstream=True)
        if route is None:
            if raw.host == settings().public_host.lower():
                return None
            # Our pages never load under an app's origin, where the app's
            # own scripts could read them (and their form tokens).
            return _answer(_page(404), exchange)
        exchange.label = route["host"] + route["path"]
        if gateway.climbs_above_root(raw.path):
            audit_refusal(reason="bad_request")
            return _answer(_page(400), exchange)
        if "websocket" in _tokens(environ.get("HTTP_UPGRADE", "")):
            return _answer(_page(501), exchange)
        if _chunked(environ) and not environ.get("wsgi.input_terminated"):
            return _answer(_page(411), exchange)
        try:
            verdict = gateway.check(
                request.cookies.get(session_cookie_name()), current_client(), raw
            )
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError):
            # Never fail open (ASVS 16.5.3).
            db.session.rollback()
            log.error("store.unavailable kind=proxy_check")
            return _answer(_page(503), exchange)
        if verdict.outcome == "sign_in":
            return _answer(sign_in_answer(verdict), exchange)
        if verdict.outcome == "deny":
            response = _denied(verdict.reason or "denied")
            return _answer(response, exchange)
        assert verdict.identity is not None
        exchange.headers = _upstream_headers(environ)
        # Exactly what forward-auth's allowed answer carries.
        allowed = _allowed(verdict.identity).headers
        for name in IDENTITY_HEADERS:
            exchange.headers[name] = allowed[name]
        if exchange.client_ip != "unknown":
            exchange.headers["X-Forwarded-For"] = exchange.client_ip
        exchange.headers["X-Forwarded-Proto"] = raw.scheme
        exchange.headers["X-Forwarded-Host"] = raw.netloc
        base = urlsplit(route["upstream"])
        exchange.url = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{raw.uri}"
        return exchange

    # --- outside any context: the database is released -------------------

    def _send(
        self,
        exchange: _Exchange,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        headers = dict(exchange.headers)
        body = _request_body(environ, headers)
        if "User-Agent" not in headers:
            # Otherwise urllib3 adds its own; the upstream sees the client's.
            headers["User-Agent"] = urllib3.util.SKIP_HEADER
        try:
            upstream = self.pool.urlopen(
                exchange.method,
                exchange.url,
                body=body,
                headers=headers,
                chunked=_chunked(environ),
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout,
            )
        except _ClientGone as exc:
            log.info(
                "proxy.client_gone request_id=%s error=%s", exchange.request_id, exc
            )
            start_response("400 Bad Request", [("Content-Length", "0")])
            return []
        # Refused or unresolvable is "unreachable", though urllib3 files
        # NewConnectionError under connection timeouts.
        except urllib3.exceptions.NewConnectionError as exc:
            return self._late(exchange, environ, start_response, 502, exc)
        except urllib3.exceptions.TimeoutError as exc:
            return self._late(exchange, environ, start_response, 504, exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # An upstream that stops reading the body past the connect
            # timeout surfaces as an aborted connection; it was too slow.
            cause = exc.args[-1] if exc.args else None
            stalled = isinstance(exc, urllib3.exceptions.ProtocolError) and (
                isinstance(cause, TimeoutError)
            )
            return self._late(
                exchange, environ, start_response, 504 if stalled else 502, exc
            )
        status = upstream.status
        start_response(
            f"{status} {upstream.reason or _phrase(status)}",
            _downstream_headers(upstream.headers),
        )
        return _Stream(upstream, environ, exchange)

    def _late(
        self,
        exchange: _Exchange,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        status: int,
        exc: Exception,
    ) -> Iterable[bytes]:
        log.warning(
            "proxy.upstream_%s request_id=%s route=%s error=%s",
            "timeout" if status == 504 else "unreachable",
            exchange.request_id,
            exchange.label,
            type(exc).__name__,
        )
        with self._app.request_context(environ):
            g.request_id = exchange.request_id
            response = _answer(_page(status), exchange)
            return response(environ, start_response)


class _Stream:
    """The upstream's body, chunk by chunk; one log line when it ends."""

    def __init__(
        self,
        upstream: urllib3.BaseHTTPResponse,
        environ: WSGIEnvironment,
        exchange: _Exchange,
    ) -> None:
        self._upstream = upstream
        self._environ = environ
        self._exchange = exchange
        self._sent = 0
        self._complete = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while data := self._upstream.read(CHUNK_BYTES):
                self._sent += len(data)
                yield data
            self._complete = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning(
                "proxy.upstream_broke request_id=%s route=%s error=%s",
                self._exchange.request_id,
                self._exchange.label,
                type(exc).__name__,
            )
            _abort_client(self._environ)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._complete:
            # Unread bytes would poison the next request on this connection.
            self._upstream.close()
        self._upstream.release_conn()
        self._exchange.log(
            self._upstream.status, sent=self._sent, cut=not self._complete
        )


def _abort_client(environ: WSGIEnvironment) -> None:
    """Close the client's connection, so a body cut short by the upstream
    cannot pass for a whole one (a chunked answer would otherwise end with
    a clean last chunk). Only gunicorn hands its socket to the app."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# --- the request as the client sent it -------------------------------------


def _host_name(host_header: str) -> str:
    return host_header.partition(":")[0].lower().rstrip(".")


def _scheme() -> str:
    """The scheme the client used: a trusted proxy's X-Forwarded-Proto,
    else the public URL's (protected hosts share it)."""
    if is_trusted(parse_address(request.remote_addr), state().trusted_proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").rpartition(",")[2]
        if proto.strip().lower() in ("http", "https"):
            return proto.strip().lower()
    return settings().public_scheme


def _original(environ: WSGIEnvironment) -> gateway.Original | None:
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if uri is None:
        uri = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe=PATH_SAFE)
        if environ.get("QUERY_STRING"):
            uri += "?" + environ["QUERY_STRING"]
    elif not uri.startswith("/"):
        # The absolute form (RFC 9112 3.2.2): only its path and query go on.
        try:
            parts = urlsplit(uri)
        except ValueError:
            return None
        if parts.scheme not in ("http", "https"):
            return None
        uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return None
    return gateway.Original.from_parts(
        environ.get("REQUEST_METHOD"), _scheme(), environ.get("HTTP_HOST"), uri
    )


def _upstream_headers(environ: WSGIEnvironment) -> dict[str, str]:
    """The client's headers minus hop-by-hop, spoofable and our cookies."""
    named = _tokens(environ.get("HTTP_CONNECTION", ""))
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key == "CONTENT_TYPE":
            name = "Content-Type"
        else:
            continue
        lower = name.lower()
        if (
            not value
            or lower in HOP_BY_HOP
            or lower in named
            or lower in SPOOFABLE
            or lower in REPLACED
            or lower.startswith(SPOOFABLE_PREFIXES)
        ):
            continue
        if lower == "cookie":
            value = "; ".join(
                pair.strip()
                for pair in value.split(";")
                if pair.strip() and pair.partition("=")[0].strip() not in OWN_COOKIES
            )
            if not value:
                continue
        headers[name] = value
    return headers


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def _downstream_headers(received: Any) -> list[tuple[str, str]]:
    named: set[str] = set()
    for value in received.getlist("Connection"):
        named |= _tokens(value)
    return [
        (name, value)
        for name, value in received.items()
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in named
        and not name.lower().startswith("proxy-")
        and not (name.lower() == "set-cookie" and _sets_our_cookie(value))
    ]


def _sets_our_cookie(value: str) -> bool:
    """An upstream may not set a session of its choosing (fixation)."""
    return value.partition("=")[0].strip() in OWN_COOKIES


def _chunked(environ: WSGIEnvironment) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


class _ClientGone(Exception):
    """The client's request body broke off; nobody is left to answer."""


class _ClientBody:
    """The client's body, read by urllib3 in blocks. A failure to read it is
    the client's, told apart from the upstream's."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as exc:  # each WSGI server raises its own kinds
            raise _ClientGone(type(exc).__name__) from exc


def _request_body(
    environ: WSGIEnvironment, headers: dict[str, str]
) -> _ClientBody | bytes | None:
    """The body as a stream, framed as the client framed it."""
    if _chunked(environ):
        return _ClientBody(environ["wsgi.input"])
    length = get_content_length(environ)
    if length is None:
        return None
    headers["Content-Length"] = str(length)
    if length == 0:
        return b""
    return _ClientBody(LimitedStream(environ["wsgi.input"], length))


# --- our own answers -------------------------------------------------------


def _answer(response: Response, exchange: _Exchange) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    exchange.log(response.status_code)
    return response


def _page(status: int) -> Response:
    title, message = PAGES[status]
    if not _wants_html():
        body = json.dumps({"error": title, "message": message}) + "\n"
        return Response(body, status, mimetype="application/json")
    html = render_template_string(
        _PAGE,
        status=status,
        title=title,
        message=message,
        asset_base=settings().public_url,
    )
    response = Response(html, status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _csp()
    return response


def _csp() -> str:
    # Shown under the app's address: the styles come from our public URL.
    base = settings().public_url
    return (
        f"default-src 'none'; style-src {base}; img-src {base}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )

"""The built-in reverse proxy: the forward-auth check on every request,
identity headers in, the client's own identity, forwarding headers and our
cookies out, bodies streamed both ways, upstream failures as 502 and 504."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import urllib3
from joserfc import jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet

from idp.app import create_app
from idp.db import db
from idp.models import User
from idp.services import reasons
from idp.services.context import Context
from idp.services.users import disable_user
from idp.settings import SettingsError, load_settings
from tests.conftest import (
    FAST_HASH,
    PASSWORD,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)
from tests.serve import spawn_serve, stop

APP = "app.localhost"
DOWN = "down.localhost"
HTML = {"Accept": "text/html,application/xhtml+xml"}
API = {"Accept": "application/json"}
MiB = 1024 * 1024


# --- a small upstream app ---------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body_bytes: int
    chunked: bool

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


@dataclass
class Upstream:
    url: str
    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> tuple[int, bool]:
        # Counted and thrown away: the test process must not hold 1 GB either.
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total, True
                left = size
                while left:
                    left -= len(self.rfile.read(min(left, MiB)))
                self.rfile.readline()
                total += size
        left = int(self.headers.get("Content-Length") or 0)
        total = left
        while left:
            data = self.rfile.read(min(left, MiB))
            if not data:
                break
            left -= len(data)
        return total - left, False

    def _zeros(self, count: int) -> None:
        block = bytes(MiB)
        while count > 0:
            self.wfile.write(block[: min(count, MiB)])
            count -= MiB

    def _handle(self) -> None:
        upstream: Upstream = self.server.upstream
        size, chunked = self._read_body()
        upstream.seen.append(
            Seen(self.command, self.path, list(self.headers.items()), size, chunked)
        )
        parts = self.path.split("?")[0].split("/")
        if parts[1] == "hang":
            upstream.release.wait(30)
            return
        if parts[1] == "download":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", parts[2])
            self.end_headers()
            self._zeros(int(parts[2]))
            return
        if parts[1] == "unframed":
            # No length: the body ends when the connection closes.
            self.send_response(200)
            self.end_headers()
            self._zeros(int(parts[2]))
            return
        if parts[1] in ("die", "die-chunked"):
            # Half the promised body, then the connection drops.
            count = int(parts[2])
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            if parts[1] == "die":
                self.send_header("Content-Length", str(2 * count))
                self.end_headers()
                self._zeros(count)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n%s\r\n" % (count, bytes(count)))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        body = json.dumps({"received": size, "chunked": chunked}).encode()
        self.send_response(302 if parts[1] == "redirect" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Location", "/elsewhere?from=upstream")
        self.send_header("Set-Cookie", "app_a=1; Path=/; HttpOnly")
        self.send_header("Set-Cookie", "app_b=2; Path=/")
        # An app trying to plant a session of its choosing (fixation).
        self.send_header("Set-Cookie", "portcullis_session=planted; Path=/")
        self.send_header("Set-Cookie", "__Host-portcullis_flow=planted; Path=/")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Connection", "X-Hop-Secret")
        self.send_header("X-Hop-Secret", "hop")
        self.send_header("Proxy-Authenticate", "Basic")
        self.send_header("X-App", "kept")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


@contextmanager
def _running_upstream() -> Iterator[Upstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    running = Upstream(
        url=f"http://127.0.0.1:{server.server_address[1]}", server=server
    )
    server.upstream = running  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.release.set()
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _routes(upstream_url: str) -> list[dict[str, Any]]:
    return [
        {"host": APP, "path": "/", "upstream": upstream_url},
        {
            "host": APP,
            "path": "/admin",
            "roles": ["admin"],
            "upstream": upstream_url + "/prefix/",
        },
        # A role rule alone: /reports goes to the "/" route's upstream.
        {"host": APP, "path": "/reports", "roles": ["admin"]},
        {"host": DOWN, "upstream": f"http://127.0.0.1:{_closed_port()}"},
    ]


@pytest.fixture
def overrides(overrides: dict[str, Any], upstream: Upstream) -> dict[str, Any]:
    overrides["gateway"] = {
        "protected_hosts": [APP, DOWN],
        "routes": _routes(upstream.url),
        "proxy_connect_timeout_seconds": 2.0,
        # Only /hang waits this long; every other answer is immediate.
        "proxy_read_timeout_seconds": 0.5,
    }
    overrides["sessions"] = {"cookie_domain": "localhost"}
    return overrides


@pytest.fixture
def workspace(app):  # type: ignore[no-untyped-def]
    return make_workspace(app)


def _token(app, email: str) -> str:  # type: ignore[no-untyped-def]
    token = session_cookie(signed_in(app, email))
    assert token
    return token


def proxied(  # type: ignore[no-untyped-def]
    app,
    path: str,
    token: str | None = None,
    *,
    host: str = APP,
    cookies: str = "",
    headers: dict[str, str] | None = None,
    **kw: Any,
):
    """A request to a proxied host, with exactly the cookies given."""
    sent = {**API, **(headers or {})}
    cookie = "; ".join(
        c for c in (cookies, f"portcullis_session={token}" if token else "") if c
    )
    if cookie:
        sent["Cookie"] = cookie
    client = app.test_client(use_cookies=False)
    return client.open(path, base_url=f"http://{host}", headers=sent, **kw)


# --- the check --------------------------------------------------------------


def test_anonymous_browser_is_sent_to_sign_in_with_return_url(app, upstream):
    response = proxied(app, "/docs/page?x=1", headers=HTML)

    assert response.status_code == 302
    rd = quote("http://app.localhost/docs/page?x=1", safe="")
    assert response.headers["Location"] == f"http://localhost/login?rd={rd}"
    assert upstream.seen == []


def test_return_url_from_proxy_is_honoured_at_login(app, workspace, upstream):
    make_user(app, workspace, "rd@example.com")
    location = proxied(app, "/docs?x=1", headers=HTML).headers["Location"]
    login_path = location.removeprefix("http://localhost")
    client = app.test_client()
    post_form(client, login_path, {"email": "rd@example.com"})

    response = post_form(client, "/login/password", {"password": PASSWORD})

    assert response.headers["Location"] == "http://app.localhost/docs?x=1"


def test_anonymous_api_client_gets_401(app, upstream):
    response = proxied(app, "/api/items", method="POST", data=b"{}")

    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthenticated"}
    assert not [h for h, _ in response.headers if h.lower().startswith("x-auth")]
    assert upstream.seen == []


def test_signed_in_request_reaches_upstream_with_identity(app, workspace, upstream):
    user = make_user(app, workspace, "ann@example.com", name="Ann Lee")
    token = _token(app, "ann@example.com")

    response = proxied(app, "/docs/a%2Fb/?q=1&r=%20x", token)

    assert response.status_code == 200
    seen = upstream.seen[-1]
    assert seen.path == "/docs/a%2Fb/?q=1&r=%20x"
    assert seen.header("X-Auth-User") == str(user.id)
    assert seen.header("X-Auth-Email") == "ann@example.com"
    assert seen.header("X-Auth-Name") == "Ann Lee"
    assert seen.header("X-Auth-Role") == "read_only"
    assert seen.header("X-Auth-Workspace") == workspace.slug
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == APP
    assert seen.header("Host") == upstream.url.removeprefix("http://")


def test_assertion_verifies_against_jwks_for_the_route_origin(app, workspace, upstream):
    user = make_user(app, workspace, "jwt@example.com")
    proxied(app, "/", _token(app, "jwt@example.com"))
    assertion = upstream.seen[-1].header("X-Auth-Assertion")
    keys = KeySet.import_key_set(
        app.test_client().get("/.well-known/jwks.json").get_json()
    )

    token = jwt.decode(assertion, keys, algorithms=["ES256"])
    jwt.JWTClaimsRegistry(
        aud={"essential": True, "value": "http://app.localhost"},
        sub={"essential": True, "value": str(user.id)},
    ).validate(token.claims)

    with pytest.raises(InvalidClaimError):
        jwt.JWTClaimsRegistry(
            aud={"essential": True, "value": "http://other.localhost"}
        ).validate(token.claims)


def test_upstream_prefix_path_is_prepended(app, workspace, upstream):
    make_user(app, workspace, "boss@example.com", role="admin")

    response = proxied(app, "/admin/users?page=2", _token(app, "boss@example.com"))

    assert response.status_code == 200
    assert upstream.seen[-1].path == "/prefix/admin/users?page=2"


SPOOFED = [
    pytest.param("X-Auth-User", "00000000-0000-0000-0000-000000000000", id="auth-user"),
    pytest.param("X-Auth-Email", "boss@evil.example", id="auth-email"),
    pytest.param("X-Auth-Role", "admin-spoofed", id="auth-role"),
    pytest.param("X-Auth-Assertion", "forged.jwt.value", id="auth-assertion"),
    pytest.param("X-Auth-Extra", "spoofed", id="auth-extra"),
    pytest.param("X-Forwarded-For", "203.0.113.9", id="forwarded-for"),
    pytest.param("X-Forwarded-Host", "evil.example", id="forwarded-host"),
    pytest.param("X-Forwarded-Proto", "gopher", id="forwarded-proto"),
    pytest.param("X-Forwarded-Prefix", "/evil", id="forwarded-prefix"),
    pytest.param("Forwarded", "for=203.0.113.9;host=evil.example", id="forwarded"),
    pytest.param("X-Real-IP", "203.0.113.9", id="real-ip"),
]


@pytest.mark.parametrize(("name", "value"), SPOOFED)
def test_spoofed_headers_do_not_reach_upstream(app, workspace, upstream, name, value):
    make_user(app, workspace, "sam@example.com")
    token = _token(app, "sam@example.com")

    response = proxied(app, "/", token, headers={name: value})

    assert response.status_code == 200
    assert all(value not in v for _, v in upstream.seen[-1].headers)
    assert upstream.seen[-1].header("X-Auth-Email") == "sam@example.com"


HOP_BY_HOP = [
    pytest.param({"Connection": "X-Hop-Secret", "X-Hop-Secret": "s3"}, id="named"),
    pytest.param({"Keep-Alive": "timeout=99"}, id="keep-alive"),
    pytest.param({"TE": "trailers"}, id="te"),
    pytest.param({"Trailer": "X-Checksum"}, id="trailer"),
    pytest.param({"Upgrade": "h2c", "Connection": "Upgrade"}, id="upgrade"),
    pytest.param({"Proxy-Authorization": "Basic czM="}, id="proxy-auth"),
    pytest.param({"Proxy-Connection": "keep-alive"}, id="proxy-connection"),
]


@pytest.mark.parametrize("sent", HOP_BY_HOP)
def test_hop_by_hop_request_headers_are_dropped(app, workspace, upstream, sent):
    make_user(app, workspace, "hop@example.com")

    proxied(app, "/", _token(app, "hop@example.com"), headers=sent)

    names = {k.lower() for k, _ in upstream.seen[-1].headers}
    assert not names & {k.lower() for k in sent}


def test_portcullis_cookies_are_stripped_others_kept(app, workspace, upstream):
    make_user(app, workspace, "cookie@example.com")
    token = _token(app, "cookie@example.com")
    others = (
        "theme=dark; __Host-portcullis_session=a; __Secure-portcullis_session=b; "
        "portcullis_flow=c; __Host-portcullis_flow=d; csrftoken=abc=="
    )

    proxied(app, "/", token, cookies=others)

    seen = upstream.seen[-1]
    assert seen.header("Cookie") == "theme=dark; csrftoken=abc=="
    assert all(token not in v for _, v in seen.headers)


def test_only_portcullis_cookie_leaves_no_cookie_header(app, workspace, upstream):
    make_user(app, workspace, "solo@example.com")

    proxied(app, "/", _token(app, "solo@example.com"))

    assert upstream.seen[-1].header("Cookie") is None


def test_upstream_answer_passes_back_without_hop_by_hop(app, workspace, upstream):
    make_user(app, workspace, "back@example.com")

    response = proxied(app, "/redirect", _token(app, "back@example.com"))

    assert response.status_code == 302
    assert response.headers["Location"] == "/elsewhere?from=upstream"
    # The app's own cookies pass; ours, which it may not set, do not.
    assert response.headers.getlist("Set-Cookie") == [
        "app_a=1; Path=/; HttpOnly",
        "app_b=2; Path=/",
    ]
    assert response.headers["X-App"] == "kept"
    assert response.headers["Content-Type"] == "application/json"
    for dropped in ("Keep-Alive", "X-Hop-Secret", "Proxy-Authenticate", "Connection"):
        assert dropped not in response.headers
    assert response.get_json() == {"received": 0, "chunked": False}


def test_request_body_passes_past_flask_size_limit(app, workspace, upstream):
    make_user(app, workspace, "big@example.com")
    body = b"x" * (3 * MiB)

    response = proxied(
        app, "/upload", _token(app, "big@example.com"), method="PUT", data=body
    )

    assert response.status_code == 200
    assert response.get_json() == {"received": len(body), "chunked": False}
    assert upstream.seen[-1].header("Content-Length") == str(len(body))


def test_database_connection_is_released_before_streaming(app, workspace, upstream):
    make_user(app, workspace, "pool@example.com")
    token = _token(app, "pool@example.com")

    response = proxied(app, f"/download/{4 * MiB}", token, buffered=False)
    chunks = iter(response.response)
    first = next(chunks)
    with app.app_context():
        held = db.engine.pool.checkedout()
    total = len(first) + sum(len(chunk) for chunk in chunks)
    response.close()

    assert held == 0
    assert total == 4 * MiB


@pytest.mark.parametrize(
    "how", ["by_admin", "status_only"], ids=["disabled-by-admin", "status-changed"]
)
def test_disabled_user_is_refused_on_the_next_request(app, workspace, upstream, how):
    admin = make_user(app, workspace, "admin@example.com", role="admin")
    user = make_user(app, workspace, "gone@example.com")
    token = _token(app, "gone@example.com")
    assert proxied(app, "/", token).status_code == 200
    with app.app_context():
        if how == "by_admin":
            actor = db.session.get(User, admin.id)
            disable_user(
                Context.for_user(actor, Context.operator().client), workspace, user.id
            )
        else:
            # A path that forgot to revoke sessions: the check still refuses.
            db.session.execute(
                sa.update(User).where(User.id == user.id).values(status="disabled")
            )
            db.session.commit()

    response = proxied(app, "/", token)

    assert response.status_code == 401
    assert len(upstream.seen) == 1


def test_admin_only_route_refuses_read_only_with_reason(app, workspace, upstream):
    make_user(app, workspace, "reader@example.com")

    response = proxied(
        app, "/admin/users", _token(app, "reader@example.com"), headers=HTML
    )

    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "role_not_allowed"
    assert reasons.message("role_not_allowed") in response.get_data(as_text=True)
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/%61dmin/users",
        "/public/../admin/users",
        "//admin/users",
        "/ADMIN/users",
        "/admin;x/users",
    ],
    ids=["encoded", "dot-segments", "double-slash", "upper-case", "parameter"],
)
def test_admin_only_route_cannot_be_reached_by_spelling(app, workspace, upstream, path):
    make_user(app, workspace, "sneak@example.com")

    response = proxied(app, path, _token(app, "sneak@example.com"))

    assert response.status_code == 403
    assert upstream.seen == []


def test_a_role_only_route_guards_the_app_beneath_it(app, workspace, upstream):
    make_user(app, workspace, "boss@example.com", role="admin")
    make_user(app, workspace, "clerk@example.com")

    allowed = proxied(app, "/reports/q3", _token(app, "boss@example.com"))
    refused = proxied(app, "/reports/q3", _token(app, "clerk@example.com"))

    assert allowed.status_code == 200
    assert upstream.seen[-1].path == "/reports/q3"
    assert refused.status_code == 403
    assert refused.headers["X-Portcullis-Reason"] == "role_not_allowed"
    assert len(upstream.seen) == 1


def test_websocket_upgrade_is_answered_501(app, workspace, upstream):
    make_user(app, workspace, "ws@example.com")
    headers = {**HTML, "Upgrade": "websocket", "Connection": "Upgrade"}

    response = proxied(app, "/socket", _token(app, "ws@example.com"), headers=headers)

    assert response.status_code == 501
    text = response.get_data(as_text=True)
    assert "forward-auth" in text and "nginx" in text and "Caddy" in text
    assert upstream.seen == []


# --- upstream failures ------------------------------------------------------


def test_upstream_down_is_502_page(app, workspace, caplog):
    make_user(app, workspace, "down@example.com")
    token = _token(app, "down@example.com")

    with caplog.at_level(logging.INFO, logger="idp.gateway.proxy"):
        response = proxied(app, "/", token, host=DOWN, headers=HTML)

    assert response.status_code == 502
    text = response.get_data(as_text=True)
    assert "did not answer" in text and "Traceback" not in text
    assert "proxy.upstream_unreachable" in caplog.text
    assert proxied(app, "/", token, host=DOWN).get_json()["error"] == (
        "Application unreachable"
    )


def test_upstream_that_hangs_is_504_page(app, workspace, upstream, caplog):
    make_user(app, workspace, "slow@example.com")

    with caplog.at_level(logging.INFO, logger="idp.gateway.proxy"):
        response = proxied(app, "/hang", _token(app, "slow@example.com"), headers=HTML)

    assert response.status_code == 504
    assert "took too long" in response.get_data(as_text=True)
    assert "proxy.upstream_timeout" in caplog.text


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (urllib3.exceptions.ConnectTimeoutError("connect"), 504),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read"), 504),
        (urllib3.exceptions.NewConnectionError(None, "refused"), 502),
        (urllib3.exceptions.NameResolutionError("h", None, OSError("no")), 502),
        (urllib3.exceptions.ProtocolError("aborted"), 502),
        (urllib3.exceptions.ProtocolError("aborted", TimeoutError()), 504),
        (urllib3.exceptions.SSLError("bad certificate"), 502),
        (ConnectionResetError(), 502),
    ],
    ids=[
        "connect-timeout",
        "read-timeout",
        "refused",
        "dns",
        "protocol",
        "stalled-upload",
        "tls",
        "reset",
    ],
)
def test_upstream_errors_map_to_502_or_504(app, workspace, monkeypatch, error, status):
    make_user(app, workspace, "err@example.com")
    token = _token(app, "err@example.com")

    def fail(*args: Any, **kw: Any) -> None:
        raise error

    monkeypatch.setattr(app.extensions["idp_proxy"].pool, "urlopen", fail)

    assert proxied(app, "/", token).status_code == status


def test_upstream_dying_mid_stream_just_ends_the_answer(
    app, workspace, upstream, caplog
):
    make_user(app, workspace, "cut@example.com")

    with caplog.at_level(logging.INFO, logger="idp.gateway.proxy"):
        response = proxied(app, "/die/100000", _token(app, "cut@example.com"))
        body = response.get_data()
        response.close()

    assert response.status_code == 200
    assert len(body) == 100000
    assert "proxy.upstream_broke" in caplog.text
    assert "cut=yes" in caplog.text


def test_store_down_during_check_is_503_never_forwarded(app, upstream, monkeypatch):
    from idp.services import gateway

    def down(*args: Any, **kw: Any) -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("down"))

    monkeypatch.setattr(gateway, "check", down)

    response = proxied(app, "/", "some-token")

    assert response.status_code == 503
    assert upstream.seen == []


# --- routing, start-up and logs ---------------------------------------------


def test_other_hosts_and_paths_go_to_portcullis(app, upstream):
    client = app.test_client()

    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200
    assert upstream.seen == []


def test_bad_host_header_is_400(app, upstream):
    response = proxied(app, "/", headers={"Host": "app.localhost:99999"})

    assert response.status_code == 400
    assert upstream.seen == []


def test_log_line_names_route_never_query(app, workspace, upstream, caplog):
    make_user(app, workspace, "log@example.com")
    token = _token(app, "log@example.com")

    with caplog.at_level(logging.INFO, logger="idp.gateway.proxy"):
        response = proxied(app, "/reset?token=s3cr3t-value", token)
        response.get_data()
        response.close()

    lines = [r.getMessage() for r in caplog.records if r.name == "idp.gateway.proxy"]
    assert any(
        "route=app.localhost/ " in line and "status=200" in line for line in lines
    )
    assert "s3cr3t-value" not in caplog.text


@pytest.mark.parametrize(
    ("gateway", "sessions", "message"),
    [
        pytest.param(
            {"protected_hosts": []},
            {"cookie_domain": "localhost"},
            "not in gateway.protected_hosts",
            id="not-protected",
        ),
        pytest.param(
            {"protected_hosts": [APP]},
            {"cookie_domain": ""},
            "never receive the session cookie",
            id="no-cookie",
        ),
        pytest.param(
            {"protected_hosts": [APP]},
            {"cookie_domain": "example.com"},
            "cookie_domain example.com must be the public URL's host",
            id="other-cookie-domain",
        ),
    ],
)
def test_start_up_refuses_a_route_host_it_cannot_serve(
    database_url, keys_dir, tmp_path, gateway, sessions, message
):
    values = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(tmp_path / "instance"),
        "public_url": "http://localhost",
        "gateway": {
            **gateway,
            "routes": [{"host": APP, "upstream": "http://127.0.0.1:9"}],
        },
        "sessions": sessions,
    }

    with pytest.raises(SettingsError, match=message):
        create_app(load_settings(environ={}, overrides=values))


def test_route_on_the_public_host_needs_no_cookie_domain(
    database_url, keys_dir, tmp_path
):
    values = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(tmp_path / "instance"),
        "public_url": "http://localhost",
        "gateway": {
            "routes": [
                {"host": "localhost", "path": "/app", "upstream": "http://127.0.0.1:9"}
            ]
        },
    }

    application = create_app(load_settings(environ={}, overrides=values))

    assert "idp_proxy" in application.extensions
    with application.app_context():
        db.engine.dispose()


# --- a real server: streaming and memory ------------------------------------

# The full gibibyte each way: about 13 s here, with the worker's peak
# memory up by under 2 MiB.
TRANSFER = 1024 * MiB
# Far below the transfer: a proxy that buffered would exceed it many times.
GROWTH_LIMIT = 64 * MiB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _workers(arbiter: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4, after the parenthesised command name, is the parent pid.
        if int(stat.rpartition(")")[2].split()[1]) == arbiter:
            found.append(int(entry.name))
    return found


def _memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"idp serve exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"idp serve not healthy:\n{log.read_text()}")


@dataclass
class Served:
    port: int
    pid: int
    token: str
    log: Path

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Host": f"{APP}:{self.port}",
            "Cookie": f"portcullis_session={self.token}",
            "Accept": "application/json",
            **extra,
        }


@pytest.fixture(scope="module")
def served(tmp_path_factory, keys_dir) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """One `idp serve` with one worker for the module, in front of its own
    upstream. Its store is a SQLite file whatever the run's database: the
    check per request is the same code, and streaming never touches it."""
    tmp = tmp_path_factory.mktemp("proxy-serve")
    database_url = f"sqlite:///{tmp / 'portcullis.sqlite3'}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        {
            "IDP_PUBLIC_URL": f"http://localhost:{port}",
            "IDP_DATABASE_URL": database_url,
            "IDP_INSTANCE_DIR": str(tmp / "instance"),
            "IDP_KEYS_DIR": str(keys_dir),
            "IDP_GATEWAY__PROTECTED_HOSTS": APP,
            "IDP_GATEWAY__PROXY_READ_TIMEOUT_SECONDS": "10",
            "IDP_SESSIONS__COOKIE_DOMAIN": "localhost",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    log = tmp / "serve.log"
    with _running_upstream() as upstream:
        env["IDP_GATEWAY__ROUTES"] = json.dumps(
            [{"host": APP, "upstream": upstream.url}]
        )
        process = spawn_serve(port, 1, env, log)
        try:
            _wait_healthy(port, process, log)
            workers = _workers(process.pid)
            assert len(workers) == 1, workers
            token = _member_token(database_url, keys_dir, tmp / "local")
            yield Served(port=port, pid=workers[0], token=token, log=log)
        finally:
            stop(process)


def _member_token(database_url: str, keys_dir: Path, instance: Path) -> str:
    """A session in the served database, signed in through a local app."""
    values = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(instance),
        "passwords": dict(FAST_HASH),
    }
    local = create_app(load_settings(environ={}, overrides=values))
    try:
        make_user(local, make_workspace(local), "stream@example.com")
        return _token(local, "stream@example.com")
    finally:
        with local.app_context():
            db.engine.dispose()


def _download(served: Served, path: str) -> tuple[int, int]:
    conn = served.connection()
    conn.request("GET", path, headers=served.headers())
    response = conn.getresponse()
    total = 0
    while data := response.read(MiB):
        total += len(data)
    conn.close()
    return response.status, total


def _upload(served: Served, size: int, *, chunked: bool = False) -> dict[str, Any]:
    block = bytes(MiB)

    def blocks() -> Iterator[bytes]:
        left = size
        while left > 0:
            yield block[: min(left, MiB)]
            left -= MiB

    conn = served.connection()
    headers = served.headers()
    if not chunked:
        headers["Content-Length"] = str(size)
    conn.request(
        "PUT", "/upload", body=blocks(), headers=headers, encode_chunked=chunked
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    return answer


def test_large_transfers_stream_without_growing_worker_memory(served):
    # Warm every code path once, so imports and pools are not counted.
    assert _download(served, "/download/1048576") == (200, MiB)
    _upload(served, MiB)
    baseline = _memory_kib(served.pid, "VmHWM")
    started = time.monotonic()

    assert _download(served, f"/download/{TRANSFER}") == (200, TRANSFER)
    assert _upload(served, TRANSFER) == {"received": TRANSFER, "chunked": False}

    elapsed = time.monotonic() - started
    growth = (_memory_kib(served.pid, "VmHWM") - baseline) * 1024
    # For the record (pytest -s); the bound below is on memory, not time.
    print(f"\n{TRANSFER // MiB} MiB each way: {elapsed:.1f} s, {growth / MiB:.1f} MiB")
    assert growth < GROWTH_LIMIT, f"worker peak memory grew by {growth / MiB:.0f} MiB"


def test_chunked_and_unframed_bodies_pass_through_a_real_server(served):
    answer = _upload(served, 5 * MiB + 17, chunked=True)

    assert answer == {"received": 5 * MiB + 17, "chunked": True}
    assert _download(served, f"/unframed/{3 * MiB}") == (200, 3 * MiB)


@pytest.mark.parametrize("framing", ["die", "die-chunked"], ids=["length", "chunked"])
def test_upstream_dying_mid_stream_cuts_the_client_off(served, framing):
    # A clean end here would pass a truncated file off as a whole one.
    conn = served.connection()
    conn.request("GET", f"/{framing}/{MiB}", headers=served.headers())
    response = conn.getresponse()

    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert "Traceback" not in served.log.read_text()

"""Attacks on the gateway (issue 3): forward-auth, the built-in reverse proxy
and the Security tab, tried the way an attacker would.

Each test is an attack that must hold.

We are auth.example.com, the protected app is app.example.com, the trusted
proxy is 10.0.0.5 and clients come from 203.0.113.0/24 (cases/README.md).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import IpAllowEntry, SecurityPolicy, Session, User
from tests.conftest import (
    CSRF_RE,
    PASSWORD,
    login,
    make_user,
    make_workspace,
    post_form,
)
from tests.integration.test_gateway import (
    APP,
    APP_HOST,
    CLIENT_IP,
    COOKIE,
    PROXY,
    PUBLIC,
    audit_events,
    caddy,
    issue,
    nginx,
    no_identity,
    rd_of,
    set_policy,
    verified,
)
from tests.integration.test_reverse_proxy import (
    API,
    HTML,
    Upstream,
    _running_upstream,
)

ROUTES = [
    {"host": APP_HOST, "path": "/admin", "roles": ["admin"]},
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {
        "public_url": PUBLIC,
        "gateway": {
            "trusted_proxies": [PROXY],
            "protected_hosts": [APP_HOST],
            "routes": ROUTES,
        },
    }


@pytest.fixture
def world(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    admin = make_user(app, ws, "ann@example.com", role="admin", name="Ann Admin")
    reader = make_user(app, ws, "rob@example.com", name="Rob Reader")
    return ws, admin, reader


def allowed_reader(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 200 and "X-Auth-User" in response.headers


# --- route rules: spellings an upstream reads as /admin ----------------------

# Servlet containers (Tomcat, Jetty, Spring) drop ";parameters" from each
# segment *before* they resolve dot segments and merge slashes, so all of
# these are /admin to them. nginx passes them through untouched (checked by
# hand with nginx 1.22: the upstream receives /public/..;/admin as sent).
SERVLET_SPELLINGS = [
    "/public/..;/admin",
    "/public/..;/admin/users",
    "/;/admin",
    "/.;/admin/users",
    "/x/..%3b/admin",
    "/x/%2e%2e;/admin",
    "/x;a=b/..;/admin",
]


@pytest.mark.parametrize("path", SERVLET_SPELLINGS)
def test_servlet_path_parameters_cannot_reach_an_admin_route(app, world, path):
    _, _, reader = world
    response = nginx(app, APP + path, token=issue(app, reader))
    assert response.status_code == 403, path
    assert response.headers["X-Portcullis-Reason"] == "role_not_allowed"
    no_identity(response)
    forward = caddy(app, path, token=issue(app, reader), accept="application/json")
    assert forward.status_code == 403, path


@pytest.mark.parametrize("path", ["/x#/../admin", "/public#/../../admin/users"])
def test_a_raw_fragment_in_the_original_url_does_not_hide_the_path(app, world, path):
    # nginx puts $request_uri, raw, into X-Original-URL and hands the same
    # bytes to the app; a client may put '#' in its request line (browsers
    # never do). Fail closed: refuse it, or judge every reading after it.
    _, _, reader = world
    response = nginx(app, APP + path, token=issue(app, reader))
    assert response.status_code == 403, path
    no_identity(response)


MORE_SPELLINGS = [
    "/%2561%2564min",
    "/%5cadmin",
    "/x/..%5c..%5cadmin",
    "/admin%3bx",
    "/%2e/admin",
    "/\\admin",
    "/x/%2E%2E/admin",
    "/admin%2F",
    "/ADMIN%2f..%2fADMIN",
    "/a/b/../../admin",
    "/x//..//admin",
    "/%2f%2fadmin",
    "/admin/.",
    "/admin/..",
    "/Admin;a=b/x",
    "/x/..%255c..%255cadmin",
    "/%20/../admin",
    "/x%23/../admin",
]


@pytest.mark.parametrize("path", MORE_SPELLINGS)
def test_other_spellings_of_an_admin_route_are_refused(app, world, path):
    _, admin, reader = world
    response = nginx(app, APP + path, token=issue(app, reader))
    assert response.status_code == 403, path
    assert response.headers["X-Portcullis-Reason"] == "role_not_allowed"
    no_identity(response)
    forward = caddy(app, path, token=issue(app, reader), accept="application/json")
    assert forward.status_code == 403
    no_identity(forward)
    # The admin still passes: the rule, not a parse failure, refused.
    assert nginx(app, APP + path, token=issue(app, admin)).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "APP.EXAMPLE.COM",
        "app.example.com.",
        "app.example.com:443",
        "app.example.com:8443",
    ],
)
def test_host_spellings_do_not_escape_the_route_rule(app, world, host):
    _, _, reader = world
    response = nginx(app, f"https://{host}/admin", token=issue(app, reader))
    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "role_not_allowed"
    forward = caddy(app, "/admin", host=host, token=issue(app, reader))
    assert forward.status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example@app.example.com/admin",
        "https://app.example.com\\@evil.example/admin",
        "https://app.example.com%2f@evil.example/",
        "https://app.example.com%00.evil.example/",
        "https://app.example.com%2eevil.example/",
        "https://[app.example.com]/",
        "https://app.example.com:443:80/",
        "https://app.example.com:+443/",
    ],
)
def test_forged_original_hosts_never_pass(app, world, url):
    _, admin, _ = world
    response = nginx(app, url, token=issue(app, admin))
    assert response.status_code == 403, url
    assert response.headers["X-Portcullis-Reason"] in (
        "bad_original_request",
        "host_not_protected",
    )
    no_identity(response)


# --- trust in forwarded headers ----------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Uri": "/admin", "X-Forwarded-Host": APP_HOST},
        {"X-Original-URL": f"{APP}/public"},
        {"X-Forwarded-For": PROXY},
        {"X-Real-IP": CLIENT_IP, "Forwarded": f"for={CLIENT_IP}"},
    ],
)
def test_a_client_talking_to_the_check_directly_is_never_allowed(app, world, headers):
    _, admin, _ = world
    client = app.test_client(use_cookies=False)
    sent = {**headers, "Cookie": f"{COOKIE}={issue(app, admin)}"}
    for path in ("/auth/check", "/auth/forward"):
        response = client.get(
            path, headers=sent, environ_base={"REMOTE_ADDR": "203.0.113.50"}
        )
        assert response.status_code == 403, path
        assert response.headers["X-Portcullis-Reason"] == "proxy_not_trusted"
        no_identity(response)


@pytest.mark.parametrize(
    ("forwarded", "reason"),
    [
        ("fe80::1%eth0", "ip_unknown"),
        ("203.0.113.9%eth0", "ip_unknown"),
        ("203.0.113.9:4444", "ip_unknown"),
        ("::203.0.113.9", "ip_not_allowed"),
        ("2002:cb00:7109::1", "ip_not_allowed"),
        ("0203.0.113.9", "ip_unknown"),
        ("203.0.113.9,", "ip_unknown"),
        ("203.0.113.9, unknown", "ip_unknown"),
        ("203.0.113.9 203.0.113.10", "ip_unknown"),
        ("[203.0.113.200]", "ip_not_allowed"),
        ("3405803785", "ip_unknown"),
        ("203.0.113.200, 10.0.0.5", "ip_not_allowed"),
    ],
)
def test_odd_forwarded_for_values_never_pass_an_ip_allow_list(
    app, world, forwarded, reason
):
    ws, _, reader = world
    set_policy(app, ws, ip_restriction_enabled=True, networks=["203.0.113.0/25"])
    response = nginx(app, token=issue(app, reader), client_ip=forwarded)
    assert response.status_code == 403, forwarded
    assert response.headers["X-Portcullis-Reason"] == reason
    no_identity(response)


def test_a_mapped_or_bracketed_client_is_compared_as_ipv4(app, world):
    ws, _, reader = world
    set_policy(app, ws, ip_restriction_enabled=True, networks=["203.0.113.0/25"])
    token = issue(app, reader)
    for forwarded in ("::ffff:203.0.113.9", "[::ffff:203.0.113.9]", "::FFFF:cb00:7109"):
        assert nginx(app, token=token, client_ip=forwarded).status_code == 200


def test_the_proxy_itself_is_not_the_client_when_it_forwards_nothing(app, world):
    # A trusted proxy that sends no X-Forwarded-For makes the proxy the
    # client; an allow-list naming the proxy's own network must not then
    # let every client through unless the operator meant it. Here the list
    # does not name it, so the proxy's address is refused.
    ws, _, reader = world
    set_policy(app, ws, ip_restriction_enabled=True, networks=["203.0.113.0/25"])
    response = nginx(app, token=issue(app, reader), client_ip=None)
    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "ip_not_allowed"


# --- identity headers: never on a non-200, never injectable -----------------


@pytest.mark.parametrize("verb", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_on_the_check_carry_no_identity(app, world, verb):
    _, admin, _ = world
    response = nginx(app, token=issue(app, admin), verb=verb)
    assert response.status_code == 405
    no_identity(response)
    client = app.test_client(use_cookies=False)
    forward = client.open(
        "/auth/forward",
        method=verb,
        headers={
            "X-Forwarded-Host": APP_HOST,
            "X-Forwarded-Uri": "/",
            "Cookie": f"{COOKIE}={issue(app, admin)}",
        },
        environ_base={"REMOTE_ADDR": PROXY},
    )
    assert forward.status_code == 405
    no_identity(forward)


@pytest.mark.parametrize(
    "name",
    [
        "Eve\r\nX-Auth-Role: admin",
        "Eve\nX-Auth-User: 0",
        "Eve\x01\x1badmin",
        "Ève %0D%0AX-Auth-Role: admin",
        "Eve\u2028X-Auth-Role: admin",
        "Eve\x85X-Auth-Role: admin",
    ],
)
def test_a_display_name_cannot_inject_headers(app, world, clock, name):
    from idp.models import User as UserModel

    _, _, reader = world
    with app.app_context():
        db.session.execute(
            sa.update(UserModel).where(UserModel.id == reader.id).values(full_name=name)
        )
        db.session.commit()
    response = nginx(app, token=issue(app, reader))
    assert response.status_code == 200
    assert response.headers.getlist("X-Auth-Role") == ["read_only"]
    assert response.headers.getlist("X-Auth-User") == [str(reader.id)]
    shown = response.headers["X-Auth-Name"]
    assert shown.isascii() and shown.isprintable()
    assert "\r" not in shown and "\n" not in shown
    claims = verified(app, response.headers["X-Auth-Assertion"], APP, clock).claims
    assert claims["name"] == name
    assert claims["role"] == "read_only"


@pytest.mark.parametrize(
    "accept",
    [
        "text/html;q=NaN",
        "*/*;q=1e999",
        "text/html;q=-1",
        "text/html," * 3000,
        ";;;,,,",
        "text/html;level=\x01",
        "\xff\xfe",
    ],
    ids=lambda v: repr(v[:20]),
)
def test_odd_accept_headers_never_break_the_forward_answer(app, world, accept):
    response = caddy(app, accept=accept)
    assert response.status_code in (302, 401)
    no_identity(response)
    if response.status_code == 302:
        assert response.headers["Location"].startswith(f"{PUBLIC}/login")


# --- session cookies in odd forms -------------------------------------------


def raw_cookie_check(app, cookie: str):  # type: ignore[no-untyped-def]
    """/auth/check with a Cookie header sent exactly as given."""
    client = app.test_client(use_cookies=False)
    return client.get(
        "/auth/check",
        environ_base={
            "REMOTE_ADDR": PROXY,
            "HTTP_COOKIE": cookie,
            "HTTP_X_ORIGINAL_URL": f"{APP}/dashboard",
            "HTTP_X_ORIGINAL_METHOD": "GET",
            "HTTP_X_FORWARDED_FOR": CLIENT_IP,
        },
    )


@pytest.mark.parametrize(
    "cookie",
    [
        "{c}=",
        "{c}",
        "{c}=;",
        "{c}=\x00",
        "{c}=abc\x00def",
        "{c}=\xff\xfe",
        "{c}=\u00e9\u00e9",
        "{c}=" + "A" * 20000,
        '{c}="unterminated',
        "{c}=a=b=c",
        "; ; ;",
        "=; =x",
        "{c}=%00%ff",
        "portcullis_session={t}",
        "__Secure-portcullis_session={t}",
        "__host-portcullis_session={t}",
        "x{c}={t}",
        "{c} ={t}x",
    ],
)
def test_malformed_or_misnamed_cookies_are_401_never_500(app, world, cookie):
    _, admin, _ = world
    token = issue(app, admin)
    response = raw_cookie_check(app, cookie.format(c=COOKIE, t=token))
    assert response.status_code == 401
    no_identity(response)
    assert response.headers.getlist("Set-Cookie") == []


def test_duplicate_cookies_never_mix_two_sessions(app, world):
    _, admin, reader = world
    good, other = issue(app, reader), issue(app, admin)
    first = raw_cookie_check(app, f"{COOKIE}={good}; {COOKIE}={other}")
    assert first.status_code == 200
    # Whichever copy is read, it is read whole: the identity is one person.
    assert first.headers["X-Auth-User"] in (str(reader.id), str(admin.id))
    garbage_first = raw_cookie_check(app, f"{COOKIE}=%%%; {COOKIE}={good}")
    assert garbage_first.status_code in (200, 401)
    if garbage_first.status_code != 200:
        no_identity(garbage_first)


def test_a_session_token_outside_the_cookie_is_not_read(app, world):
    _, admin, _ = world
    token = issue(app, admin)
    for sent in (
        {"Authorization": f"Bearer {token}"},
        {"X-Auth-Token": token},
        {"Cookie": f"session={token}"},
    ):
        response = nginx(app, headers=sent)
        assert response.status_code == 401
        no_identity(response)


# --- accounts that changed: revoked, disabled, deleted, demoted --------------


def test_a_session_of_a_member_reset_to_invited_is_refused(app, world):
    _, _, reader = world
    token = issue(app, reader)
    assert nginx(app, token=token).status_code == 200
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.id == reader.id).values(status="invited")
        )
        db.session.commit()
    response = nginx(app, token=token)
    assert response.status_code == 401
    no_identity(response)
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.id == reader.id).values(status="active")
        )
        db.session.commit()
    # The refusal ended the session: re-activation does not revive it.
    assert nginx(app, token=token).status_code == 401


def test_a_revoked_session_is_refused_though_its_assertion_is_cached(app, world, clock):
    _, admin, _ = world
    token = issue(app, admin)
    first = nginx(app, token=token)
    assert first.status_code == 200
    with app.app_context():
        db.session.execute(
            sa.update(Session).values(revoked_at=clock.now, revoked_reason="logout")
        )
        db.session.commit()
    response = nginx(app, token=token)
    assert response.status_code == 401
    no_identity(response)


def test_cached_assertions_are_never_shared_across_sessions_or_audiences(
    app, world, clock
):
    _, admin, reader = world
    one, two = issue(app, admin), issue(app, admin)
    a1 = nginx(app, f"{APP}/x", token=one).headers["X-Auth-Assertion"]
    a2 = nginx(app, f"{APP}/x", token=two).headers["X-Auth-Assertion"]
    a3 = nginx(app, f"{APP}:8443/x", token=one).headers["X-Auth-Assertion"]
    b1 = nginx(app, f"{APP}/x", token=issue(app, reader)).headers["X-Auth-Assertion"]
    assert len({a1, a2, a3, b1}) == 4
    assert verified(app, a3, f"{APP}:8443", clock).claims["sub"] == str(admin.id)
    assert verified(app, b1, APP, clock).claims["role"] == "read_only"
    # Reused for the same session and audience while over 30 s remain.
    assert nginx(app, f"{APP}/y", token=one).headers["X-Auth-Assertion"] == a1
    clock.advance(seconds=30)
    assert nginx(app, f"{APP}/y", token=one).headers["X-Auth-Assertion"] != a1


# --- the return URL ------------------------------------------------------------


MORE_HOSTILE = [
    "/.%2e//evil.example",
    "/%2e%2e/%2fevil.example",
    "/%252f%252fevil.example",
    "/%25252f%25252fevil.example",
    "/\u3002/evil.example",
    "https://app.example.com\u3002evil.example/",
    "https://app.example.com%E3%80%82evil.example/",
    "https://app.example.com\uff0eevil.example/",
    "https://app.example.com\uff20evil.example/",
    "https://app.example.com%23@evil.example/",
    "https://evil.example%2523@app.example.com/",
    "https://app.example.com:443\\@evil.example/",
    "http://app.example.com/",
    "https://\tapp.example.com@evil.example/",
    "https://app.example.com./../@evil.example/",
    "https:/\\evil.example/",
    "/\\\\evil.example",
    "//%5Cevil.example",
    "/%0a/evil.example",
]


def _leaves(location: str) -> bool:
    """Whether a Location sends the browser off our hosts."""
    from urllib.parse import urlsplit

    browser = location.replace("\\", "/")
    for c in "\t\r\n":
        browser = browser.replace(c, "")
    if browser.startswith("//"):
        return True
    host = urlsplit(browser).hostname
    return host is not None and host.rstrip(".") not in ("auth.example.com", APP_HOST)


def public_sign_in(client, email: str, rd: str | None) -> str:  # type: ignore[no-untyped-def]
    """Sign in at the public URL the way a browser does, with ``rd`` in the
    sign-in link and in the form; return where the browser is sent."""
    headers = {"Referer": f"{PUBLIC}/login"}
    path = "/login" + ("?rd=" + quote(rd, safe="") if rd is not None else "")
    page = client.get(path, base_url=PUBLIC)
    assert page.status_code in (200, 302)
    if page.status_code == 302:
        return page.headers["Location"]
    csrf = CSRF_RE.search(page.get_data(as_text=True)).group(1)
    form = {"email": email, "csrf_token": csrf}
    if rd is not None:
        form["rd"] = rd
    client.post(path, data=form, base_url=PUBLIC, headers=headers)
    page = client.get("/login/password", base_url=PUBLIC).get_data(as_text=True)
    csrf = CSRF_RE.search(page).group(1)
    response = client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf},
        base_url=PUBLIC,
        headers=headers,
    )
    assert response.status_code == 302, response.status_code
    return response.headers["Location"]


@pytest.mark.parametrize("value", MORE_HOSTILE, ids=lambda v: repr(v[:40]))
def test_more_hostile_return_urls_fall_back_at_login(app, world, value):
    location = public_sign_in(app.test_client(), "rob@example.com", value)
    assert not _leaves(location), location


@pytest.mark.parametrize("value", MORE_HOSTILE, ids=lambda v: repr(v[:40]))
def test_more_hostile_original_urls_never_become_a_return_url(app, world, value):
    for response in (nginx(app, value), nginx(app, APP + value)):
        assert response.status_code in (401, 403)
        no_identity(response)
        if response.status_code == 401:
            rd = rd_of(response.headers["Location"])
            assert rd is None or not _leaves(rd)


def test_signed_in_visit_to_login_honours_only_safe_rd(app, world):
    client = app.test_client()
    assert public_sign_in(client, "rob@example.com", None) == "/portal/profile"
    for value in ("//evil.example", "https://evil.example/", "/%5Cevil.example"):
        location = public_sign_in(client, "rob@example.com", value)
        assert not _leaves(location), location


# --- the built-in reverse proxy ------------------------------------------------


PROXIED = "app.localhost"


class TestReverseProxyAttacks:
    """A proxied host with an upstream for /app only, and an admin-only
    /app/admin; the public URL is http://localhost with cookie domain
    localhost, as in test_reverse_proxy."""

    @pytest.fixture
    def overrides(self, upstream: Upstream) -> dict[str, Any]:
        return {
            "gateway": {
                "protected_hosts": [PROXIED],
                "routes": [
                    {"host": PROXIED, "path": "/app", "upstream": upstream.url},
                    {
                        "host": PROXIED,
                        "path": "/app/admin",
                        "roles": ["admin"],
                        "upstream": upstream.url,
                    },
                ],
                "proxy_read_timeout_seconds": 2.0,
            },
            "sessions": {"cookie_domain": "localhost"},
        }

    @pytest.fixture
    def people(self, app):  # type: ignore[no-untyped-def]
        ws = make_workspace(app)
        admin = make_user(app, ws, "boss@example.com", role="admin")
        reader = make_user(app, ws, "clerk@example.com")
        return ws, admin, reader

    @staticmethod
    def token(app, email: str) -> str:  # type: ignore[no-untyped-def]
        client = app.test_client()
        assert login(client, email).status_code == 302
        return client.get_cookie("portcullis_session", domain="localhost").value

    @staticmethod
    def send(app, path: str, token: str | None = None, **kw: Any):  # type: ignore[no-untyped-def]
        headers = {**API, **kw.pop("headers", {})}
        if token:
            headers["Cookie"] = f"portcullis_session={token}"
        client = app.test_client(use_cookies=False)
        return client.open(path, base_url=f"http://{PROXIED}", headers=headers, **kw)

    @pytest.mark.parametrize("path", ["/app/x/..;/admin/users", "/app/;/admin"])
    def test_servlet_spellings_through_the_proxy(self, app, people, upstream, path):
        response = self.send(app, path, self.token(app, "clerk@example.com"))
        assert response.status_code == 403
        assert upstream.seen == []

    @pytest.mark.parametrize(
        "path", ["/portal/profile", "/portal/security", "/portal/users", "/login"]
    )
    def test_portcullis_pages_are_not_served_under_the_app_origin(
        self, app, people, upstream, path
    ):
        # Same-origin script of the app (or a stored XSS in it) could read
        # these pages and their CSRF tokens and act as the member at the
        # identity provider. Only the routed prefixes belong to this host.
        response = self.send(
            app, path, self.token(app, "boss@example.com"), headers=HTML
        )
        assert response.status_code == 404, response.status_code
        assert 'name="csrf_token"' not in response.get_data(as_text=True)

    def test_routed_path_still_reaches_the_app(self, app, people, upstream):
        response = self.send(app, "/app/home", self.token(app, "clerk@example.com"))
        assert response.status_code == 200
        assert upstream.seen[-1].path == "/app/home"

    @pytest.mark.parametrize(
        "path",
        [
            "/app/admin",
            "/APP/ADMIN/x",
            "/app/%61dmin",
            "/app//admin",
            "/app/x/../admin",
            "/app/admin;x",
            "/app/admin%2fx",
            "/app/x/%2e%2e/admin",
        ],
    )
    def test_admin_route_spellings_through_the_proxy(self, app, people, upstream, path):
        response = self.send(app, path, self.token(app, "clerk@example.com"))
        assert response.status_code == 403, path
        assert upstream.seen == []

    @pytest.mark.parametrize(
        "headers",
        [
            {"X_Auth_User": "00000000-0000-0000-0000-000000000000"},
            {"X-AUTH-ROLE": "admin"},
            {"x-auth-assertion": "forged"},
            {"X-Forwarded-User": "boss@example.com"},
            {"Connection": "X-Auth-Role", "X-Auth-Role": "admin"},
            {"Cookie": "__Host-portcullis_session=z; portcullis_session={t}"},
            {"Cookie": "portcullis_session={t};theme=dark;portcullis_session={t}"},
            {"Cookie": "portcullis_session =  {t} ; a=1"},
        ],
    )
    def test_nothing_of_ours_or_spoofed_reaches_the_upstream(
        self, app, people, upstream, headers
    ):
        token = self.token(app, "clerk@example.com")
        sent = {k: v.format(t=token) for k, v in headers.items()}
        client = app.test_client(use_cookies=False)
        if "Cookie" not in sent:
            sent["Cookie"] = f"portcullis_session={token}"
        response = client.get(
            "/app/x", base_url=f"http://{PROXIED}", headers={**API, **sent}
        )
        assert response.status_code == 200
        seen = upstream.seen[-1]
        assert [v for k, v in seen.headers if k.lower() == "x-auth-role"] == [
            "read_only"
        ]
        assert len([k for k, _ in seen.headers if k.lower() == "x-auth-user"]) == 1
        assert seen.header("X-Auth-Assertion") != "forged"
        assert seen.header("X-Forwarded-User") is None
        assert all(token not in v for _, v in seen.headers)
        assert "portcullis_session" not in (seen.header("Cookie") or "")

    def test_a_crlf_display_name_reaches_the_upstream_as_one_header(
        self, app, people, upstream
    ):
        _, _, reader = people
        with app.app_context():
            db.session.execute(
                sa.update(User)
                .where(User.id == reader.id)
                .values(full_name="Clerk\r\nX-Auth-Role: admin")
            )
            db.session.commit()
        response = self.send(app, "/app/x", self.token(app, "clerk@example.com"))
        assert response.status_code == 200
        seen = upstream.seen[-1]
        roles = [v for k, v in seen.headers if k.lower() == "x-auth-role"]
        assert roles == ["read_only"]
        assert seen.header("X-Auth-Name") == quote(
            "Clerk\r\nX-Auth-Role: admin", safe=" :"
        )

    def test_content_length_with_chunked_is_sent_chunked_only(
        self, app, people, upstream
    ):
        token = self.token(app, "clerk@example.com")
        body = b"5\r\nhello\r\n0\r\n\r\n"
        client = app.test_client(use_cookies=False)
        response = client.post(
            "/app/upload",
            base_url=f"http://{PROXIED}",
            data=body,
            headers={
                **API,
                "Cookie": f"portcullis_session={token}",
                "Content-Length": "3",
                "Transfer-Encoding": "chunked",
            },
            environ_overrides={"wsgi.input_terminated": True},
        )
        # Either refused, or forwarded with one framing only.
        assert response.status_code in (200, 400, 411)
        for seen in upstream.seen:
            names = [k.lower() for k, _ in seen.headers]
            assert not ("content-length" in names and "transfer-encoding" in names)

    def test_anonymous_return_url_names_the_app_only(self, app, people, upstream):
        response = self.send(app, "/app/x?y=1", headers=HTML)
        assert response.status_code == 302
        rd = rd_of(response.headers["Location"])
        assert rd == f"http://{PROXIED}/app/x?y=1"
        for host in ("evil.example", "app.localhost.evil.example"):
            client = app.test_client(use_cookies=False)
            other = client.get("/app/x", base_url=f"http://{host}", headers=HTML)
            assert "evil.example" not in other.headers.get("Location", "")


# --- the nginx example keeps our cookie from the app ---------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError("nginx exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nginx did not start")


@pytest.fixture
def nginx_cookie_strip(tmp_path: Path) -> Iterator[tuple[int, Upstream]]:
    """nginx running the cookie maps of deploy/nginx/portcullis.conf, in front
    of a recording upstream (no check: only the Cookie rewrite is tried)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("nginx is not installed (./scripts/test installs it)")
    config = (REPO / "deploy/nginx/portcullis.conf").read_text()
    maps = re.findall(
        r"^map \$(?:http_cookie|portcullis_cookie_pass\d|portcullis_app_cookie).*?^}",
        config,
        re.DOTALL | re.MULTILINE,
    )
    assert len(maps) == 4
    with _running_upstream() as upstream:
        port = _free_port()
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / name).mkdir()
        (tmp_path / "nginx.conf").write_text(
            f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {chr(10).join(maps)}
    server {{
        listen 127.0.0.1:{port};
        if ($portcullis_cookie_left) {{
            return 400;
        }}
        location / {{
            proxy_set_header Cookie $portcullis_app_cookie;
            proxy_pass {upstream.url};
        }}
    }}
}}
"""
        )
        process = subprocess.Popen(
            [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(port, process)
            yield port, upstream
        finally:
            process.terminate()
            process.wait(10)


def _cookie_through_nginx(port: int, upstream: Upstream, cookie: str) -> str | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/x", headers={"Host": APP_HOST, "Cookie": cookie})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return upstream.seen[-1].header("Cookie")


def test_nginx_example_strips_our_cookies_in_ordinary_headers(nginx_cookie_strip):
    port, upstream = nginx_cookie_strip
    sent = "theme=dark; __Secure-portcullis_session=SECRET; __Host-portcullis_flow=F"
    assert _cookie_through_nginx(port, upstream, sent) == "theme=dark"


def test_nginx_example_refuses_our_session_behind_planted_decoys(
    nginx_cookie_strip,
):
    """Three passes cut three cookies; a fourth under our names (decoys an
    app or a sibling host planted) gets the request refused, so the real
    session never reaches the app."""
    import http.client

    port, upstream = nginx_cookie_strip
    sent = (
        "portcullis_flow=1; portcullis_session=2; portcullis_flow=3; "
        "__Secure-portcullis_session=SECRET; theme=dark"
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/x", headers={"Host": APP_HOST, "Cookie": sent})
        assert conn.getresponse().status == 400
    finally:
        conn.close()
    assert upstream.seen == []


# --- the Security tab ----------------------------------------------------------


SECURITY = "/portal/security"


def _admin(app, peer: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    assert login(client, "ann@example.com").status_code == 302
    return client


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    html = client.get(SECURITY).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _policy_rows(app) -> list[Any]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = [
            tuple(str(v) for v in row)
            for row in db.session.execute(sa.select(*SecurityPolicy.__table__.columns))
        ]
        rows += [(row.network,) for row in db.session.scalars(sa.select(IpAllowEntry))]
        return sorted(rows)


SECURITY_POSTS = [
    ("/mfa", {"mfa_mode": "off"}),
    ("/idle-timeout", {"enabled": "1", "amount": "5", "unit": "minutes"}),
    ("/max-sessions", {"enabled": "1", "limit": "1"}),
    ("/relogin", {"enabled": "1", "days": "1"}),
    ("/ip", {"enabled": "1"}),
    ("/ip/entries", {"network": "0.0.0.0/0"}),
    ("/ip/my-ip", {}),
    ("/domains/entries", {"domain": "evil.example"}),
]


class TestSecurityTabAttacks:
    """The Security tab at http://localhost, behind trusted proxy 10.0.0.5."""

    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {"gateway": {"trusted_proxies": [PROXY]}}

    @pytest.mark.parametrize(
        ("path", "form"), SECURITY_POSTS, ids=[p for p, _ in SECURITY_POSTS]
    )
    def test_security_forms_refuse_missing_or_foreign_csrf_tokens(
        self, app, world, path, form
    ):
        admin = _admin(app, CLIENT_IP)
        other = _admin(app, CLIENT_IP)
        before = _policy_rows(app)
        missing = admin.post(SECURITY + path, data=form)
        foreign = admin.post(SECURITY + path, data={**form, "csrf_token": _csrf(other)})
        in_query = admin.post(
            SECURITY + path + "?csrf_token=" + _csrf(admin), data=form
        )
        assert (missing.status_code, foreign.status_code, in_query.status_code) == (
            400,
            400,
            400,
        )
        assert _policy_rows(app) == before
        # No state change by GET either.
        assert admin.get(SECURITY + path).status_code == 405

    def test_a_spoofed_forwarded_for_cannot_vouch_for_the_admin(self, app, world):
        # An untrusted peer claims an address on the list; switching the list
        # on must be judged on the peer, which the list does not hold.
        admin = _admin(app, "198.51.100.7")
        spoof = {"X-Forwarded-For": CLIENT_IP}
        token = _csrf(admin)
        assert (
            admin.post(
                SECURITY + "/ip/entries",
                data={"network": "203.0.113.0/24", "csrf_token": token},
                headers=spoof,
            ).status_code
            == 302
        )
        my_ip = admin.post(
            SECURITY + "/ip/my-ip", data={"csrf_token": token}, headers=spoof
        )
        assert my_ip.status_code == 302
        with app.app_context():
            stored = sorted(db.session.scalars(sa.select(IpAllowEntry.network)))
        # Add my IP took the socket peer, not the header.
        assert stored == ["198.51.100.7/32", "203.0.113.0/24"]
        # Removing the peer's own entry while on would lock the admin out.
        assert (
            admin.post(
                SECURITY + "/ip", data={"enabled": "1", "csrf_token": token}
            ).status_code
            == 302
        )
        with app.app_context():
            mine = db.session.scalar(
                sa.select(IpAllowEntry.id).where(
                    IpAllowEntry.network == "198.51.100.7/32"
                )
            )
        removed = admin.post(
            SECURITY + f"/ip/{mine}/remove", data={"csrf_token": token}, headers=spoof
        )
        assert removed.status_code == 409
        assert admin.get(SECURITY).status_code == 200

    @pytest.mark.parametrize(
        "network",
        [
            "fe80::1%eth0",
            "203.0.113.0/24 ",
            "203.0.113.0/33",
            "203.0.113.0/-1",
            "２０３.0.113.7",
            "203.0.113.7\x00",
            "203.0.113.0/24,0.0.0.0/0",
            "0x7f.1",
            "[::1]",
            "::ffff:203.0.113.0/97",
            "a" * 5000,
        ],
    )
    def test_odd_ip_entries_are_a_4xx_never_a_500(self, app, world, network):
        admin = _admin(app, CLIENT_IP)
        response = post_form(
            admin,
            SECURITY + "/ip/entries",
            {"network": network, "description": "x"},
            csrf_page=SECURITY,
        )
        assert response.status_code in (302, 400), response.status_code
        with app.app_context():
            stored = list(db.session.scalars(sa.select(IpAllowEntry.network)))
        for entry in stored:
            import ipaddress

            ipaddress.ip_network(entry)  # canonical, parseable

    @pytest.mark.parametrize("entry_id", ["x", "0", "%00", "../ip", "1e3", "a" * 400])
    def test_removing_odd_entry_ids_is_404_never_500(self, app, world, entry_id):
        admin = _admin(app, CLIENT_IP)
        response = post_form(
            admin,
            SECURITY + f"/ip/{quote(entry_id, safe='')}/remove",
            {},
            csrf_page=SECURITY,
        )
        assert response.status_code in (400, 404), response.status_code

    def test_read_only_member_cannot_reach_security_actions_through_odd_paths(
        self, app, world
    ):
        reader = app.test_client()
        assert login(reader, "rob@example.com").status_code == 302
        token = re.search(
            r'name="csrf_token" value="([^"]+)"',
            reader.get("/portal/profile").get_data(as_text=True),
        ).group(1)
        before = _policy_rows(app)
        for path in (
            "/portal/security/ip",
            "/portal//security/ip",
            "/portal/security/ip/",
        ):
            response = reader.post(path, data={"enabled": "1", "csrf_token": token})
            assert response.status_code in (308, 403, 404), (path, response.status_code)
        assert _policy_rows(app) == before
        denied = audit_events(app, "authz.denied")
        assert denied, "the refusal is audited"

    def test_an_unreadable_forwarded_address_cannot_switch_the_list_on(
        self, app, world
    ):
        admin = _admin(app, PROXY)
        token = _csrf(admin)
        added = admin.post(
            SECURITY + "/ip/entries",
            data={"network": "0.0.0.0/0", "csrf_token": token},
            headers={"X-Forwarded-For": CLIENT_IP},
        )
        assert added.status_code == 302
        before = _policy_rows(app)
        for forwarded in ("garbage", "", "203.0.113.9, nonsense", "fe80::1%eth0"):
            response = admin.post(
                SECURITY + "/ip",
                data={"enabled": "1", "csrf_token": token},
                headers={"X-Forwarded-For": forwarded},
            )
            assert response.status_code == 409, forwarded
        assert _policy_rows(app) == before

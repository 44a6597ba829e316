"""Forward-auth through the Flask test client: /auth/check (nginx),
/auth/forward (Caddy, Traefik), the refusal page and the JWKS.

We are auth.example.com, the protected app is app.example.com, the trusted
proxy is 10.0.0.5 and clients come from 203.0.113.0/24 (cases/README.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidClaimError, JoseError
from joserfc.jwk import KeySet

from idp.app import create_app
from idp.db import db
from idp.keys import ensure_keys, rotate_keys
from idp.settings import load_settings
from tests.conftest import CSRF_RE, FAST_HASH, PASSWORD, make_user, make_workspace
from tests.gw1 import HOSTILE_RETURN_URLS
from tests.integration.test_authorization import inline_code
from tests.integration.test_faults import database_down

PUBLIC = "https://auth.example.com"
APP_HOST = "app.example.com"
APP = f"https://{APP_HOST}"
PROXY = "10.0.0.5"
CLIENT_IP = "203.0.113.9"
COOKIE = "__Host-portcullis_session"
IDENTITY = (
    "X-Auth-User",
    "X-Auth-Email",
    "X-Auth-Name",
    "X-Auth-Role",
    "X-Auth-Workspace",
    "X-Auth-Assertion",
)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ROUTES = [
    {"host": APP_HOST, "path": "/admin", "roles": ["admin"]},
    {"host": APP_HOST, "path": "/admin/help", "roles": ["admin", "read_only"]},
]


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


# --- helpers -----------------------------------------------------------------


def issue(app, user, **facts: Any) -> str:  # type: ignore[no-untyped-def]
    """A session made by the sign-in routine's own helper; ``facts`` adjust
    its times afterwards (last_seen_at, authenticated_at)."""
    from idp.models import Session
    from idp.security import token_digest
    from idp.services import sessions
    from idp.services.context import Client

    with app.app_context():
        token = sessions.issue(
            user,
            Client(ip=CLIENT_IP),
            amr=["pwd"],
            authenticated_at=app.extensions["idp"].clock(),
        )
        db.session.commit()
        if facts:
            db.session.execute(
                sa.update(Session)
                .where(Session.token_hash == token_digest(token))
                .values(**facts)
            )
            db.session.commit()
    return token


def nginx(  # type: ignore[no-untyped-def]
    app,
    url: str | None = f"{APP}/dashboard",
    *,
    token: str | None = None,
    method: str | None = "GET",
    client_ip: str | None = CLIENT_IP,
    peer: str = PROXY,
    headers: dict[str, str] | None = None,
    verb: str = "GET",
):
    """Ask /auth/check the way the nginx snippet does."""
    sent: dict[str, str] = {}
    if url is not None:
        sent["X-Original-URL"] = url
    if method is not None:
        sent["X-Original-Method"] = method
    if client_ip is not None:
        sent["X-Forwarded-For"] = client_ip
    if token is not None:
        sent["Cookie"] = f"{COOKIE}={token}"
    sent.update(headers or {})
    proxy = app.test_client(use_cookies=False)
    return proxy.open(
        "/auth/check", method=verb, headers=sent, environ_base={"REMOTE_ADDR": peer}
    )


def caddy(  # type: ignore[no-untyped-def]
    app,
    uri: str | None = "/dashboard",
    *,
    host: str | None = APP_HOST,
    proto: str | None = "https",
    token: str | None = None,
    accept: str | None = BROWSER_ACCEPT,
    method: str | None = "GET",
    client_ip: str | None = CLIENT_IP,
    peer: str = PROXY,
    headers: dict[str, str] | None = None,
):
    """Ask /auth/forward the way Caddy's forward_auth and Traefik do."""
    sent: dict[str, str] = {}
    for name, value in (
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Method", method),
        ("X-Forwarded-For", client_ip),
        ("Accept", accept),
    ):
        if value is not None:
            sent[name] = value
    if token is not None:
        sent["Cookie"] = f"{COOKIE}={token}"
    sent.update(headers or {})
    proxy = app.test_client(use_cookies=False)
    return proxy.get("/auth/forward", headers=sent, environ_base={"REMOTE_ADDR": peer})


def no_identity(response) -> None:  # type: ignore[no-untyped-def]
    present = [name for name in IDENTITY if name in response.headers]
    assert present == [], (response.status_code, present)
    assert not any(k.lower().startswith("x-auth-") for k, _ in response.headers.items())


def no_cookie(response) -> None:  # type: ignore[no-untyped-def]
    assert response.headers.getlist("Set-Cookie") == []
    assert "cookie" not in response.headers.get("Vary", "").lower()


def jwks(app) -> KeySet:  # type: ignore[no-untyped-def]
    response = app.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    return KeySet.import_key_set(response.get_json())


def verified(app, assertion: str, audience: str, clock) -> jwt.Token:  # type: ignore[no-untyped-def]
    """What a downstream app does: verify with our JWKS, pin ES256, check
    issuer, audience and lifetime."""
    token = jwt.decode(assertion, jwks(app), algorithms=["ES256"])
    jwt.JWTClaimsRegistry(
        now=int(clock.now.timestamp()),
        iss={"essential": True, "value": PUBLIC},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    ).validate(token.claims)
    return token


def audit_events(app, action: str | None = None) -> list[Any]:  # type: ignore[no-untyped-def]
    from idp.models import AuditEvent

    with app.app_context():
        query = sa.select(AuditEvent).order_by(AuditEvent.id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        events = list(db.session.scalars(query))
        db.session.expunge_all()
        return events


def login_location(url: str, reason: str | None = None) -> str:
    location = f"{PUBLIC}/login?rd={quote(url, safe='')}"
    return location + (f"&reason={reason}" if reason else "")


def set_policy(app, ws, **values: Any) -> None:  # type: ignore[no-untyped-def]
    from idp.models import IpAllowEntry, SecurityPolicy

    networks = values.pop("networks", ())
    with app.app_context():
        policy = db.session.get(SecurityPolicy, ws.id)
        for key, value in values.items():
            setattr(policy, key, value)
        for network in networks:
            db.session.add(IpAllowEntry(workspace_id=ws.id, network=network))
        db.session.commit()


def admin_does(app, admin, ws, action, *args: Any) -> None:  # type: ignore[no-untyped-def]
    """Run a Users-tab service as ``admin`` of ``ws``, as the portal would."""
    from idp.models import Workspace
    from idp.services.context import Client, Context

    with app.test_request_context():
        ctx = Context.for_user(admin, Client(ip=CLIENT_IP))
        action(ctx, db.session.get(Workspace, ws.id), *args)


# --- allowed answers ---------------------------------------------------------


def test_check_allows_with_identity_headers_and_a_verified_assertion(app, world, clock):
    ws, admin, _ = world
    response = nginx(app, f"{APP}/dashboard?tab=1", token=issue(app, admin))
    assert response.status_code == 200
    headers = response.headers
    assert headers["X-Auth-User"] == str(admin.id)
    assert headers["X-Auth-Email"] == "ann@example.com"
    assert headers["X-Auth-Name"] == "Ann Admin"
    assert headers["X-Auth-Role"] == "admin"
    assert headers["X-Auth-Workspace"] == ws.slug
    token = verified(app, headers["X-Auth-Assertion"], APP, clock)
    now = int(clock.now.timestamp())
    claims = dict(token.claims)
    assert len(claims.pop("jti")) >= 22
    assert claims == {
        "iss": PUBLIC,
        "sub": str(admin.id),
        "aud": APP,
        "email": "ann@example.com",
        "name": "Ann Admin",
        "role": "admin",
        "workspace": ws.slug,
        "amr": ["pwd"],
        "auth_time": now,
        "iat": now,
        "exp": now + 60,
    }
    assert token.header["alg"] == "ES256"
    assert token.header["kid"] == app.extensions["idp_signer"].kid
    no_cookie(response)


def test_forward_allows_with_the_same_identity(app, world, clock):
    _, _, reader = world
    response = caddy(app, "/reports", token=issue(app, reader))
    assert response.status_code == 200
    assert response.headers["X-Auth-User"] == str(reader.id)
    assert response.headers["X-Auth-Role"] == "read_only"
    verified(app, response.headers["X-Auth-Assertion"], APP, clock)
    no_cookie(response)


@pytest.mark.parametrize(
    "host,proto,audience",
    [
        ("app.example.com", "https", APP),
        ("app.example.com:443", "https", APP),
        ("APP.Example.COM.", "https", APP),
        ("app.example.com:8443", "https", f"{APP}:8443"),
        ("app.example.com:80", "http", "http://app.example.com"),
        ("app.example.com", None, APP),
    ],
    ids=["plain", "default-port", "case-and-dot", "own-port", "http", "no-proto"],
)
def test_audience_is_the_requested_origin(app, world, clock, host, proto, audience):
    _, admin, _ = world
    response = caddy(app, host=host, proto=proto, token=issue(app, admin))
    assert response.status_code == 200
    verified(app, response.headers["X-Auth-Assertion"], audience, clock)


def test_assertion_for_one_app_fails_another_apps_audience_check(app, world, clock):
    """SECURITY 9.2.x: app B's verifier refuses what was issued for app A."""
    _, admin, _ = world
    token = issue(app, admin)
    for_a = nginx(app, f"{APP}/", token=token).headers["X-Auth-Assertion"]
    with pytest.raises(InvalidClaimError):
        verified(app, for_a, "https://other.example.com", clock)
    with pytest.raises(InvalidClaimError):
        verified(app, for_a, f"{APP}:8443", clock)
    verified(app, for_a, APP, clock)


def test_head_is_answered_and_other_methods_never_read_as_allowed(app, world):
    _, admin, _ = world
    token = issue(app, admin)
    head = nginx(app, token=token, verb="HEAD")
    assert head.status_code == 200
    assert head.headers["X-Auth-User"] == str(admin.id)
    for verb in ("OPTIONS", "POST", "PUT", "DELETE"):
        answer = nginx(app, token=token, verb=verb)
        assert answer.status_code == 405, verb
        no_identity(answer)


@pytest.mark.parametrize(
    "name,email,name_header,email_header",
    [
        ("Ann Admin", "ann@example.com", "Ann Admin", "ann@example.com"),
        ("Zoë Ångström", "zoe@example.com", "Zo%C3%AB %C3%85ngstr%C3%B6m", None),
        ("100% sure", "pct@example.com", "100%25 sure", None),
        (
            "渡辺",
            "jörg@bücher.example",
            "%E6%B8%A1%E8%BE%BA",
            "j%C3%B6rg@b%C3%BCcher.example",
        ),
        ("tab\there", "tab@example.com", "tab%09here", None),
    ],
    ids=["ascii", "accents", "percent", "cjk-and-utf8-email", "control"],
)
def test_names_and_emails_are_percent_encoded_when_not_plain_ascii(
    app, clock, name, email, name_header, email_header
):
    ws = make_workspace(app)
    user = make_user(app, ws, email, name=name)
    response = nginx(app, token=issue(app, user))
    assert response.status_code == 200
    assert response.headers["X-Auth-Name"] == name_header
    assert unquote(response.headers["X-Auth-Name"]) == name
    assert response.headers["X-Auth-Email"] == (email_header or email)
    assert unquote(response.headers["X-Auth-Email"]) == email
    claims = verified(app, response.headers["X-Auth-Assertion"], APP, clock).claims
    assert (claims["name"], claims["email"]) == (name, email)


# --- not signed in -----------------------------------------------------------


def test_anonymous_check_is_401_with_the_sign_in_url(app, world):
    url = f"{APP}/dashboard?tab=1&q=a%20b"
    response = nginx(app, url)
    assert response.status_code == 401
    assert response.headers["Location"] == login_location(url)
    assert response.headers["X-Portcullis-Reason"] == "not_signed_in"
    no_identity(response)
    no_cookie(response)


@pytest.mark.parametrize(
    "accept,status",
    [
        (BROWSER_ACCEPT, 302),
        ("text/html", 302),
        ("application/xhtml+xml,text/html;q=0.9", 302),
        ("*/*", 401),
        (None, 401),
        ("application/json", 401),
        ("application/json, text/plain, */*", 401),
        ("text/html;q=0, */*", 401),
        ("application/json, text/html;q=0.5", 401),
    ],
    ids=[
        "browser",
        "html",
        "xhtml",
        "curl",
        "none",
        "json",
        "fetch",
        "html-refused",
        "json-first",
    ],
)
def test_forward_sends_browsers_to_sign_in_and_others_get_401(
    app, world, accept, status
):
    response = caddy(app, "/dashboard?x=1", accept=accept)
    assert response.status_code == status
    assert response.headers["X-Portcullis-Reason"] == "not_signed_in"
    if status == 302:
        assert response.headers["Location"] == login_location(f"{APP}/dashboard?x=1")
    else:
        assert response.get_json() == {"error": "unauthenticated"}
        assert "Location" not in response.headers
    no_identity(response)
    no_cookie(response)


# --- GW-3: malformed cookies, expired and revoked sessions --------------------


def malformed_cookies(token: str) -> dict[str, str]:
    from idp.security import token_digest

    return {
        "percent": "%%%",
        "truncated": token[:20],
        "one-char-short": token[:-1],
        "one-char-changed": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "over-long": token * 4,
        "huge": "x" * 6000,
        "non-ascii": "é" * 43,
        "stored-hash": token_digest(token),
        "empty": "",
        "spaces": "   ",
        "nul-escape": "\\x00" + token,
    }


@pytest.mark.parametrize(
    "kind",
    list(malformed_cookies("t" * 43)),
)
def test_gw_3_malformed_cookie_is_401_without_identity(app, world, kind):
    _, admin, _ = world
    issue(app, admin)  # a live session exists; the forged cookie is not it
    value = malformed_cookies(issue(app, admin))[kind]
    before = len(audit_events(app))
    check = nginx(app, token=value)
    assert check.status_code == 401
    assert check.headers["Location"] == login_location(f"{APP}/dashboard")
    forward = caddy(app, token=value)
    assert forward.status_code == 302
    assert forward.headers["Location"] == login_location(f"{APP}/dashboard")
    api = caddy(app, token=value, accept="application/json")
    assert api.status_code == 401
    for response in (check, forward, api):
        no_identity(response)
        no_cookie(response)
    # Plain "no session" answers are not audited: they come with every
    # anonymous request and would flood the log.
    assert len(audit_events(app)) == before


def test_gw_3_absolute_lifetime_ends_at_the_exact_second(app, world, clock):
    _, admin, _ = world
    token = issue(app, admin)
    clock.advance(days=30, seconds=-1)
    assert nginx(app, token=token).status_code == 200
    clock.advance(seconds=1)
    response = nginx(app, token=token)
    assert response.status_code == 401
    no_identity(response)
    assert caddy(app, token=token).status_code == 302


def test_gw_3_idle_timeout_ends_the_session_once_and_says_why(app, world, clock):
    ws, admin, _ = world
    set_policy(app, ws, idle_timeout_seconds=600)
    fresh, stale = issue(app, admin), issue(app, admin)
    clock.advance(seconds=599)
    assert nginx(app, token=fresh).status_code == 200
    clock.advance(seconds=1)
    response = nginx(app, token=stale)
    assert response.status_code == 401
    assert response.headers["Location"] == login_location(
        f"{APP}/dashboard", "idle_timeout"
    )
    assert response.headers["X-Portcullis-Reason"] == "idle_timeout"
    no_identity(response)
    ended = audit_events(app, "session.ended")
    assert [(e.reason, e.actor_label) for e in ended] == [
        ("idle_timeout", "ann@example.com")
    ]
    # Ended now: the next request still says why, and is not audited again.
    again = caddy(app, token=stale)
    assert again.status_code == 302
    assert again.headers["Location"] == login_location(
        f"{APP}/dashboard", "idle_timeout"
    )
    assert len(audit_events(app, "session.ended")) == 1
    # The session seen at 599 s is still within its timeout.
    assert nginx(app, token=fresh).status_code == 200


@pytest.mark.parametrize(
    "reason,told",
    [("session_limit", True), ("logout", False), ("admin_revoked", False)],
)
def test_a_session_ended_elsewhere_is_explained_at_the_gateway(
    app, world, reason, told
):
    """Ended by a sign-in past the session limit (or a policy the portal
    saw first), the person reads why on the sign-in page; a sign-out or an
    admin's revocation is a plain sign-in."""
    from idp.models import Session
    from idp.security import token_digest
    from idp.services import sessions

    _, admin, _ = world
    token = issue(app, admin)
    with app.app_context():
        sessions.revoke_where(Session.token_hash == token_digest(token), reason=reason)
        db.session.commit()
    response = nginx(app, token=token)
    assert response.status_code == 401
    no_identity(response)
    expected = reason if told else "not_signed_in"
    assert response.headers["X-Portcullis-Reason"] == expected
    assert response.headers["Location"] == login_location(
        f"{APP}/dashboard", reason if told else None
    )


def test_gw_3_token_of_a_deleted_user(app, world):
    from idp.services import users

    ws, admin, reader = world
    token = issue(app, reader)
    admin_does(app, admin, ws, users.delete_user, reader.id)
    for response in (nginx(app, token=token), caddy(app, token=token, accept=None)):
        assert response.status_code == 401
        no_identity(response)


def browser_sign_in(app, email: str):  # type: ignore[no-untyped-def]
    """The real sign-in form over https; returns the browser and its token."""
    client = app.test_client()
    headers = {"Referer": f"{PUBLIC}/login"}

    def csrf(path: str) -> str:
        page = client.get(path, base_url=PUBLIC).get_data(as_text=True)
        match = CSRF_RE.search(page)
        assert match, path
        return match.group(1)

    client.post(
        "/login",
        data={"email": email, "csrf_token": csrf("/login")},
        base_url=PUBLIC,
        headers=headers,
    )
    response = client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf("/login/password")},
        base_url=PUBLIC,
        headers=headers,
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return client, client.get_cookie(COOKIE, domain="auth.example.com").value


def test_logout_is_refused_on_the_very_next_check(app, world):
    browser, token = browser_sign_in(app, "rob@example.com")
    assert nginx(app, token=token).status_code == 200
    page = browser.get("/portal/profile", base_url=PUBLIC).get_data(as_text=True)
    csrf = CSRF_RE.search(page).group(1)
    logout = browser.post(
        "/logout",
        data={"csrf_token": csrf},
        base_url=PUBLIC,
        headers={"Referer": f"{PUBLIC}/portal/profile"},
    )
    assert logout.status_code == 302
    for response in (nginx(app, token=token), caddy(app, token=token)):
        assert response.status_code in (401, 302)
        no_identity(response)


def test_disabled_user_is_refused_on_the_very_next_check_and_stays_out(app, world):
    """ACC-1 at the gateway: disabling ends the session; enabling again does
    not bring it back (SECURITY 7.4.1)."""
    from idp.services import users

    ws, admin, reader = world
    token = issue(app, reader)
    assert nginx(app, token=token).status_code == 200
    admin_does(app, admin, ws, users.disable_user, reader.id)
    response = nginx(app, token=token)
    assert response.status_code == 401
    no_identity(response)
    admin_does(app, admin, ws, users.enable_user, reader.id)
    assert nginx(app, token=token).status_code == 401
    assert caddy(app, token=token).status_code == 302


def test_disabled_account_with_a_live_session_is_refused(app, world):
    # A status set by other means than the Users tab (SCIM, a script): the
    # account-state policy still refuses, whatever the session says.
    from idp.models import User

    _, _, reader = world
    token = issue(app, reader)
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.id == reader.id).values(status="disabled")
        )
        db.session.commit()
    for response in (nginx(app, token=token), caddy(app, token=token)):
        assert response.status_code in (302, 401, 403)
        no_identity(response)
    assert nginx(app, token=token).status_code in (401, 403)


def test_role_change_applies_to_the_next_check_and_never_comes_from_cache(
    app, world, clock
):
    """SECURITY 8.3.2 and ACC-1's role change: the next admin-only request is
    refused, and the assertion says the new role at once."""
    from idp.services import users

    ws, admin, _ = world
    other = make_user(app, ws, "amy@example.com", role="admin")
    token = issue(app, other)
    before = nginx(app, f"{APP}/admin", token=token)
    assert before.status_code == 200
    admin_does(app, admin, ws, users.change_role, other.id, "read_only")
    refused = nginx(app, f"{APP}/admin", token=token)
    assert refused.status_code == 403
    assert refused.headers["X-Portcullis-Reason"] == "role_not_allowed"
    no_identity(refused)
    elsewhere = nginx(app, f"{APP}/admin/help", token=token)
    assert elsewhere.status_code == 200
    assert elsewhere.headers["X-Auth-Role"] == "read_only"
    claims = verified(app, elsewhere.headers["X-Auth-Assertion"], APP, clock).claims
    assert claims["role"] == "read_only"


# --- route rules -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/admin/",
        "/admin/users?x=1",
        "/ADMIN",
        "/Admin/users",
        "/%61dmin",
        "/%2561dmin",
        "//admin",
        "///admin/x",
        "/./admin",
        "/x/../admin",
        "/x/%2e%2e/admin",
        "/x/%252e%252e/admin",
        "/admin;jsessionid=1",
        "/admin;/users",
        "/admin%2fusers",
        "/admin%5cusers",
        "/admin/help/../settings",
        "/admin/help/..%2f..%2fadmin",
        "/admin/help/%2e%2e/",
        "/public/..%5cadmin",
    ],
)
def test_read_only_member_is_refused_an_admin_route_however_spelt(app, world, path):
    _, admin, reader = world
    response = nginx(app, APP + path, token=issue(app, reader))
    assert response.status_code == 403, path
    assert response.headers["X-Portcullis-Reason"] == "role_not_allowed"
    no_identity(response)
    forward = caddy(app, path, token=issue(app, reader))
    assert forward.status_code == 403
    assert "does not give access" in forward.get_data(as_text=True)
    assert nginx(app, APP + path, token=issue(app, admin)).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/administrator",
        "/adminx",
        "/admin-docs/x",
        "/admin/help",
        "/admin/help/",
        "/admin/help/faq?x=1",
        "/public/admin",
        "/?next=/admin",
        "/reports/admin/help/../x",
    ],
)
def test_read_only_member_passes_where_no_admin_rule_applies(app, world, path):
    _, _, reader = world
    response = nginx(app, APP + path, token=issue(app, reader))
    assert response.status_code == 200, path
    assert response.headers["X-Auth-Role"] == "read_only"


def test_role_refusal_is_audited_with_who_and_where(app, world):
    ws, _, reader = world
    nginx(app, f"{APP}/admin/users", token=issue(app, reader), method="DELETE")
    (event,) = audit_events(app, "gateway.denied")
    assert (event.reason, event.outcome) == ("role_not_allowed", "denied")
    assert (event.actor_id, event.workspace_id) == (str(reader.id), ws.id)
    assert event.details == {
        "host": APP_HOST,
        "path": "/admin/users",
        "method": "DELETE",
    }
    assert (event.client_ip, event.peer_ip) == (CLIENT_IP, PROXY)


def test_route_rules_follow_the_longest_prefix(app):
    from idp.services.gateway import route_for

    with app.app_context():
        assert route_for(APP_HOST, "/admin/help/x")["roles"] == ["admin", "read_only"]
        assert route_for(APP_HOST, "/admin/helpdesk")["roles"] == ["admin"]
        assert route_for(APP_HOST, "/administrator") is None
        assert route_for("other.example.com", "/admin") is None


# --- refusals: hosts, unreadable requests, the IP allow-list -----------------


@pytest.mark.parametrize(
    "url",
    [
        "https://other.example.com/",
        "https://evil.example/admin",
        "https://app.example.com.evil.example/",
        "https://xn--pp-8kc.example.com/",
    ],
)
def test_host_not_protected_is_refused_and_audited(app, world, url):
    _, admin, _ = world
    response = nginx(app, url, token=issue(app, admin))
    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "host_not_protected"
    assert "Location" not in response.headers
    no_identity(response)
    (event,) = audit_events(app, "gateway.denied")
    assert event.reason == "host_not_protected"
    assert event.details["host"] == urlsplit(url).hostname
    forward = caddy(app, host=urlsplit(url).netloc, token=issue(app, admin))
    assert forward.status_code == 403
    assert "not one that Portcullis protects" in forward.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Original-URL": None},
        {"X-Original-URL": "/dashboard"},
        {"X-Original-URL": "app.example.com/dashboard"},
        {"X-Original-URL": "https://app.example.com:0/"},
        {"X-Original-URL": "https://app.example.com:x/"},
        {"X-Original-URL": "https://[::1/"},
        {"X-Original-URL": "https://app.example.com@evil.example/"},
        {"X-Original-URL": "https://app.example.com/a b"},
        {"X-Original-URL": "https://app.example.com/" + "a" * 9000},
        {"X-Original-Method": "GET /admin"},
        {"X-Original-Method": "G\x01T"},
    ],
    ids=[
        "missing",
        "relative",
        "no-scheme",
        "port-0",
        "port-text",
        "bracket",
        "userinfo",
        "space",
        "too-long",
        "method-with-space",
        "method-control",
    ],
)
def test_a_trusted_proxy_that_sends_no_readable_request_is_refused(app, world, headers):
    """Fail closed: without the request, route rules cannot be applied."""
    _, admin, _ = world
    url = headers.get("X-Original-URL", f"{APP}/admin")
    method = headers.get("X-Original-Method", "GET")
    response = nginx(app, url, method=method, token=issue(app, admin))
    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "bad_original_request"
    no_identity(response)
    (event,) = audit_events(app, "gateway.denied")
    assert event.reason == "bad_original_request"


@pytest.mark.parametrize(
    "missing", ["X-Forwarded-Host", "X-Forwarded-Uri"], ids=["host", "uri"]
)
def test_forward_without_the_request_parts_is_refused(app, world, missing):
    _, admin, _ = world
    response = caddy(
        app,
        **{"host" if missing == "X-Forwarded-Host" else "uri": None},
        token=issue(app, admin),
    )
    assert response.status_code == 403
    assert response.headers["X-Portcullis-Reason"] == "bad_original_request"
    no_identity(response)


def test_a_check_from_an_untrusted_peer_is_refused(app, world, caplog):
    """Only a trusted proxy may ask: an untrusted caller's X-Original-URL and
    X-Forwarded-* cannot be believed, and without them no host or route
    rule could apply. Refused with a reason the operator can act on,
    whatever session it carries, with its forwarded headers ignored."""
    _, admin, _ = world
    token = issue(app, admin)
    spoofed = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Uri": "/x",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-For": "198.51.100.1",
    }
    for response in (
        nginx(app, "https://evil.example/x", token=token, peer="203.0.113.50"),
        caddy(app, host="evil.example", token=token, peer="203.0.113.50"),
        nginx(app, None, token=token, peer="203.0.113.50", headers=spoofed),
        nginx(app, "https://app.example.com/x", peer="203.0.113.50"),
    ):
        assert response.status_code == 403
        assert response.headers["X-Portcullis-Reason"] == "proxy_not_trusted"
        assert "Location" not in response.headers
        no_identity(response)
    events = audit_events(app, "gateway.denied")
    assert [e.reason for e in events] == ["proxy_not_trusted"] * 4
    assert {e.client_ip for e in events} == {"203.0.113.50"}
    assert "gateway.untrusted_peer peer=203.0.113.50" in caplog.text


@pytest.mark.parametrize("peer", [PROXY, f"::ffff:{PROXY}"], ids=["v4", "v4-mapped-v6"])
def test_trusted_proxy_is_recognised_in_either_spelling(app, world, peer):
    _, _, reader = world
    response = nginx(app, f"{APP}/admin", token=issue(app, reader), peer=peer)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "peer,forwarded,status,reason,client_ip",
    [
        (PROXY, "203.0.113.9", 200, None, "203.0.113.9"),
        (PROXY, "203.0.113.9, 203.0.113.200", 403, "ip_not_allowed", "203.0.113.200"),
        (PROXY, "a", 403, "ip_unknown", None),
        (PROXY, "999.1.1.1", 403, "ip_unknown", None),
        (PROXY, "", 403, "ip_unknown", None),
        (PROXY, "::ffff:203.0.113.9", 200, None, "203.0.113.9"),
    ],
    ids=[
        "allowed",
        "right-most",
        "garbage",
        "bad-octet",
        "empty",
        "v4-mapped",
    ],
)
def test_gw_2_forwarded_for_spoofing_at_the_check(
    app, world, peer, forwarded, status, reason, client_ip
):
    ws, _, reader = world
    set_policy(app, ws, ip_restriction_enabled=True, networks=["203.0.113.0/25"])
    token = issue(app, reader)
    response = nginx(app, token=token, peer=peer, client_ip=forwarded)
    assert response.status_code == status
    if reason is None:
        return
    assert response.headers["X-Portcullis-Reason"] == reason
    no_identity(response)
    (event,) = audit_events(app, "access.denied")
    assert (event.reason, event.client_ip, event.peer_ip) == (reason, client_ip, peer)
    # Not ended: back on an allowed network, the member passes again.
    assert nginx(app, token=token).status_code == 200


# --- GW-1: the return URL ----------------------------------------------------


def rd_of(location: str) -> str | None:
    values = parse_qs(urlsplit(location).query).get("rd")
    return values[0] if values else None


def sendable(value: str | None) -> bool:
    # A header cannot carry CR or LF; no proxy can send those.
    return bool(value) and "\r" not in value and "\n" not in value


def judge_sign_in_url(response, allowed: set[str]) -> None:  # type: ignore[no-untyped-def]
    """A hostile original gives a refusal, or a sign-in URL whose rd is
    absent or one of ``allowed`` (same-host URLs the request really named)."""
    assert response.status_code in (302, 401, 403), response.status_code
    no_identity(response)
    if response.status_code == 403:
        assert "Location" not in response.headers
        return
    location = response.headers["Location"]
    assert location.startswith(f"{PUBLIC}/login")
    rd = rd_of(location)
    assert rd is None or rd in allowed, rd


HOSTILE = [value for value in HOSTILE_RETURN_URLS if sendable(value)]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:40]))
def test_gw_1_hostile_original_url_never_becomes_a_return_url(app, world, value):
    judge_sign_in_url(nginx(app, value), set())
    # The same value as the path of a protected app: kept only as that
    # app's own URL, exactly as the browser asked for it.
    if value.startswith("/"):
        response = nginx(app, APP + value)
        judge_sign_in_url(response, {APP + value})


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:40]))
def test_gw_1_hostile_forwarded_parts_never_become_a_return_url(app, world, value):
    judge_sign_in_url(caddy(app, host=value), set())
    judge_sign_in_url(caddy(app, proto=value), set())
    judge_sign_in_url(caddy(app, uri=value), {APP + value})


def test_gw_1_controls_are_kept_exactly(app, world):
    url = f"{APP}/x"
    assert nginx(app, url).headers["Location"] == login_location(url)
    response = caddy(app, "/dashboard?x=1")
    assert rd_of(response.headers["Location"]) == f"{APP}/dashboard?x=1"


def follow_to_sign_in(app, location: str) -> str:  # type: ignore[no-untyped-def]
    """Open the sign-in URL the gateway gave, sign in, return where the
    browser is sent."""
    client = app.test_client()
    headers = {"Referer": f"{PUBLIC}/login"}
    path = location.removeprefix(PUBLIC)
    page = client.get(path, base_url=PUBLIC)
    assert page.status_code == 200
    csrf = CSRF_RE.search(page.get_data(as_text=True)).group(1)
    form = {"email": "rob@example.com", "csrf_token": csrf}
    rd = rd_of(location)
    if rd is not None:
        form["rd"] = rd
    client.post("/login", data=form, base_url=PUBLIC, headers=headers)
    page = client.get("/login/password", base_url=PUBLIC).get_data(as_text=True)
    csrf = CSRF_RE.search(page).group(1)
    done = client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf},
        base_url=PUBLIC,
        headers=headers,
    )
    assert done.status_code == 302
    return done.headers["Location"]


@pytest.mark.parametrize(
    "path",
    ["/x", "/dashboard?x=1", "//evil.example", "/\\evil.example", "/%5Cevil.example"],
)
def test_gw_1_after_sign_in_the_browser_lands_on_a_protected_host(app, world, path):
    response = caddy(app, path)
    assert response.status_code == 302
    landing = follow_to_sign_in(app, response.headers["Location"])
    rd = rd_of(response.headers["Location"])
    if rd is None:
        assert landing == "/portal/profile"
    else:
        # Judged again at /login: kept exactly, and on the app's host.
        assert landing == rd == APP + path
        assert urlsplit(landing.replace("\\", "/")).hostname == APP_HOST


# --- who is audited ----------------------------------------------------------


def test_refusals_are_audited_and_plain_no_session_answers_are_not(app, world, clock):
    """Every 403 writes one event with its reason code; a 401 for a missing,
    unknown or dead session writes none. The one 401 that is audited is the
    one that ends a session (idle timeout, forced re-login), once."""
    ws, _, reader = world
    set_policy(app, ws, idle_timeout_seconds=600)
    stale = issue(app, reader, last_seen_at=clock.now - timedelta(seconds=600))
    live = issue(app, reader)
    cases = [
        (lambda: nginx(app), 401, None),
        (lambda: nginx(app, token="%%%"), 401, None),
        (lambda: caddy(app, token="x" * 43), 302, None),
        (lambda: nginx(app, token=stale), 401, ("session.ended", "idle_timeout")),
        (lambda: nginx(app, token=stale), 401, None),
        (
            lambda: nginx(app, f"{APP}/admin", token=live),
            403,
            ("gateway.denied", "role_not_allowed"),
        ),
        (
            lambda: nginx(app, "https://evil.example/"),
            403,
            ("gateway.denied", "host_not_protected"),
        ),
        (
            lambda: caddy(app, "/x", host="evil.example"),
            403,
            ("gateway.denied", "host_not_protected"),
        ),
        (
            lambda: nginx(app, "/relative"),
            403,
            ("gateway.denied", "bad_original_request"),
        ),
        (lambda: nginx(app, token=live), 200, None),
    ]
    for ask, status, event in cases:
        before = len(audit_events(app))
        response = ask()
        assert response.status_code == status
        events = audit_events(app)[before:]
        assert [(e.action, e.reason) for e in events] == ([event] if event else [])


# --- faults and the hot path -------------------------------------------------


def test_database_down_is_503_never_an_allowed_answer(app, world, caplog):
    _, admin, _ = world
    token = issue(app, admin)
    assert nginx(app, token=token).status_code == 200  # the assertion is cached
    caplog.set_level(logging.ERROR)
    with database_down(app):
        answers = [
            nginx(app, token=token),
            caddy(app, token=token),
            caddy(app, token=token, accept="application/json"),
            nginx(app, "https://evil.example/", token=token),
            nginx(app, "/relative", token=token),
        ]
    for response in answers:
        assert response.status_code == 503
        no_identity(response)
        assert response.headers.getlist("Set-Cookie") == []
    assert "store.unavailable" in caplog.text
    assert nginx(app, token=token).status_code == 200


class Statements:
    """Counts the SQL statements the app sends, by their first word."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, conn, cursor, statement, parameters, context, many) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(statement.split(None, 1)[0].upper())

    def count(self, word: str) -> int:
        return self.seen.count(word)


@contextmanager
def counting(app) -> Iterator[Statements]:  # type: ignore[no-untyped-def]
    statements = Statements()
    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", statements)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", statements)


def test_hot_path_reads_once_and_writes_only_last_seen_once_a_minute(app, world, clock):
    ws, admin, _ = world
    token = issue(app, admin)
    nginx(app, token=token)  # warm: the assertion and any lazy setup
    with counting(app) as seen:
        assert nginx(app, token=token).status_code == 200
    assert seen.seen == ["SELECT"]

    clock.advance(seconds=60)
    with counting(app) as seen:
        assert nginx(app, token=token).status_code == 200
    assert seen.count("SELECT") == 1
    assert seen.count("UPDATE") == 2  # the session's and the user's last seen
    assert seen.count("INSERT") == seen.count("DELETE") == 0

    clock.advance(seconds=59)
    with counting(app) as seen:
        assert caddy(app, token=token).status_code == 200
    assert seen.seen == ["SELECT"]

    # The allow-list comes in the same query as the session and the policy.
    set_policy(app, ws, ip_restriction_enabled=True, networks=["203.0.113.0/24"])
    with counting(app) as seen:
        assert nginx(app, token=token).status_code == 200
    assert seen.seen == ["SELECT"]


def test_check_endpoints_never_start_a_flask_session(app, world):
    _, admin, reader = world
    flow = {"Cookie": "__Host-portcullis_flow=garbage; other=1"}
    answers = [
        nginx(app, token=issue(app, admin), headers={}),
        nginx(app),
        nginx(app, f"{APP}/admin", token=issue(app, reader)),
        caddy(app),
        caddy(app, "/admin", token=issue(app, reader)),
        app.test_client().get("/auth/denied?reason=ip_not_allowed", headers=flow),
        app.test_client().get("/.well-known/jwks.json", headers=flow),
    ]
    for response in answers:
        no_cookie(response)
        assert response.headers["Cache-Control"] in ("no-store", "public, max-age=300")


# --- spoofed identity headers ------------------------------------------------

SPOOFED = {
    "X-Auth-User": "00000000-0000-0000-0000-000000000001",
    "X-Auth-Email": "ann@example.com",
    "X-Auth-Role": "admin",
    "X-Auth-Workspace": "acme",
    "X-Auth-Assertion": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "X-Auth-Name": "Ann",
}


def test_client_sent_identity_headers_have_no_effect(app, world, clock):
    _, _, reader = world
    anonymous = [nginx(app, headers=SPOOFED), caddy(app, headers=SPOOFED)]
    for response in anonymous:
        assert response.status_code in (401, 302)
        no_identity(response)
    token = issue(app, reader)
    refused = nginx(app, f"{APP}/admin", token=token, headers=SPOOFED)
    assert refused.status_code == 403
    no_identity(refused)
    allowed = caddy(app, "/reports", token=token, headers=SPOOFED)
    assert allowed.status_code == 200
    assert allowed.headers["X-Auth-User"] == str(reader.id)
    assert allowed.headers["X-Auth-Role"] == "read_only"
    assert allowed.headers["X-Auth-Assertion"] != SPOOFED["X-Auth-Assertion"]
    verified(app, allowed.headers["X-Auth-Assertion"], APP, clock)


# --- the assertion cache -----------------------------------------------------


def test_assertion_is_reused_while_more_than_30_seconds_remain(app, world, clock):
    _, admin, _ = world
    token = issue(app, admin)

    def assertion(url: str = f"{APP}/a") -> str:
        return nginx(app, url, token=token).headers["X-Auth-Assertion"]

    first = assertion()
    clock.advance(seconds=29)
    assert assertion(f"{APP}/b?other=path") == first
    clock.advance(seconds=1)
    renewed = assertion()
    assert renewed != first
    claims = verified(app, renewed, APP, clock).claims
    assert claims["iat"] == int(clock.now.timestamp())
    # Another audience, another assertion.
    assert assertion(f"{APP}:8443/a") != renewed
    # Another session of the same person, another assertion.
    other = nginx(app, f"{APP}/a", token=issue(app, admin))
    assert other.headers["X-Auth-Assertion"] != renewed


def test_name_change_is_never_served_from_the_cache(app, world, clock):
    from idp.models import User

    _, admin, _ = world
    token = issue(app, admin)
    first = nginx(app, token=token).headers["X-Auth-Assertion"]
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.id == admin.id).values(full_name="Ann Renamed")
        )
        db.session.commit()
    response = nginx(app, token=token)
    assert response.headers["X-Auth-Name"] == "Ann Renamed"
    assert response.headers["X-Auth-Assertion"] != first
    claims = verified(app, response.headers["X-Auth-Assertion"], APP, clock).claims
    assert claims["name"] == "Ann Renamed"


# --- keys --------------------------------------------------------------------


@pytest.fixture
def own_keys(tmp_path: Path) -> Path:
    folder = tmp_path / "own-keys"
    ensure_keys(folder)
    return folder


def app_with_keys(database_url: str, keys: Path, tmp_path: Path, clock, n: int):  # type: ignore[no-untyped-def]
    application = create_app(
        load_settings(
            environ={},
            overrides={
                "database_url": database_url,
                "keys_dir": str(keys),
                "instance_dir": str(tmp_path / f"instance-{n}"),
                "public_url": PUBLIC,
                "passwords": dict(FAST_HASH),
                "gateway": {"trusted_proxies": [PROXY], "protected_hosts": [APP_HOST]},
            },
        ),
        clock=clock,
    )
    application.config["TESTING"] = True
    return application


def test_after_rotation_the_new_key_signs_and_the_old_one_still_verifies(
    database_url, own_keys, tmp_path, clock
):
    before = app_with_keys(database_url, own_keys, tmp_path, clock, 1)
    ws = make_workspace(before)
    user = make_user(before, ws, "ann@example.com")
    token = issue(before, user)
    old = nginx(before, token=token).headers["X-Auth-Assertion"]

    rotate_keys(own_keys)
    after = app_with_keys(database_url, own_keys, tmp_path, clock, 2)
    new = nginx(after, token=token).headers["X-Auth-Assertion"]
    published = [
        key["kid"]
        for key in after.test_client().get("/.well-known/jwks.json").get_json()["keys"]
    ]
    old_kid = jwt.decode(old, jwks(before)).header["kid"]
    new_kid = jwt.decode(new, jwks(after)).header["kid"]
    assert old_kid != new_kid
    assert published == [new_kid, old_kid]
    # Both verify against the JWKS served after the rotation.
    verified(after, old, APP, clock)
    verified(after, new, APP, clock)
    # The JWKS before the rotation does not know the new key.
    with pytest.raises(JoseError):
        jwt.decode(new, jwks(before), algorithms=["ES256"])
    for application in (before, after):
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


def test_jwks_publishes_public_keys_only(app):
    response = app.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    keys = response.get_json()["keys"]
    assert keys
    for key in keys:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == (
            "EC",
            "P-256",
            "sig",
            "ES256",
        )


def test_a_forged_or_tampered_assertion_does_not_verify(app, world, clock):
    _, admin, _ = world
    assertion = nginx(app, token=issue(app, admin)).headers["X-Auth-Assertion"]
    head, _, signature = assertion.split(".")
    other = nginx(app, token=issue(app, admin), headers={}).headers["X-Auth-Assertion"]
    swapped = ".".join([head, other.split(".")[1], signature])
    with pytest.raises(BadSignatureError):
        verified(app, swapped, APP, clock)
    with pytest.raises(JoseError):
        verified(app, SPOOFED["X-Auth-Assertion"], APP, clock)


# --- the refusal page --------------------------------------------------------


@pytest.mark.parametrize(
    "reason,shown",
    [
        ("ip_not_allowed", "ip_not_allowed"),
        ("role_not_allowed", "role_not_allowed"),
        ("<script>alert(1)</script>", "denied"),
        ("mfa_required\r\nSet-Cookie: x=1", "denied"),
        ("", "denied"),
    ],
    ids=["ip", "role", "markup", "crlf", "empty"],
)
def test_denied_page_explains_known_reasons_only(app, reason, shown):
    response = app.test_client().get("/auth/denied", query_string={"reason": reason})
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Reason"] == shown
    html = response.get_data(as_text=True)
    assert f"<code>{shown}</code>" in html
    assert "<script>" not in html
    assert inline_code(html) == []
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and f"style-src {PUBLIC}" in csp
    assert f'href="{PUBLIC}/portal/profile"' in html
    no_identity(response)
    no_cookie(response)


def test_forward_refusal_page_says_why_with_our_assets(app, world):
    _, _, reader = world
    response = caddy(app, "/admin", token=issue(app, reader))
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "Your role in this workspace does not give access" in html
    assert f'href="{PUBLIC}/static/app.css"' in html
    assert inline_code(html) == []


# --- odd input never breaks the check ----------------------------------------

ODD_URLS = [
    "https://",
    "https:///",
    "https://:443/",
    "https://app.example.com:/",
    "https://app.example.com:65536/",
    "https://[::1]:8080/",
    "https://[fe80::1%25eth0]/",
    "https://app.example.com/%",
    "https://app.example.com/%zz",
    "https://app.example.com/%00",
    "https://app.example.com/\x00",
    "https://app.example.com/\x7f",
    "https://app.example.com/é",
    "https://app.example.com/\u2028",
    "https://app.example.com/?" + "&" * 5000,
    "https://app.example.com/#frag",
    "https://app.example.com/..",
    "https://app.example.com/" + "%2e%2e/" * 200,
    "https://app.example.com/" + "/" * 3000,
    "https://app.example.com/;",
    "http://app.example.com/",
    "https://app.example.com:443@/",
    "https://@app.example.com/",
    "https://app.example.com./",
    "https://app.example.com../",
    "https://.app.example.com/",
    "https://app_example.com/",
    "https://%61pp.example.com/",
    "https://app.example.com\\/",
    "\\\\app.example.com/",
    "https:app.example.com",
    "//app.example.com/",
    "ws://app.example.com/",
    "HTTPS://APP.EXAMPLE.COM/X",
    "ht\ttps://app.example.com/",
    "https://app.example.com/\ud800",
    "\ufeffhttps://app.example.com/",
]


@pytest.mark.parametrize("url", ODD_URLS, ids=lambda u: repr(u[:40]))
def test_odd_original_urls_never_break_the_check(app, world, url):
    _, admin, _ = world
    token = issue(app, admin)
    for response in (nginx(app, url), nginx(app, url, token=token)):
        assert response.status_code in (200, 401, 403), response.status_code
        if response.status_code != 200:
            no_identity(response)
        else:
            assert urlsplit(url).hostname.removesuffix(".") == APP_HOST


def test_random_original_requests_never_break_the_check(app, world):
    """A seeded fuzz of X-Original-URL and the X-Forwarded parts."""
    _, admin, _ = world
    token = issue(app, admin)
    rng = random.Random(20240503)
    pieces = [
        "https://",
        "http://",
        "app.example.com",
        "evil.example",
        ":",
        "@",
        "/",
        "\\",
        "%",
        "%2f",
        "%5c",
        "%00",
        "?",
        "#",
        "[",
        "]",
        "::1",
        "..",
        ".",
        ";",
        "é",
        "\x7f",
        "\t",
        "admin",
        "443",
        "65536",
        "-",
        "_",
        "~",
        "*",
        "'",
        '"',
    ]
    for _ in range(300):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for response in (
            nginx(app, value, token=token if rng.random() < 0.5 else None),
            caddy(
                app,
                uri=rng.choice([value, "/" + value]),
                host=rng.choice([APP_HOST, value]),
                proto=rng.choice(["https", value]),
                token=token,
            ),
        ):
            assert response.status_code in (200, 302, 401, 403), repr(value)
            if response.status_code != 200:
                no_identity(response)

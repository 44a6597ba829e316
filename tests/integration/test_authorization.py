"""Who may reach what (ASVS 8.2.1, 8.2.2, 8.2.3, 6.3.4, 3.5, 3.3).

ROUTES is the checked-in table: every route of the app, for each method it
takes, with the answer expected for an anonymous visitor, a Read Only member
and an Admin. A route added to the app without a line here fails
``test_every_route_is_classified``, so nothing becomes reachable unreviewed.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from tests.conftest import (
    CSRF_RE,
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    signed_in,
)

# Paths anyone may reach without a session: signing in and out, the links
# that arrive by mail, health probes and static files. Everything else needs
# a session; the table below says which of those need an admin.
PUBLIC_PREFIXES = (
    "/login",
    "/logout",
    "/invite",
    "/reset",
    "/email/confirm",
    "/healthz",
    "/readyz",
    "/static/",
    # Forward-auth: proxies ask without a session of their own; the answer
    # (401, 403 or 200 with identity) is about the cookie they pass on.
    "/auth/check",
    "/auth/forward",
    "/auth/denied",
    "/.well-known/jwks.json",
    # Enterprise SSO: our SAML metadata, the start of a sign-in at the
    # company IdP and its answer, which come before any session.
    "/sso/",
)

# Answers: a status ("200", "400", ...), "302 <path>" for a redirect to that
# path, or "login" for the sign-in redirect that carries the page in `rd`.
LOGIN = "login"


@dataclass(frozen=True)
class Access:
    anonymous: str
    read_only: str
    admin: str
    # Form fields sent with the POST (the CSRF token is added).
    form: dict[str, str] = field(default_factory=dict)
    # What a 403 for a Read Only member records in the audit log (an
    # authz.denied names the member who tried).
    event: tuple[str, str] = ("authz.denied", "admin_required")


NEW_PASSWORD = "a different long passphrase"

ROUTES: dict[tuple[str, str], Access] = {
    # --- public ------------------------------------------------------------
    ("GET", "/static/<path:filename>"): Access("200", "200", "200"),
    ("GET", "/"): Access(
        "302 /portal/profile", "302 /portal/profile", "302 /portal/profile"
    ),
    ("GET", "/healthz"): Access("200", "200", "200"),
    # The world's workspace has no SSO connection: the same 404 for all.
    ("GET", "/sso/saml/<slug>/metadata"): Access("404", "404", "404"),
    ("GET", "/sso/<protocol>/<slug>/start"): Access("404", "404", "404"),
    ("POST", "/sso/saml/<slug>/acs"): Access("404", "404", "404"),
    ("GET", "/sso/oidc/<slug>/callback"): Access("404", "404", "404"),
    ("GET", "/readyz"): Access("200", "200", "200"),
    # Asked directly, not by a trusted proxy: the session alone is judged.
    # Asked by a client, not a trusted proxy: refused whoever holds the
    # session (tests/integration/test_gateway.py asks as a proxy).
    ("GET", "/auth/check"): Access(
        "403", "403", "403", event=("gateway.denied", "proxy_not_trusted")
    ),
    ("GET", "/auth/forward"): Access(
        "403", "403", "403", event=("gateway.denied", "proxy_not_trusted")
    ),
    ("GET", "/auth/denied"): Access("200", "200", "200"),
    ("GET", "/.well-known/jwks.json"): Access("200", "200", "200"),
    ("GET", "/login"): Access("200", "302 /portal/profile", "302 /portal/profile"),
    ("POST", "/login"): Access(
        "302 /login/password",
        "302 /login/password",
        "302 /login/password",
        {"email": "someone@example.com"},
    ),
    ("GET", "/login/password"): Access("302 /login", "302 /login", "302 /login"),
    ("POST", "/login/password"): Access(
        "302 /login", "302 /login", "302 /login", {"password": "whatever it is"}
    ),
    ("GET", "/login/workspace"): Access("302 /login", "302 /login", "302 /login"),
    ("POST", "/login/workspace"): Access(
        "302 /login", "302 /login", "302 /login", {"account": str(uuid.UUID(int=1))}
    ),
    ("POST", "/logout"): Access("302 /login", "302 /login", "302 /login"),
    # The MFA step and set-up belong to a half-finished sign-in held in the
    # flow cookie; without one, whoever asks is sent to sign in.
    ("GET", "/login/mfa"): Access("302 /login", "302 /login", "302 /login"),
    ("POST", "/login/mfa"): Access(
        "302 /login", "302 /login", "302 /login", {"method": "totp", "code": "1"}
    ),
    ("GET", "/login/mfa/setup"): Access("302 /login", "302 /login", "302 /login"),
    ("GET", "/login/mfa/setup/done"): Access("302 /login", "302 /login", "302 /login"),
    ("POST", "/login/mfa/setup/done"): Access("302 /login", "302 /login", "302 /login"),
    # Authenticator app set-up at sign-in (idp/web/mfa_totp.py).
    ("GET", "/login/mfa/setup/totp"): Access("302 /login", "302 /login", "302 /login"),
    ("POST", "/login/mfa/setup/totp"): Access(
        "302 /login", "302 /login", "302 /login", {"code": "123456"}
    ),
    # Passkeys and security keys at sign-in (idp/web/mfa_webauthn.py). The
    # options are for anyone (a passkey names its account); an answer that
    # does not verify is refused; set-up needs a half-finished sign-in.
    ("POST", "/login/passkey/options"): Access("200", "200", "200"),
    ("POST", "/login/passkey"): Access("401", "401", "401", {"credential": "{}"}),
    ("POST", "/login/mfa/webauthn/options"): Access("401", "401", "401"),
    ("GET", "/login/mfa/setup/passkey"): Access(
        "302 /login", "302 /login", "302 /login"
    ),
    ("POST", "/login/mfa/setup/passkey"): Access(
        "302 /login", "302 /login", "302 /login", {"credential": "{}"}
    ),
    ("POST", "/login/mfa/setup/passkey/options"): Access("401", "401", "401"),
    ("GET", "/login/mfa/setup/security-key"): Access(
        "302 /login", "302 /login", "302 /login"
    ),
    ("POST", "/login/mfa/setup/security-key"): Access(
        "302 /login", "302 /login", "302 /login", {"credential": "{}"}
    ),
    ("POST", "/login/mfa/setup/security-key/options"): Access("401", "401", "401"),
    ("GET", "/login/forgot"): Access("200", "200", "200"),
    ("POST", "/login/forgot"): Access(
        "200", "200", "200", {"email": "nobody@example.com"}
    ),
    ("GET", "/invite/<token>"): Access("302 /invite", "302 /invite", "302 /invite"),
    ("GET", "/invite"): Access("400", "400", "400"),
    ("POST", "/invite"): Access(
        "400",
        "400",
        "400",
        {"full_name": "X", "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    ),
    ("GET", "/reset/<token>"): Access("302 /reset", "302 /reset", "302 /reset"),
    ("GET", "/reset"): Access("400", "400", "400"),
    ("POST", "/reset"): Access(
        "400",
        "400",
        "400",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    ),
    ("GET", "/email/confirm/<token>"): Access(
        "302 /email/confirm", "302 /email/confirm", "302 /email/confirm"
    ),
    ("GET", "/email/confirm"): Access("400", "400", "400"),
    ("POST", "/email/confirm"): Access("400", "400", "400"),
    # --- any member --------------------------------------------------------
    ("GET", "/portal/"): Access(LOGIN, "302 /portal/profile", "302 /portal/profile"),
    ("GET", "/portal/profile"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/profile"): Access(
        LOGIN,
        "302 /portal/profile",
        "302 /portal/profile",
        {"full_name": "New Name", "username": "", "phone": "", "job_title": ""},
    ),
    ("GET", "/portal/profile/email"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/profile/email"): Access(
        LOGIN,
        "302 /portal/profile",
        "302 /portal/profile",
        {"email": "fresh@example.com", "password": PASSWORD},
    ),
    ("GET", "/portal/privacy-security"): Access(LOGIN, "200", "200"),
    ("GET", "/portal/privacy-security/logout-others"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/privacy-security/logout-others"): Access(
        LOGIN, "302 /portal/privacy-security", "302 /portal/privacy-security"
    ),
    ("POST", "/portal/privacy-security/sessions/<session_id>/end"): Access(
        LOGIN, "404", "404"
    ),
    ("GET", "/portal/reauthenticate"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/reauthenticate"): Access(
        LOGIN, "400", "400", {"password": "not the password"}
    ),
    ("GET", "/portal/privacy-security/password"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/privacy-security/password"): Access(
        LOGIN,
        "302 /portal/privacy-security",
        "302 /portal/privacy-security",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
    ),
    # Passkeys and security keys: *Set up* (a page, its options, the
    # answer, which "{}" is not), rename and delete of one's own only.
    ("GET", "/portal/privacy-security/passkeys/new"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/privacy-security/passkeys/new"): Access(
        LOGIN, "400", "400", {"credential": "{}", "name": ""}
    ),
    ("POST", "/portal/privacy-security/passkeys/options"): Access(LOGIN, "200", "200"),
    ("GET", "/portal/privacy-security/passkeys/<credential_id>/rename"): Access(
        LOGIN, "404", "404"
    ),
    ("POST", "/portal/privacy-security/passkeys/<credential_id>/rename"): Access(
        LOGIN, "404", "404", {"name": "Laptop"}
    ),
    ("GET", "/portal/privacy-security/passkeys/<credential_id>/delete"): Access(
        LOGIN, "404", "404"
    ),
    ("POST", "/portal/privacy-security/passkeys/<credential_id>/delete"): Access(
        LOGIN, "404", "404"
    ),
    ("GET", "/portal/privacy-security/security-keys/new"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/privacy-security/security-keys/new"): Access(
        LOGIN, "400", "400", {"credential": "{}", "name": ""}
    ),
    ("POST", "/portal/privacy-security/security-keys/options"): Access(
        LOGIN, "200", "200"
    ),
    ("GET", "/portal/privacy-security/security-keys/<credential_id>/rename"): Access(
        LOGIN, "404", "404"
    ),
    ("POST", "/portal/privacy-security/security-keys/<credential_id>/rename"): Access(
        LOGIN, "404", "404", {"name": "Blue key"}
    ),
    ("GET", "/portal/privacy-security/security-keys/<credential_id>/delete"): Access(
        LOGIN, "404", "404"
    ),
    ("POST", "/portal/privacy-security/security-keys/<credential_id>/delete"): Access(
        LOGIN, "404", "404"
    ),
    # Authenticator app and recovery codes (idp/web/mfa_totp.py). With no
    # set-up waiting, no app and no factor, the POSTs are refused: 400, 404
    # and 409 (tests/integration/test_mfa_totp.py does each for real).
    ("GET", "/portal/privacy-security/authenticator"): Access(LOGIN, "200", "200"),
    ("POST", "/portal/privacy-security/authenticator"): Access(
        LOGIN, "400", "400", {"code": "123456"}
    ),
    ("POST", "/portal/privacy-security/authenticator/remove"): Access(
        LOGIN, "404", "404"
    ),
    ("POST", "/portal/privacy-security/recovery-codes"): Access(LOGIN, "409", "409"),
    ("GET", "/portal/users"): Access(LOGIN, "200", "200"),
    ("GET", "/portal/audit-logs"): Access(LOGIN, "200", "200"),
    ("GET", "/portal/audit-logs/download"): Access(LOGIN, "200", "200"),
    # --- admins ------------------------------------------------------------
    ("GET", "/portal/users/invite"): Access(LOGIN, "403", "200"),
    ("POST", "/portal/users/invite"): Access(
        LOGIN,
        "403",
        "302 /portal/users",
        {"email": "new@example.com", "role": "read_only", "full_name": "New Member"},
    ),
    ("POST", "/portal/users/<user_id>/resend"): Access(
        LOGIN, "403", "302 /portal/users"
    ),
    ("POST", "/portal/users/<user_id>/disable"): Access(
        LOGIN, "403", "302 /portal/users"
    ),
    ("POST", "/portal/users/<user_id>/enable"): Access(
        LOGIN, "403", "302 /portal/users"
    ),
    ("POST", "/portal/users/<user_id>/role"): Access(
        LOGIN, "403", "302 /portal/users", {"role": "admin"}
    ),
    ("GET", "/portal/users/<user_id>/reset-mfa"): Access(LOGIN, "403", "200"),
    # The member has no MFA to reset: 409 (tests/integration/test_mfa_signin.py
    # resets one that has).
    ("POST", "/portal/users/<user_id>/reset-mfa"): Access(LOGIN, "403", "409"),
    ("GET", "/portal/users/<user_id>/delete"): Access(LOGIN, "403", "200"),
    ("POST", "/portal/users/<user_id>/delete"): Access(
        LOGIN, "403", "302 /portal/users"
    ),
    ("GET", "/portal/security"): Access(LOGIN, "403", "200"),
    ("POST", "/portal/security/mfa"): Access(
        LOGIN, "403", "302 /portal/security", {"mfa_mode": "off"}
    ),
    ("POST", "/portal/security/idle-timeout"): Access(
        LOGIN,
        "403",
        "302 /portal/security",
        {"enabled": "1", "amount": "30", "unit": "minutes"},
    ),
    ("POST", "/portal/security/max-sessions"): Access(
        LOGIN, "403", "302 /portal/security", {"enabled": "1", "limit": "5"}
    ),
    ("POST", "/portal/security/relogin"): Access(
        LOGIN, "403", "302 /portal/security", {"enabled": "1", "days": "7"}
    ),
    ("POST", "/portal/security/ip"): Access(LOGIN, "403", "302 /portal/security"),
    ("POST", "/portal/security/ip/entries"): Access(
        LOGIN, "403", "302 /portal/security", {"network": "203.0.113.0/24"}
    ),
    ("POST", "/portal/security/ip/my-ip"): Access(LOGIN, "403", "302 /portal/security"),
    ("POST", "/portal/security/ip/<entry_id>/remove"): Access(LOGIN, "403", "404"),
    ("POST", "/portal/security/domains"): Access(LOGIN, "403", "302 /portal/security"),
    ("POST", "/portal/security/domains/entries"): Access(
        LOGIN, "403", "302 /portal/security", {"domain": "example.com"}
    ),
    ("POST", "/portal/security/domains/<entry_id>/remove"): Access(LOGIN, "403", "404"),
    # The SSO tab. The world's workspace has no connection: the forms that
    # need one answer 404 in the page, the others refuse what they are sent.
    ("GET", "/portal/sso"): Access(LOGIN, "403", "200"),
    ("POST", "/portal/sso/saml"): Access(LOGIN, "403", "400", {"source": "none"}),
    ("POST", "/portal/sso/saml/refresh"): Access(LOGIN, "403", "404"),
    ("POST", "/portal/sso/oidc"): Access(
        LOGIN, "403", "400", {"issuer": "", "client_id": "", "scopes": "openid"}
    ),
    ("POST", "/portal/sso/options"): Access(
        LOGIN, "403", "404", {"default_role": "read_only"}
    ),
    ("POST", "/portal/sso/domains"): Access(
        LOGIN, "403", "404", {"domain": "example.com"}
    ),
    ("POST", "/portal/sso/domains/<domain_id>/verify"): Access(LOGIN, "403", "404"),
    ("POST", "/portal/sso/domains/<domain_id>/remove"): Access(LOGIN, "403", "404"),
    ("POST", "/portal/sso/test"): Access(LOGIN, "403", "404"),
    ("GET", "/portal/sso/test/<request_id>"): Access(LOGIN, "403", "404"),
    ("GET", "/portal/sso/remove"): Access(LOGIN, "403", "302 /portal/sso"),
    ("POST", "/portal/sso/remove"): Access(LOGIN, "403", "404"),
}

ADMIN_ONLY_POST_ROUTES = [k for k, v in ROUTES.items() if v.read_only == "403"]
# The SAML ACS takes the IdP's cross-site POST, which carries no CSRF token:
# the browser's SSO binding cookie and the signed, single-use answer protect
# it (tests/integration/test_sso_saml_acs.py).
CSRF_EXEMPT = {("POST", "/sso/saml/<slug>/acs")}
POST_ROUTES = [k for k in ROUTES if k[0] == "POST" and k not in CSRF_EXEMPT]


def is_public(rule: str) -> bool:
    # "/" only redirects to the portal, which then asks for a session.
    return rule == "/" or rule.startswith(PUBLIC_PREFIXES)


def app_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


# --- the people and objects every test uses ----------------------------------


@dataclass
class World:
    workspace: object
    admin: object
    reader: object
    member: object
    invited: object


def build_world(app, tag: str = "") -> World:  # type: ignore[no-untyped-def]
    """A workspace with an admin, a Read Only member and two targets. ``tag``
    keeps emails apart when one app holds many worlds."""
    ws = make_workspace(app, f"Acme{tag}")
    return World(
        workspace=ws,
        admin=make_user(app, ws, f"ann{tag}@example.com", role="admin"),
        reader=make_user(app, ws, f"rob{tag}@example.com"),
        member=make_user(app, ws, f"mia{tag}@example.com"),
        invited=make_user(
            app, ws, f"ivy{tag}@example.com", status="invited", password=None
        ),
    )


def fill(rule: str, world: World) -> str:
    """The rule with its variables replaced by values that exist (or, for
    tokens and sessions, values that could)."""
    target = world.invited if rule.endswith("/resend") else world.member
    values = {
        "<path:filename>": "app.css",
        "<token>": "x" * 43,
        "<session_id>": str(uuid.uuid4()),
        "<user_id>": str(target.id),
        "<entry_id>": str(uuid.uuid4()),
        "<credential_id>": str(uuid.uuid4()),
        "<domain_id>": str(uuid.uuid4()),
        "<request_id>": "id-" + "0" * 40,
        "<slug>": world.workspace.slug,  # type: ignore[attr-defined]
        "<protocol>": "saml",
    }
    for placeholder, value in values.items():
        rule = rule.replace(placeholder, value)
    assert "<" not in rule, rule
    return rule


def token_for(client) -> str:  # type: ignore[no-untyped-def]
    page = "/portal/profile" if client.get("/login").status_code == 302 else "/login"
    return csrf_from(client, page)


def ask(client, method: str, path: str, form: dict[str, str]):  # type: ignore[no-untyped-def]
    if method == "GET":
        return client.get(path)
    return client.post(path, data={**form, "csrf_token": token_for(client)})


def check_answer(response, expected: str, path: str) -> None:  # type: ignore[no-untyped-def]
    body = response.get_data(as_text=True)[:500]
    if expected == LOGIN:
        assert response.status_code == 302, body
        assert response.headers["Location"].startswith(
            f"/login?rd={quote(path, safe='')}"
        )
        return
    status, _, location = expected.partition(" ")
    assert response.status_code == int(status), (path, body)
    if location:
        assert response.headers["Location"].split("?")[0] == location


def count_events(app, **where: str) -> int:  # type: ignore[no-untyped-def]
    from idp.db import db
    from idp.models import AuditEvent

    with app.app_context():
        conditions = [getattr(AuditEvent, k) == v for k, v in where.items()]
        return db.session.scalar(
            sa.select(sa.func.count()).select_from(AuditEvent).where(*conditions)
        )


def snapshot(app, *, ignore_refusals: bool = False) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    """Every row that an action could change, as plain tuples. With
    ``ignore_refusals``, the audit events that record refused requests are
    left out (a refusal must write one, and nothing else)."""
    from idp.db import db
    from idp.models import AuditEvent, EmailToken, Invitation, Session, User

    with app.app_context():
        tables = {
            "users": User,
            "sessions": Session,
            "invitations": Invitation,
            "email_tokens": EmailToken,
            "audit": AuditEvent,
        }
        result = {}
        for name, model in tables.items():
            columns = model.__table__.columns
            query = sa.select(*columns).order_by(*model.__table__.primary_key)
            if model is AuditEvent and ignore_refusals:
                query = query.where(AuditEvent.action != "request.refused")
            rows = db.session.execute(query)
            result[name] = [tuple(str(v) for v in row) for row in rows]
        return result


def last_refusal(app) -> tuple[str | None, str]:  # type: ignore[no-untyped-def]
    from idp.db import db
    from idp.models import AuditEvent

    with app.app_context():
        event = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "request.refused")
            .order_by(AuditEvent.id.desc())
            .limit(1)
        ).one()
        return event.reason, event.actor_label


# --- the table ---------------------------------------------------------------


def test_every_route_is_classified(app):
    routes = app_routes(app)
    missing = sorted(routes - ROUTES.keys())
    stale = sorted(ROUTES.keys() - routes)
    assert not missing, f"routes missing from ROUTES (classify them): {missing}"
    assert not stale, f"ROUTES lists routes the app no longer has: {stale}"


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda k: f"{k[0]} {k[1]}")
def test_public_list_matches_the_table(key):
    _, rule = key
    access = ROUTES[key]
    if is_public(rule):
        assert access.anonymous != LOGIN
    else:
        # Off the public list: a session is needed, and an anonymous visitor
        # is sent to sign in, never shown the page.
        assert access.anonymous == LOGIN


def test_route_access(app, subtests):
    """Walks the table: each route in a world of its own, asked by an
    anonymous visitor, then a Read Only member, then an Admin."""
    for n, key in enumerate(sorted(ROUTES)):
        method, rule = key
        access = ROUTES[key]
        with subtests.test(msg=f"{method} {rule}"):
            world = build_world(app, str(n))
            path = fill(rule, world)
            anonymous = app.test_client()
            reader = signed_in(app, world.reader.email)
            admin = signed_in(app, world.admin.email)

            check_answer(
                ask(anonymous, method, path, access.form), access.anonymous, path
            )

            before = snapshot(app)
            action, reason = access.event
            who = {"action": action, "reason": reason}
            if action == "authz.denied":
                who["actor_id"] = str(world.reader.id)
            denied = count_events(app, **who)
            check_answer(ask(reader, method, path, access.form), access.read_only, path)
            if access.read_only == "403":
                after = snapshot(app)
                # One new event, the refusal naming who tried; nothing else.
                assert count_events(app, **who) == denied + 1
                assert {k: v for k, v in after.items() if k != "audit"} == {
                    k: v for k, v in before.items() if k != "audit"
                }
                assert len(after["audit"]) == len(before["audit"]) + 1

            check_answer(ask(admin, method, path, access.form), access.admin, path)


def test_anonymous_get_keeps_the_query_in_rd(app, client):
    response = client.get("/portal/users?q=ann")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?rd=%2Fportal%2Fusers%3Fq%3Dann"


# --- workspace isolation (ASVS 8.2.2) ----------------------------------------


def two_workspaces(app):  # type: ignore[no-untyped-def]
    world = build_world(app)
    other = make_workspace(app, "Bravo")
    zed = make_user(app, other, "zed@bravo.example", role="admin", name="Zed Bravo")
    pending = make_user(
        app,
        other,
        "pat@bravo.example",
        status="invited",
        password=None,
        name="Pat Bravo",
    )
    return world, other, zed, pending


USER_ID_ROUTES = [
    ("POST", "/portal/users/{}/resend", {}),
    ("POST", "/portal/users/{}/disable", {}),
    ("POST", "/portal/users/{}/enable", {}),
    ("POST", "/portal/users/{}/role", {"role": "read_only"}),
    ("POST", "/portal/users/{}/role", {"role": "admin"}),
    ("GET", "/portal/users/{}/delete", {}),
    ("POST", "/portal/users/{}/delete", {}),
]


def test_admin_cannot_reach_a_user_of_another_workspace(app, subtests):
    _, _, zed, pending = two_workspaces(app)
    admin = signed_in(app, "ann@example.com")
    before = snapshot(app)
    for method, template, form in USER_ID_ROUTES:
        for target in (zed, pending):
            with subtests.test(msg=f"{method} {template} {form} {target.email}"):
                response = ask(admin, method, template.format(target.id), form)
                assert response.status_code == 404, response.get_data(as_text=True)[
                    :300
                ]
                assert "bravo.example" not in response.get_data(as_text=True)
    after = snapshot(app)
    assert after["users"] == before["users"]
    assert after["sessions"] == before["sessions"]
    assert after["invitations"] == before["invitations"]


MALFORMED_IDS = [
    "not-a-uuid",
    "123",
    "0",
    "-1",
    "' OR '1'='1",
    "%00",
    "%27%3B--",
    "a" * 5000,
    "00000000-0000-0000-0000-00000000000g",
    "{12345678-1234-5678-1234-567812345678}x",
    "..%2F..%2Fetc",
    "%E2%80%8B",
    "%ff%fe",
]


def test_malformed_user_id_is_404(app, subtests):
    build_world(app)
    admin = signed_in(app, "ann@example.com")
    token = token_for(admin)
    before = snapshot(app)
    for method, template, form in USER_ID_ROUTES:
        for bad in MALFORMED_IDS:
            with subtests.test(msg=f"{method} {template} {bad[:20]}"):
                path = template.format(bad)
                if method == "GET":
                    response = admin.get(path)
                else:
                    response = admin.post(path, data={**form, "csrf_token": token})
                assert response.status_code == 404
    assert snapshot(app)["users"] == before["users"]


def test_session_ids_of_others_and_malformed_ones_are_404(app):
    world, _, zed, _ = two_workspaces(app)
    zed_client = signed_in(app, "zed@bravo.example")
    mia_client = signed_in(app, "mia@example.com")
    admin = signed_in(app, "ann@example.com")
    from idp.db import db
    from idp.models import Session

    with app.app_context():
        foreign = db.session.scalars(
            sa.select(Session.id).where(Session.user_id.in_([zed.id, world.member.id]))
        ).all()
    assert len(foreign) == 2
    token = token_for(admin)
    for sid in [*map(str, foreign), *MALFORMED_IDS]:
        response = admin.post(
            f"/portal/privacy-security/sessions/{sid}/end", data={"csrf_token": token}
        )
        assert response.status_code == 404, (sid, response.status_code)
    assert zed_client.get("/portal/profile").status_code == 200
    assert mia_client.get("/portal/profile").status_code == 200


def test_lists_and_audit_log_never_show_another_workspace(app):
    two_workspaces(app)
    signed_in(app, "zed@bravo.example")  # writes Bravo's audit events
    for role_email in ("ann@example.com", "rob@example.com"):
        client = signed_in(app, role_email)
        pages = [
            "/portal/users",
            "/portal/users?q=bravo",
            "/portal/users?q=zed",
            "/portal/users?q=pat",
            "/portal/users?q=%25",
            "/portal/users?q=_",
            "/portal/audit-logs",
            "/portal/audit-logs?q=bravo",
            "/portal/audit-logs?q=zed",
            "/portal/audit-logs?actor=zed",
            "/portal/audit-logs?action=signin.success",
            "/portal/audit-logs?action=workspace.create",
            "/portal/audit-logs?before=999999999",
            "/portal/audit-logs/download",
            "/portal/audit-logs/download?q=bravo",
            "/portal/audit-logs/download?action=user.invite",
        ]
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, page
            text = response.get_data(as_text=True)
            for mark in (
                "@bravo.example",
                "Zed Bravo",
                "Pat Bravo",
                ",Bravo,",
                ">Bravo<",
            ):
                assert mark not in text, (page, mark)
        # Acme's own data is there, so the filters did run.
        assert "ann@example.com" in client.get("/portal/users?q=ann").get_data(
            as_text=True
        )
        assert "ann@example.com" in client.get("/portal/audit-logs/download").get_data(
            as_text=True
        )


def test_profile_post_ignores_fields_it_does_not_own(app):
    """Mass assignment (ASVS 8.2.3, 15.3.3): extra fields change nothing."""
    world, other, zed, _ = two_workspaces(app)
    reader = signed_in(app, "rob@example.com")
    response = post_form(
        reader,
        "/portal/profile",
        {
            "full_name": "Rob Reader",
            "username": "rob",
            "phone": "",
            "job_title": "Tester",
            "role": "admin",
            "status": "active",
            "email": "zed@bravo.example",
            "workspace_id": str(other.id),
            "id": str(zed.id),
            "password_hash": "x",
            "joined_at": "2000-01-01",
            "username_key": "zed",
            "is_admin": "1",
        },
        csrf_page="/portal/profile",
    )
    assert response.status_code == 302
    from idp.db import db
    from idp.models import User

    with app.app_context():
        rob = db.session.get(User, world.reader.id)
        assert (rob.full_name, rob.username, rob.job_title) == (
            "Rob Reader",
            "rob",
            "Tester",
        )
        assert (rob.role, rob.status, rob.email) == (
            "read_only",
            "active",
            "rob@example.com",
        )
        assert rob.workspace_id == world.workspace.id
        assert rob.password_hash == world.reader.password_hash
        assert rob.joined_at == world.reader.joined_at
    # Still Read Only on the very next request.
    assert reader.get("/portal/users/invite").status_code == 403


# --- CSRF (ASVS 3.5) ---------------------------------------------------------


def test_post_without_a_valid_csrf_token_is_refused(app, subtests):
    world = build_world(app)
    admin = signed_in(app, "ann@example.com")
    stranger = signed_in(app, "rob@example.com")
    foreign_token = token_for(stranger)
    before = snapshot(app, ignore_refusals=True)
    for _, rule in POST_ROUTES:
        path = fill(rule, world)
        form = ROUTES[("POST", rule)].form
        tokens = {
            "missing": None,
            "another browser's": foreign_token,
            "forged": "x" * 80,
        }
        for label, token in tokens.items():
            with subtests.test(msg=f"{rule} with {label} token"):
                data = form if token is None else {**form, "csrf_token": token}
                response = admin.post(path, data=data)
                assert response.status_code == 400
                assert "Form expired" in response.get_data(as_text=True)
                assert snapshot(app, ignore_refusals=True) == before
                assert last_refusal(app) == ("csrf_failed", "ann@example.com")
    assert admin.get("/portal/profile").status_code == 200


def test_anonymous_token_from_another_browser_is_refused(app):
    build_world(app)
    mine, theirs = app.test_client(), app.test_client()
    response = mine.post(
        "/login", data={"email": "ann@example.com", "csrf_token": csrf_from(theirs)}
    )
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)


# --- headers, inline code, cookies (ASVS 3.3, 3.4) ---------------------------


class InlineFinder(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name.lower() for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        self.found += [
            f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")
        ]


def inline_code(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    return finder.found


def check_page_headers(response, *, portal: bool) -> None:  # type: ignore[no-untyped-def]
    csp = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if portal:
        assert "no-store" in response.headers["Cache-Control"]


def every_page(app) -> list[tuple[str, object]]:  # type: ignore[no-untyped-def]
    """(name, response) for each page a person can be shown, reached the way
    a browser reaches it."""
    from tests.conftest import RecordingMailer

    mailer: RecordingMailer = app.extensions["idp"].mailer
    world = build_world(app)
    other = make_workspace(app, "Bravo")
    make_user(app, other, "ann@example.com")
    pages: list[tuple[str, object]] = []
    anonymous = app.test_client()
    for path in (
        "/login",
        "/login?expired=1&rd=%2Fportal%2Fusers",
        "/login/forgot",
        "/invite",
        "/reset",
        "/email/confirm",
        "/nowhere",
    ):
        pages.append((path, anonymous.get(path)))
    pages.append(("form expired", anonymous.post("/login", data={"email": "a@b.c"})))
    pages.append(
        (
            "forgot sent",
            post_form(anonymous, "/login/forgot", {"email": "x@example.com"}),
        )
    )
    post_form(anonymous, "/login", {"email": "ann@example.com"})
    pages.append(("/login/password", anonymous.get("/login/password")))
    pages.append(
        (
            "wrong password",
            anonymous.post(
                "/login/password",
                data={"password": "wrong one", "csrf_token": csrf_from(anonymous)},
            ),
        )
    )
    post_form(anonymous, "/login", {"email": "ann@example.com"})
    anonymous.post(
        "/login/password",
        data={
            "password": PASSWORD,
            "csrf_token": csrf_from(anonymous, "/login/password"),
        },
    )
    pages.append(("/login/workspace", anonymous.get("/login/workspace")))

    reader = signed_in(app, "rob@example.com")
    for path in ("/portal/profile", "/portal/users", "/portal/users/invite"):
        pages.append((f"read only {path}", reader.get(path)))
    admin = app.test_client()
    post_form(admin, "/login", {"email": "ann@example.com"})
    # ann is in two workspaces; choose Acme's account.
    admin.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf_from(admin, "/login/password")},
    )
    admin.post(
        "/login/workspace",
        data={
            "account": str(world.admin.id),
            "csrf_token": csrf_from(admin, "/login/workspace"),
        },
    )
    portal_pages = [
        "/portal/profile",
        "/portal/profile?edit=1",
        "/portal/profile/email",
        "/portal/privacy-security",
        "/portal/privacy-security/logout-others",
        "/portal/privacy-security/password",
        "/portal/users",
        "/portal/users?q=nobody",
        "/portal/users/invite",
        f"/portal/users/{world.member.id}/delete",
        "/portal/audit-logs",
        "/portal/audit-logs?q=ann&action=signin.success",
        f"/portal/users/{uuid.uuid4()}/delete",
    ]
    for path in portal_pages:
        pages.append((path, admin.get(path)))
    pages.append(
        (
            "profile error",
            post_form(
                admin, "/portal/profile", {"full_name": ""}, csrf_page="/portal/profile"
            ),
        )
    )
    pages.append(
        (
            "invite error",
            post_form(
                admin,
                "/portal/users/invite",
                {"email": "bad", "role": "x", "full_name": ""},
            ),
        )
    )
    post_form(
        admin,
        "/portal/users/invite",
        {"email": "new@example.com", "role": "read_only", "full_name": "New"},
    )
    pages.append(("users with flash", admin.get("/portal/users")))
    post_form(
        admin,
        "/portal/profile/email",
        {"email": "ann2@example.com", "password": PASSWORD},
    )

    invitee = app.test_client()
    invitee.get(mailer.last_to("new@example.com").link.removeprefix("http://localhost"))
    pages.append(("/invite (valid)", invitee.get("/invite")))
    confirm = app.test_client()
    confirm.get(
        mailer.last_to("ann2@example.com").link.removeprefix("http://localhost")
    )
    pages.append(("/email/confirm (valid)", confirm.get("/email/confirm")))
    pages.append(("email confirmed", post_form(confirm, "/email/confirm", {})))
    from idp.services import account
    from idp.services.context import Client, Context

    with app.test_request_context():
        account.request_password_reset(Context.anonymous(Client()), "mia@example.com")
    reset = app.test_client()
    for _ in range(500):  # the reset mail leaves on its own thread
        if any(m.to == "mia@example.com" for m in mailer.sent):
            break
        time.sleep(0.01)
    reset.get(mailer.last_to("mia@example.com").link.removeprefix("http://localhost"))
    pages.append(("/reset (valid)", reset.get("/reset")))
    return pages


def test_pages_carry_security_headers_and_no_inline_code(app):
    pages = every_page(app)
    assert len(pages) > 30
    for name, response in pages:
        assert response.status_code < 500, name
        if response.status_code in (301, 302):
            continue
        assert response.mimetype == "text/html", name
        check_page_headers(response, portal=True)
        html = response.get_data(as_text=True)
        assert inline_code(html) == [], name
    rendered = {name for name, r in pages if r.status_code == 200}
    assert {
        "/login/workspace",
        "/invite (valid)",
        "/reset (valid)",
        "/email/confirm (valid)",
        "/portal/users/invite",
    } <= rendered


def test_templates_have_no_inline_code():
    folder = Path(__file__).resolve().parents[2] / "idp" / "templates"
    templates = sorted(folder.rglob("*.html"))
    assert templates
    for template in templates:
        text = template.read_text("utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text, re.IGNORECASE), (
            template
        )
        assert not re.search(r"<style\b", text, re.IGNORECASE), template
        assert not re.search(r"\sstyle\s*=", text, re.IGNORECASE), template
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", text, re.IGNORECASE), template


def test_json_and_static_answers_carry_headers_too(app, client):
    for path in ("/healthz", "/readyz", "/static/app.css"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


def session_set_cookie(response) -> str:  # type: ignore[no-untyped-def]
    found = [
        v for v in response.headers.getlist("Set-Cookie") if "portcullis_session=" in v
    ]
    assert len(found) == 1, response.headers.getlist("Set-Cookie")
    return found[0]


def cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    first, *rest = [part.strip() for part in header.split(";")]
    name = first.partition("=")[0]
    attrs = {}
    for part in rest:
        key, _, value = part.partition("=")
        attrs[key.lower()] = value
    return name, attrs


def test_session_cookie_over_http_is_host_only_httponly_lax(app, client):
    build_world(app)
    name, attrs = cookie_attributes(
        session_set_cookie(login(client, "ann@example.com"))
    )
    assert name == "portcullis_session"
    assert "httponly" in attrs and attrs["samesite"] == "Lax"
    assert attrs["path"] == "/" and "domain" not in attrs and "secure" not in attrs


def https_sign_in(app):  # type: ignore[no-untyped-def]
    client = app.test_client()
    base = "https://auth.example.com"
    # CSRF over https also checks the Referer (Flask-WTF's SSL strict mode).
    headers = {"Referer": f"{base}/login"}
    token = csrf_of(client.get("/login", base_url=base))
    client.post(
        "/login",
        data={"email": "ann@example.com", "csrf_token": token},
        base_url=base,
        headers=headers,
    )
    token = csrf_of(client.get("/login/password", base_url=base))
    return client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": token},
        base_url=base,
        headers=headers,
    )


def csrf_of(response) -> str:  # type: ignore[no-untyped-def]
    match = CSRF_RE.search(response.get_data(as_text=True))
    assert match, response.status_code
    return match.group(1)


@pytest.mark.parametrize("overrides", [{"public_url": "https://auth.example.com"}])
def test_session_cookie_over_https_is_host_prefixed(app, overrides):
    build_world(app)
    response = https_sign_in(app)
    assert response.status_code == 302
    name, attrs = cookie_attributes(session_set_cookie(response))
    assert name == "__Host-portcullis_session"
    assert "secure" in attrs and "httponly" in attrs and attrs["samesite"] == "Lax"
    assert attrs["path"] == "/" and "domain" not in attrs
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    flow = [
        v for v in response.headers.getlist("Set-Cookie") if "portcullis_flow=" in v
    ]
    assert all(v.startswith("__Host-portcullis_flow=") and "Secure" in v for v in flow)


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "public_url": "https://auth.example.com",
            "sessions": {"cookie_domain": "example.com"},
        }
    ],
)
def test_session_cookie_with_a_cookie_domain_is_secure_prefixed(app, overrides):
    build_world(app)
    response = https_sign_in(app)
    assert response.status_code == 302
    name, attrs = cookie_attributes(session_set_cookie(response))
    assert name == "__Secure-portcullis_session"
    assert attrs["domain"].lstrip(".") == "example.com"
    assert "secure" in attrs and "httponly" in attrs and attrs["samesite"] == "Lax"

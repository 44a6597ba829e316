"""Hostile input on every form and URL parameter (ASVS 1.x–4.x, 15.3.3),
return URLs after sign-in (GW-1) and the client address in the audit log
(GW-2).

Every answer is a 4xx, or a 200/302 the person can read; never a 5xx. What
is echoed back is escaped. A refused request changes nothing stored.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote_plus

import pytest
import sqlalchemy as sa

from tests.conftest import (
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    table_rows,
)
from tests.gw1 import HOSTILE_RETURN_URLS


class Raw(bytes):
    """A value sent exactly as these bytes (already percent-encoded)."""


REPEATED = object()  # the field sent twice

HOSTILE: dict[str, object] = {
    "empty": "",
    "spaces": "   \t  ",
    "10k": "a" * 10_000,
    "10k-unicode": "é" * 10_000,
    "nul": "ann\x00@example.com",
    "control": "\x01\x07\x1b[2J\x7f\x85",
    "crlf": "victim@example.com\r\nBcc: evil@evil.example",
    "bad-utf8": Raw(b"%ff%fe%c3%28%ed%a0%80"),
    "unicode": "Zoë Ünïcødé 😀 \u202eevil\u200b 𝔘𝔫𝔦",
    "sql": "' OR '1'='1'; DROP TABLE users; --",
    "html": '<script>alert(1)</script>"><img src=x onerror=alert(1)>',
    "like": "%_\\%",
    "repeated": REPEATED,
}
HTML_MARKERS = ("<script>alert(1)", "<img src=x")


def encode(fields: dict[str, str], targets: list[str], value: object) -> bytes:
    """An x-www-form-urlencoded body (or query) with ``value`` in ``targets``."""
    pairs: list[bytes] = []
    for key, normal in fields.items():
        if key not in targets:
            pairs.append(f"{quote_plus(key)}={quote_plus(normal)}".encode())
    for key in targets:
        if value is REPEATED:
            pairs += [f"{key}=first".encode(), f"{key}=second".encode()]
        elif isinstance(value, Raw):
            pairs.append(key.encode() + b"=" + bytes(value))
        else:
            pairs.append(f"{quote_plus(key)}={quote_plus(str(value))}".encode())
    return b"&".join(pairs)


def send(
    client,
    method: str,
    path: str,
    fields: dict[str, str],  # type: ignore[no-untyped-def]
    targets: list[str],
    value: object,
    *,
    csrf_page: str | None = None,
):
    if method == "GET":
        return client.get(
            path, query_string=encode(fields, targets, value).decode("ascii")
        )
    token = csrf_from(client, csrf_page or path)
    body = encode({**fields, "csrf_token": token}, targets, value)
    return client.post(
        path, data=body, content_type="application/x-www-form-urlencoded"
    )


def stored(app) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    """The rows a refused request must leave alone (the audit log and the
    sign-in failure counts are meant to grow)."""
    from idp.models import EmailToken, Invitation, Session, User, Workspace

    return table_rows(app, Workspace, User, Session, Invitation, EmailToken)


def check_answer(app, response, before) -> None:  # type: ignore[no-untyped-def]
    status = response.status_code
    body = response.get_data(as_text=True)
    assert status < 500, body[:1000]
    assert status in (200, 302) or 400 <= status < 500
    if response.mimetype == "text/html":
        for marker in HTML_MARKERS:
            assert marker not in body
    if status >= 400:
        # A clear message: the form's alert or the error page.
        assert 'role="alert"' in body or f"Error {status}" in body, body[:1000]
        assert stored(app) == before


@pytest.fixture
def overrides():  # type: ignore[no-untyped-def]
    # Many wrong passwords for one email in a row: keep the lock-out out of
    # the way so every value reaches the check it is meant to reach.
    return {
        "signin": {"account_failure_limit": 100_000, "ip_limits": "100000 per minute"}
    }


@dataclass
class Endpoint:
    method: str
    path: str
    fields: dict[str, str]
    # field name -> the form keys that receive the value (password twice)
    targets: dict[str, list[str]]
    csrf_page: str | None = None


def _all_values(
    subtests,
    app,
    endpoint: Endpoint,
    client_for: Callable[[], object],  # type: ignore[no-untyped-def]
    extra: dict[str, object] | None = None,
) -> None:
    values = {**HOSTILE, **(extra or {})}
    for field, targets in endpoint.targets.items():
        for name, value in values.items():
            with subtests.test(msg=f"{endpoint.method} {endpoint.path} {field}={name}"):
                client = client_for()
                before = stored(app)
                response = send(
                    client,
                    endpoint.method,
                    endpoint.path,
                    endpoint.fields,
                    targets,
                    value,
                    csrf_page=endpoint.csrf_page,
                )
                check_answer(app, response, before)


# --- the signed-out forms ----------------------------------------------------


def test_login_email_and_password(app, subtests):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    for field in ("email", "rd"):
        for name, value in HOSTILE.items():
            with subtests.test(msg=f"login {field}={name}"):
                client = app.test_client()
                before = stored(app)
                fields = {"email": "ann@example.com", "rd": "/portal/users"}
                first = send(client, "POST", "/login", fields, [field], value)
                check_answer(app, first, before)
                if first.status_code == 302:
                    assert first.headers["Location"] == "/login/password"
                    page = client.get("/login/password")
                    check_answer(app, page, before)
                    second = send(
                        client,
                        "POST",
                        "/login/password",
                        {"password": "not the password"},
                        [],
                        None,
                    )
                    check_answer(app, second, before)
                    assert second.status_code in (400, 401)
    client = app.test_client()
    post_form(client, "/login", {"email": "ann@example.com"})
    _all_values(
        subtests,
        app,
        Endpoint("POST", "/login/password", {}, {"password": ["password"]}),
        lambda: client,
    )


def test_forgot(app, subtests, mailer):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = app.test_client()
    _all_values(
        subtests,
        app,
        Endpoint("POST", "/login/forgot", {}, {"email": ["email"]}),
        lambda: client,
    )
    assert mailer.sent == []


def new_invitation(app, workspace, email: str) -> str:  # type: ignore[no-untyped-def]
    from idp.db import db
    from idp.models import Invitation
    from idp.security import token_digest

    user = make_user(app, workspace, email, status="invited", password=None)
    token = secrets.token_urlsafe(32)
    with app.app_context():
        moment = app.extensions["idp"].clock()
        db.session.add(
            Invitation(
                workspace_id=workspace.id,
                user_id=user.id,
                token_hash=token_digest(token),
                created_at=moment,
                expires_at=moment + timedelta(days=7),
            )
        )
        db.session.commit()
    return token


def new_reset(app, user) -> str:  # type: ignore[no-untyped-def]
    from idp.db import db
    from idp.models import EmailToken
    from idp.security import token_digest

    token = secrets.token_urlsafe(32)
    with app.app_context():
        db.session.execute(sa.delete(EmailToken).where(EmailToken.user_id == user.id))
        moment = app.extensions["idp"].clock()
        db.session.add(
            EmailToken(
                workspace_id=user.workspace_id,
                user_id=user.id,
                purpose="password_reset",
                token_hash=token_digest(token),
                created_at=moment,
                expires_at=moment + timedelta(hours=1),
            )
        )
        db.session.commit()
    return token


def test_invitation_acceptance(app, subtests):
    ws = make_workspace(app)
    endpoint = Endpoint(
        "POST",
        "/invite",
        {
            "full_name": "Ivy Invited",
            "password": "a long enough passphrase",
            "password_confirm": "a long enough passphrase",
        },
        {"full_name": ["full_name"], "password": ["password", "password_confirm"]},
    )

    def fresh_client():  # type: ignore[no-untyped-def]
        client = app.test_client()
        token = new_invitation(app, ws, f"ivy-{uuid.uuid4().hex[:8]}@example.com")
        assert client.get(f"/invite/{token}").status_code == 302
        return client

    _all_values(subtests, app, endpoint, fresh_client)


def test_reset(app, subtests):
    ws = make_workspace(app)
    ann = make_user(app, ws, "ann@example.com")
    endpoint = Endpoint(
        "POST",
        "/reset",
        {"password": "a long enough passphrase"},
        {"password": ["password", "password_confirm"]},
    )

    def fresh_client():  # type: ignore[no-untyped-def]
        client = app.test_client()
        assert client.get(f"/reset/{new_reset(app, ann)}").status_code == 302
        return client

    _all_values(subtests, app, endpoint, fresh_client)


@pytest.mark.parametrize("path", ["/invite/", "/reset/", "/email/confirm/"])
def test_link_tokens_in_the_path(app, client, path):
    landing = path.rstrip("/")
    for token in [
        "x" * 129,
        "%00",
        "%ff%fe",
        "..%2F..",
        "%3Cscript%3E",
        "a%0d%0aSet-Cookie:x",
    ]:
        response = client.get(path + token)
        assert response.status_code in (302, 404), token
        # The email confirmation page asks before it checks (so that a mail
        # scanner cannot confirm); the answer to the button is the same.
        if landing == "/email/confirm":
            answer = post_form(client, landing, {}, csrf_page="/login")
        else:
            answer = client.get(landing)
        assert answer.status_code == 400, token
        assert "This link is invalid or has expired." in answer.get_data(as_text=True)
        assert "<script>" not in answer.get_data(as_text=True)


# --- the portal --------------------------------------------------------------


@pytest.fixture
def team(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    admin = make_user(app, ws, "ann@example.com", role="admin")
    member = make_user(app, ws, "mia@example.com")
    client = app.test_client()
    login(client, "ann@example.com")
    return ws, admin, member, client


def test_profile(app, subtests, team):
    *_, client = team
    endpoint = Endpoint(
        "POST",
        "/portal/profile",
        {"full_name": "Ann Admin", "username": "", "phone": "", "job_title": ""},
        {k: [k] for k in ("full_name", "username", "phone", "job_title")},
        csrf_page="/portal/profile",
    )
    _all_values(subtests, app, endpoint, lambda: client)
    # Whatever was kept is shown escaped wherever it appears.
    post_form(
        client,
        "/portal/profile",
        {"full_name": HOSTILE["html"], "job_title": HOSTILE["html"]},
        csrf_page="/portal/profile",
    )
    for page in (
        "/portal/profile",
        "/portal/profile?edit=1",
        "/portal/users",
        "/portal/audit-logs",
        "/portal/audit-logs/download",
    ):
        check_answer(app, client.get(page), None)


def test_change_email(app, subtests, team):
    *_, client = team
    endpoint = Endpoint(
        "POST",
        "/portal/profile/email",
        {"email": "new@example.com", "password": PASSWORD},
        {"email": ["email"], "password": ["password"]},
    )
    _all_values(subtests, app, endpoint, lambda: client)


def test_change_password(app, subtests, team):
    *_, client = team
    endpoint = Endpoint(
        "POST",
        "/portal/privacy-security/password",
        {
            "current_password": "not the password",
            "new_password": "x",
            "new_password_confirm": "x",
        },
        {
            "current_password": ["current_password"],
            "new_password": ["new_password", "new_password_confirm"],
        },
    )
    _all_values(subtests, app, endpoint, lambda: client)


def test_invite_user(app, subtests, team):
    *_, client = team
    endpoint = Endpoint(
        "POST",
        "/portal/users/invite",
        {"email": "mia@example.com", "role": "read_only", "full_name": "Mia"},
        {k: [k] for k in ("email", "role", "full_name")},
    )
    _all_values(subtests, app, endpoint, lambda: client)


def test_change_role(app, subtests, team):
    _, _, member, client = team
    endpoint = Endpoint(
        "POST",
        f"/portal/users/{member.id}/role",
        {},
        {"role": ["role"]},
        csrf_page="/portal/users",
    )
    _all_values(subtests, app, endpoint, lambda: client)


def test_user_search(app, subtests, team):
    *_, client = team
    _all_values(
        subtests,
        app,
        Endpoint("GET", "/portal/users", {}, {"q": ["q"]}),
        lambda: client,
    )


AUDIT_EXTRA: dict[str, object] = {
    "far-future": "9999-12-31",
    "year-one": "0001-01-01",
    "no-such-day": "2024-02-30",
    "signed-year": "+002024-01-01",
    "superscript": "²",
    "arabic-digits": "١٢٣",
    "huge": "9" * 19,
    "negative": "-1",
    "float": "1e5",
    "fts-syntax": 'a" OR "b* NEAR(',
}


@pytest.mark.parametrize("path", ["/portal/audit-logs", "/portal/audit-logs/download"])
def test_audit_filters(app, subtests, team, path):
    *_, client = team
    fields = ("q", "action", "actor", "from", "to", "before")
    endpoint = Endpoint("GET", path, {}, {k: [k] for k in fields})
    _all_values(subtests, app, endpoint, lambda: client, AUDIT_EXTRA)


def test_login_rd_parameter_on_get(app, subtests):
    client = app.test_client()
    _all_values(
        subtests,
        app,
        Endpoint("GET", "/login", {}, {"rd": ["rd"], "expired": ["expired"]}),
        lambda: client,
    )


# --- sizes -------------------------------------------------------------------


def test_bodies_over_the_limit_are_413(app, team):
    *_, client = team
    token = csrf_from(client, "/portal/profile")
    before = stored(app)
    for path in ("/login", "/login/forgot", "/portal/profile", "/portal/users/invite"):
        big = client.post(path, data={"csrf_token": token, "full_name": "x" * 70_000})
        assert big.status_code == 413, path
        assert "The request is too large." in big.get_data(as_text=True)
        many = client.post(
            path,
            data={"csrf_token": token, **{f"f{i}": "x" for i in range(300)}},
            content_type="multipart/form-data",
        )
        assert many.status_code == 413, path
    assert stored(app) == before


# --- GW-1: return URLs after sign-in -----------------------------------------

CONTROLS = ["/dashboard?x=1", "https://app.example.com/x"]


def sign_in_with_rd(client, rd: str, email: str):  # type: ignore[no-untyped-def]
    page = client.get("/login", query_string={"rd": rd})
    assert page.status_code == 200
    token = csrf_from(client)
    client.post("/login", data={"email": email, "rd": rd, "csrf_token": token})
    token = csrf_from(client, "/login/password")
    return client.post(
        "/login/password", data={"password": PASSWORD, "csrf_token": token}
    )


@pytest.mark.parametrize(
    "overrides", [{"gateway": {"protected_hosts": ["app.example.com"]}}]
)
def test_hostile_return_urls_fall_back_to_the_profile(app, subtests, overrides):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    for rd in [value for value in HOSTILE_RETURN_URLS if value]:
        with subtests.test(msg=repr(rd[:60])):
            client = app.test_client()
            if "\x00" in rd:
                # Refused outright before any sign-in starts.
                assert client.get("/login", query_string={"rd": rd}).status_code == 400
                assert (
                    post_form(
                        client,
                        "/login",
                        {"email": "ann@example.com", "rd": rd},
                        csrf_page="/login",
                    ).status_code
                    == 400
                )
                continue
            response = sign_in_with_rd(client, rd, "ann@example.com")
            assert response.status_code == 302
            assert response.headers["Location"] == "/portal/profile"
            # Signed in already: /login?rd= sends nowhere else either.
            again = client.get("/login", query_string={"rd": rd})
            assert again.headers["Location"] == "/portal/profile"


@pytest.mark.parametrize(
    "overrides", [{"gateway": {"protected_hosts": ["app.example.com"]}}]
)
def test_return_urls_of_protected_hosts_are_kept_exactly(app, overrides):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    for rd in CONTROLS:
        client = app.test_client()
        page = client.get("/login", query_string={"rd": rd}).get_data(as_text=True)
        assert f'name="rd" value="{rd}"' in page
        response = sign_in_with_rd(client, rd, "ann@example.com")
        assert response.headers["Location"] == rd
        assert client.get("/login", query_string={"rd": rd}).headers["Location"] == rd


def test_return_url_is_judged_again_when_the_flow_finishes(app):
    # A flow cookie carrying a hostile rd (forged or from an older release)
    # still lands on the profile.
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = app.test_client()
    post_form(client, "/login", {"email": "ann@example.com"})
    with client.session_transaction() as flow:
        flow["login"]["rd"] = "//evil.example"
    token = csrf_from(client, "/login/password")
    response = client.post(
        "/login/password", data={"password": PASSWORD, "csrf_token": token}
    )
    assert response.headers["Location"] == "/portal/profile"


# --- GW-2: the audit event stores the resolved client and the peer -----------


def signin_event(app):  # type: ignore[no-untyped-def]
    from idp.db import db
    from idp.models import AuditEvent

    with app.app_context():
        return db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "signin.success")
            .order_by(AuditEvent.id.desc())
        ).first()


@pytest.mark.parametrize("overrides", [{"gateway": {"trusted_proxies": ["10.0.0.5"]}}])
@pytest.mark.parametrize(
    "peer,forwarded,client_ip",
    [
        ("203.0.113.200", "203.0.113.9", "203.0.113.200"),
        ("10.0.0.5", "203.0.113.9, 203.0.113.200", "203.0.113.200"),
        ("10.0.0.5", "a", None),
        ("10.0.0.5", "999.1.1.1", None),
        ("10.0.0.5", "", None),
        ("::ffff:10.0.0.5", "::ffff:203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "[2001:db8::1]", "2001:db8::1"),
    ],
    ids=[
        "untrusted-peer",
        "right-most",
        "garbage",
        "bad-octet",
        "empty",
        "v4-mapped",
        "brackets",
    ],
)
def test_signin_audit_event_stores_client_and_peer(
    app, overrides, peer, forwarded, client_ip
):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = app.test_client()
    client.environ_base.update({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded})
    assert login(client, "ann@example.com").status_code == 302
    event = signin_event(app)
    assert (event.client_ip, event.peer_ip) == (client_ip, peer)

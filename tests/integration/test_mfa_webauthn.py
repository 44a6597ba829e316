"""Passkeys and security keys through the web: the portal's *Set up*,
rename and delete, a passkey sign-in without a password, a security key
at the MFA step, set-up when MFA is forced, and the refusals around them.
The browser's part is played by the software authenticator of
tests/unit/test_webauthn.py, its answers posted as webauthn.js posts them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import AuditEvent, SecurityPolicy, Session, User
from idp.models import WebAuthnCredential as Credential
from tests.conftest import (
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)
from tests.unit.test_webauthn import SoftKey

PRIVACY = "/portal/privacy-security"
SEGMENT = {"passkey": "passkeys", "security_key": "security-keys"}


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "mia@example.com")
    make_user(app, ws, "rob@example.com")
    return ws


def options(client, url: str, page: str):  # type: ignore[no-untyped-def]
    """POST for options as webauthn.js does: the CSRF token in a header."""
    token = csrf_from(client, page)
    return client.post(
        url, headers={"X-CSRFToken": token, "Accept": "application/json"}
    )


def add_key(client, key: SoftKey, kind: str = "passkey", name: str = "", **attack: Any):  # type: ignore[no-untyped-def]
    """*Set up* in the portal: the page, its options, the answer."""
    base = f"{PRIVACY}/{SEGMENT[kind]}"
    answer = options(client, f"{base}/options", f"{base}/new")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    credential = key.create(answer.get_data(as_text=True), **attack)
    return post_form(client, f"{base}/new", {"credential": credential, "name": name})


def passkey_sign_in(client, key: SoftKey, rd: str = "", **attack: Any):  # type: ignore[no-untyped-def]
    page = f"/login?rd={rd}" if rd else "/login"
    answer = options(client, "/login/passkey/options", page)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    credential = key.get(answer.get_data(as_text=True), **attack)
    data = {"credential": credential, "rd": rd} if rd else {"credential": credential}
    return post_form(client, "/login/passkey", data, csrf_page=page)


def key_at_mfa_step(client, key: SoftKey, **attack: Any):  # type: ignore[no-untyped-def]
    answer = options(client, "/login/mfa/webauthn/options", "/login/mfa")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    credential = key.get(answer.get_data(as_text=True), **attack)
    return post_form(
        client, "/login/mfa", {"method": "webauthn", "credential": credential}
    )


def credentials(app, email: str) -> list[Credential]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Credential)
                .join(User, User.id == Credential.user_id)
                .where(User.email == email)
                .order_by(Credential.created_at)
            )
        )


def given_key(app, client, kind: str = "passkey", name: str = "") -> SoftKey:  # type: ignore[no-untyped-def]
    key = SoftKey(verifies_user=kind == "passkey")
    response = add_key(client, key, kind, name)
    assert response.status_code in (200, 302), response.get_data(as_text=True)
    return key


def session_of(app, client) -> Session:  # type: ignore[no-untyped-def]
    """The session this browser's cookie holds."""
    from idp.security import token_digest

    token = session_cookie(client)
    assert token, "not signed in"
    with app.app_context():
        return db.session.scalars(
            sa.select(Session).where(Session.token_hash == token_digest(token))
        ).one()


def events(app, action: str) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return [
            (e.outcome, e.reason)
            for e in db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        ]


def force_mfa(app, ws) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).mfa_mode = "force"
        db.session.commit()


# --- the portal ---------------------------------------------------------------


def test_set_up_a_passkey_in_the_portal(app, acme):
    signed_in(app, "mia@example.com")  # on another device
    client = signed_in(app, "mia@example.com")
    page = client.get(PRIVACY).get_data(as_text=True)
    assert "Set up passkey" in page and "Add security key" in page
    assert f'href="{PRIVACY}/passkeys/new">Set up</a>' in page

    setup = client.get(f"{PRIVACY}/passkeys/new").get_data(as_text=True)
    assert 'data-webauthn="register"' in setup
    assert f'data-options-url="{PRIVACY}/passkeys/options"' in setup
    assert '<script src="/static/webauthn.js" defer></script>' in setup

    response = add_key(client, SoftKey(), name="Work laptop")
    # The first factor: its recovery codes are shown once.
    assert response.status_code == 200
    assert "Your recovery codes" in response.get_data(as_text=True)
    [added] = credentials(app, "mia@example.com")
    assert (added.kind, added.name, added.sign_count) == ("passkey", "Work laptop", 0)
    assert added.transports == ["nfc", "usb"]

    listed = client.get(PRIVACY).get_data(as_text=True)
    assert "Work laptop" in listed
    assert added.created_at.strftime("%d %b %Y") in listed
    assert "Never" in listed
    assert "Your sign-in methods changed" in listed
    assert events(app, "mfa.webauthn_added") == [("success", None)]


def test_add_a_security_key_in_the_portal(app, acme):
    client = signed_in(app, "mia@example.com")
    given_key(app, client, "passkey")
    key = SoftKey(verifies_user=False)
    response = add_key(client, key, "security_key", "Blue key")
    # Not the first factor: straight back to the tab.
    assert response.status_code == 302
    assert response.headers["Location"] == PRIVACY
    kinds = [(c.kind, c.name) for c in credentials(app, "mia@example.com")]
    assert kinds == [("passkey", "Passkey"), ("security_key", "Blue key")]
    assert "Security key “Blue key” added." in client.get(PRIVACY).get_data(
        as_text=True
    )


def test_a_registration_that_does_not_verify_is_refused_with_its_page(app, acme):
    client = signed_in(app, "mia@example.com")
    response = add_key(client, SoftKey(verifies_user=False))
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "That key could not be registered. Try again." in body
    assert 'data-webauthn="register"' in body
    assert credentials(app, "mia@example.com") == []
    assert events(app, "mfa.webauthn_added") == [
        ("failure", "user_verification_missing")
    ]


def test_registration_answers_only_the_browser_that_asked(app, acme):
    mine = signed_in(app, "mia@example.com")
    other = signed_in(app, "mia@example.com")
    answer = options(mine, f"{PRIVACY}/passkeys/options", f"{PRIVACY}/passkeys/new")
    credential = SoftKey().create(answer.get_data(as_text=True))
    # The same account in another browser cannot post this browser's answer.
    response = post_form(
        other,
        f"{PRIVACY}/passkeys/new",
        {"credential": credential, "name": ""},
    )
    assert response.status_code == 400
    assert events(app, "mfa.webauthn_added") == [("failure", "challenge_unknown")]


def test_rename_and_delete(app, acme, clock):
    signed_in(app, "mia@example.com")  # on another device
    client = signed_in(app, "mia@example.com")
    given_key(app, client, "passkey", "Old name")
    clock.advance(seconds=1)  # credentials() lists them by creation time
    given_key(app, client, "security_key", "Blue key")
    passkey, security_key = credentials(app, "mia@example.com")

    rename = f"{PRIVACY}/passkeys/{passkey.id}/rename"
    assert 'value="Old name"' in client.get(rename).get_data(as_text=True)
    response = post_form(client, rename, {"name": "Phone"})
    assert response.status_code == 302
    assert credentials(app, "mia@example.com")[0].name == "Phone"
    too_long = post_form(client, rename, {"name": "x" * 101})
    assert too_long.status_code == 400
    assert "at most 100 characters" in too_long.get_data(as_text=True)
    # The address names the kind: a passkey is not reached as a security key.
    wrong = f"{PRIVACY}/security-keys/{passkey.id}/rename"
    assert client.get(wrong).status_code == 404

    delete = f"{PRIVACY}/security-keys/{security_key.id}/delete"
    assert "Delete security key" in client.get(delete).get_data(as_text=True)
    response = post_form(client, delete, {})
    assert response.status_code == 302
    assert [c.id for c in credentials(app, "mia@example.com")] == [passkey.id]
    assert events(app, "mfa.webauthn_renamed") == [("success", None)]
    assert events(app, "mfa.webauthn_removed") == [("success", None)]
    assert "Your sign-in methods changed" in client.get(PRIVACY).get_data(as_text=True)


def test_another_members_credential_is_not_found(app, acme):
    rob = signed_in(app, "rob@example.com")
    given_key(app, rob)
    [theirs] = credentials(app, "rob@example.com")
    mia = signed_in(app, "mia@example.com")
    for action in ("rename", "delete"):
        path = f"{PRIVACY}/passkeys/{theirs.id}/{action}"
        assert mia.get(path).status_code == 404
        assert (
            post_form(mia, path, {"name": "Mine"}, csrf_page=PRIVACY).status_code == 404
        )
    assert mia.get(f"{PRIVACY}/passkeys/not-an-id/delete").status_code == 404
    assert [c.name for c in credentials(app, "rob@example.com")] == ["Passkey"]


def test_adding_or_removing_needs_a_recent_sign_in(app, acme, clock):
    client = signed_in(app, "mia@example.com")
    given_key(app, client)
    [passkey] = credentials(app, "mia@example.com")
    clock.advance(minutes=11)
    for path in (
        f"{PRIVACY}/passkeys/new",
        f"{PRIVACY}/security-keys/new",
        f"{PRIVACY}/passkeys/{passkey.id}/delete",
    ):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/portal/reauthenticate?next=")
    for path in (
        f"{PRIVACY}/passkeys/options",
        f"{PRIVACY}/passkeys/new",
        f"{PRIVACY}/passkeys/{passkey.id}/delete",
    ):
        response = post_form(client, path, {}, csrf_page=PRIVACY)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/portal/reauthenticate")
    # Renaming changes no way of signing in: no fresh sign-in needed.
    rename = f"{PRIVACY}/passkeys/{passkey.id}/rename"
    assert post_form(client, rename, {"name": "Still"}).status_code == 302
    assert len(credentials(app, "mia@example.com")) == 1

    post_form(client, "/portal/reauthenticate", {"password": PASSWORD})
    assert client.get(f"{PRIVACY}/passkeys/new").status_code == 200


def test_the_last_factor_is_refused_while_mfa_is_forced(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"), "security_key")
    [only] = credentials(app, "mia@example.com")
    force_mfa(app, acme)
    client = app.test_client()
    login(client, "mia@example.com")
    assert key_at_mfa_step(client, key).status_code == 302
    delete = f"{PRIVACY}/security-keys/{only.id}/delete"
    response = post_form(client, delete, {})
    assert response.status_code == 403
    assert "last factor cannot be removed" in response.get_data(as_text=True)
    assert len(credentials(app, "mia@example.com")) == 1
    assert events(app, "mfa.webauthn_removed") == []


@pytest.mark.parametrize("overrides", [{"public_url": "http://127.0.0.1:8000"}])
def test_the_portal_hides_passkeys_when_reached_by_an_ip_address(app, acme, overrides):
    client = signed_in(app, "mia@example.com")
    page = client.get(PRIVACY).get_data(as_text=True)
    assert page.count("need Portcullis to be reached by a host name") == 2
    assert "/passkeys/new" not in page and "/security-keys/new" not in page
    assert client.get(f"{PRIVACY}/passkeys/new").status_code == 404
    response = post_form(
        client, f"{PRIVACY}/security-keys/options", {}, csrf_page=PRIVACY
    )
    assert response.status_code == 404
    login_page = client.application.test_client().get("/login").get_data(as_text=True)
    assert "Sign in with a passkey" not in login_page
    assert "webauthn" not in login_page


# --- signing in ---------------------------------------------------------------


def test_sign_in_with_a_passkey_and_no_password(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"))
    page = app.test_client().get("/login").get_data(as_text=True)
    assert 'autocomplete="username webauthn"' in page
    assert "Sign in with a passkey" in page
    assert 'data-options-url="/login/passkey/options"' in page

    browser = app.test_client()
    response = passkey_sign_in(browser, key, rd="/portal/users")
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == "/portal/users"
    assert session_cookie(browser)
    assert browser.get("/portal/profile").status_code == 200
    session = session_of(app, browser)
    assert session.amr == ["hwk", "user", "mfa"]
    assert session.mfa_at is not None
    [used] = credentials(app, "mia@example.com")
    assert used.last_used_at is not None and used.sign_count == 1
    assert events(app, "signin.success")[-1] == ("success", None)


def test_a_passkey_sign_in_counts_as_multi_factor(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"))
    force_mfa(app, acme)
    browser = app.test_client()
    assert passkey_sign_in(browser, key).status_code == 302
    # Forced MFA lets this session through: no enrolment, no second step.
    assert browser.get("/portal/profile").status_code == 200
    assert session_of(app, browser).amr == ["hwk", "user", "mfa"]


@pytest.mark.parametrize("overrides", [{"signin": {"ip_limits": "3 per minute"}}])
def test_passkey_sign_in_is_rate_limited_per_address(app, acme, overrides):
    client = app.test_client()
    token = csrf_from(client, "/login")
    headers = {"X-CSRFToken": token, "Accept": "application/json"}
    answers = [
        client.post("/login/passkey/options", headers=headers).status_code
        for _ in range(4)
    ]
    assert answers == [200, 200, 200, 429]
    for _ in range(3):
        post_form(client, "/login/passkey", {"credential": "{}"}, csrf_page="/login")
    limited = post_form(
        client, "/login/passkey", {"credential": "{}"}, csrf_page="/login"
    )
    assert limited.status_code == 429
    assert events(app, "request.refused")[-1] == ("failure", "rate_limited")


def test_passkey_options_name_no_account(app, acme):
    given_key(app, signed_in(app, "mia@example.com"))
    answer = options(app.test_client(), "/login/passkey/options", "/login")
    body = json.loads(answer.get_data(as_text=True))
    assert answer.mimetype == "application/json"
    assert body["allowCredentials"] == []
    assert body["userVerification"] == "required"
    assert body["rpId"] == "localhost"


def test_a_passkey_answer_works_once_and_only_in_its_browser(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"))
    browser = app.test_client()
    answer = options(browser, "/login/passkey/options", "/login")
    credential = key.get(answer.get_data(as_text=True))
    # Posted from another browser (login CSRF), it signs nobody in.
    elsewhere = app.test_client()
    response = post_form(
        elsewhere, "/login/passkey", {"credential": credential}, csrf_page="/login"
    )
    assert response.status_code == 401
    assert session_cookie(elsewhere) is None
    assert (
        post_form(
            browser, "/login/passkey", {"credential": credential}, csrf_page="/login"
        ).status_code
        == 302
    )
    again = app.test_client()
    replay = post_form(
        again, "/login/passkey", {"credential": credential}, csrf_page="/login"
    )
    assert replay.status_code == 401
    assert [r for _, r in events(app, "mfa.failure")] == [
        "challenge_unknown",
        "challenge_unknown",
    ]


def test_a_failed_passkey_sign_in_says_so_on_the_sign_in_page(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"))
    browser = app.test_client()
    response = passkey_sign_in(browser, key, origin="https://evil.example")
    assert response.status_code == 401
    body = response.get_data(as_text=True)
    assert "That passkey or security key could not be verified." in body
    assert "Sign in with a passkey" in body
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure") == [("failure", "origin_mismatch")]


def test_a_disabled_member_is_refused_at_passkey_sign_in(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"))
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == "mia@example.com"))
        user.status = "disabled"
        db.session.commit()
    browser = app.test_client()
    response = passkey_sign_in(browser, key)
    assert response.status_code == 403
    assert "This account is disabled." in response.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert events(app, "signin.failure")[-1] == ("denied", "account_disabled")


def test_a_security_key_never_signs_in_without_the_password(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"), "security_key")
    key.verifies_user = True
    response = passkey_sign_in(app.test_client(), key)
    assert response.status_code == 401
    assert events(app, "mfa.failure")[-1] == ("failure", "credential_unknown")


def test_password_then_security_key(app, acme):
    key = given_key(app, signed_in(app, "mia@example.com"), "security_key")
    browser = app.test_client()
    response = login(browser, "mia@example.com")
    assert response.headers["Location"] == "/login/mfa"
    step = browser.get("/login/mfa").get_data(as_text=True)
    assert 'data-webauthn="authenticate"' in step
    assert 'data-options-url="/login/mfa/webauthn/options"' in step

    answer = options(browser, "/login/mfa/webauthn/options", "/login/mfa")
    body = json.loads(answer.get_data(as_text=True))
    [allowed] = body["allowCredentials"]
    assert allowed["transports"] == ["nfc", "usb"]

    credential = key.get(answer.get_data(as_text=True))
    response = post_form(
        browser, "/login/mfa", {"method": "webauthn", "credential": credential}
    )
    assert response.status_code == 302
    assert browser.get("/portal/profile").status_code == 200
    assert session_of(app, browser).amr == ["pwd", "hwk", "mfa"]


def test_the_mfa_step_refuses_another_members_key(app, acme):
    mine = given_key(app, signed_in(app, "mia@example.com"), "security_key")
    given_key(app, signed_in(app, "rob@example.com"), "security_key")
    browser = app.test_client()
    login(browser, "rob@example.com")
    response = key_at_mfa_step(browser, mine)
    assert response.status_code == 401
    assert "could not be verified" in response.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure")[-1] == ("failure", "credential_unknown")


def test_mfa_options_need_a_pending_sign_in(app, acme):
    answer = options(app.test_client(), "/login/mfa/webauthn/options", "/login")
    assert answer.status_code == 401
    assert json.loads(answer.get_data(as_text=True))["message"].startswith(
        "This sign-in has expired"
    )


def test_set_up_a_passkey_when_mfa_is_forced(app, acme):
    force_mfa(app, acme)
    browser = app.test_client()
    response = login(browser, "mia@example.com")
    assert response.headers["Location"] == "/login/mfa/setup"
    page = browser.get("/login/mfa/setup").get_data(as_text=True)
    assert "/login/mfa/setup/passkey" in page

    setup = "/login/mfa/setup/passkey"
    body = browser.get(setup).get_data(as_text=True)
    assert "Signing in as <strong>mia@example.com</strong>" in body
    answer = options(browser, f"{setup}/options", setup)
    assert answer.status_code == 200
    credential = SoftKey().create(answer.get_data(as_text=True))
    response = post_form(browser, setup, {"credential": credential, "name": "Laptop"})
    assert response.status_code == 200
    assert "Your recovery codes" in response.get_data(as_text=True)
    assert session_cookie(browser) is None
    response = post_form(
        browser, "/login/mfa/setup/done", {}, csrf_page="/login/mfa/setup/done"
    )
    assert response.status_code == 302
    assert browser.get("/portal/profile").status_code == 200
    assert session_of(app, browser).amr == ["pwd", "hwk", "mfa"]
    assert [c.name for c in credentials(app, "mia@example.com")] == ["Laptop"]


def test_set_up_at_sign_in_is_not_a_way_past_the_mfa_step(app, acme):
    given_key(app, signed_in(app, "mia@example.com"), "security_key")
    browser = app.test_client()
    login(browser, "mia@example.com")
    response = browser.get("/login/mfa/setup/security-key")
    assert response.headers["Location"] == "/login/mfa"
    answer = options(browser, "/login/mfa/setup/security-key/options", "/login/mfa")
    assert answer.status_code == 409
    assert json.loads(answer.get_data(as_text=True))["location"] == "/login/mfa"
    assert len(credentials(app, "mia@example.com")) == 1


# --- hostile input ------------------------------------------------------------

HOSTILE = {
    "empty": "",
    "not-json": "{",
    "array": "[1, 2]",
    "nul": "{\x00}",
    "oversized": "x" * 20_000,
    "unknown-credential": json.dumps(
        {
            "id": "AAAA",
            "rawId": "AAAA",
            "type": "public-key",
            "response": {
                "clientDataJSON": "e30",
                "authenticatorData": "AA",
                "signature": "AA",
            },
        }
    ),
}


def refusals(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(
            sa.select(sa.func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action.in_(
                    ["mfa.failure", "mfa.webauthn_added", "request.refused"]
                ),
                AuditEvent.outcome != "success",
            )
        )


@pytest.mark.parametrize("credential", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_answers_get_a_4xx_and_an_audit_entry(app, acme, credential):
    client = signed_in(app, "mia@example.com")
    given_key(app, client, "security_key")
    answers = {}
    anonymous, browser = app.test_client(), app.test_client()
    login(browser, "mia@example.com")
    for where, who, path, data in (
        ("set-up", client, f"{PRIVACY}/passkeys/new", {"name": ""}),
        ("passkey", anonymous, "/login/passkey", {}),
        ("mfa-step", browser, "/login/mfa", {"method": "webauthn"}),
    ):
        before = refusals(app)
        page = (
            PRIVACY if who is client else "/login/mfa" if who is browser else "/login"
        )
        response = post_form(
            who, path, {**data, "credential": credential}, csrf_page=page
        )
        answers[where] = (response.status_code, refusals(app) - before)
    assert all(400 <= status < 500 for status, _ in answers.values()), answers
    assert answers["set-up"][1] == answers["passkey"][1] == 1, answers
    assert session_cookie(anonymous) is None and session_cookie(browser) is None
    assert len(credentials(app, "mia@example.com")) == 1


def test_pages_have_no_inline_code(app, acme):
    from tests.integration.test_authorization import check_page_headers, inline_code

    client = signed_in(app, "mia@example.com")
    given_key(app, client, "passkey")
    [passkey] = credentials(app, "mia@example.com")
    pages = [
        PRIVACY,
        f"{PRIVACY}/passkeys/new",
        f"{PRIVACY}/security-keys/new",
        f"{PRIVACY}/passkeys/{passkey.id}/rename",
        f"{PRIVACY}/passkeys/{passkey.id}/delete",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        check_page_headers(response, portal=True)
        assert inline_code(response.get_data(as_text=True)) == [], path
    login_page = app.test_client().get("/login")
    assert inline_code(login_page.get_data(as_text=True)) == []
    assert re.search(
        r'<script src="/static/webauthn.js" defer>', login_page.get_data(as_text=True)
    )

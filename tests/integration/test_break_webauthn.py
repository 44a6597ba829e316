"""Attacks on passkeys and security keys: each test states one attack and
asserts the safe behaviour. The answers are forged with the software
authenticator of tests/unit/test_webauthn.py and posted as webauthn.js
posts them.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    IpAllowEntry,
    SecurityPolicy,
    Session,
    User,
    WebAuthnChallenge,
)
from idp.models import WebAuthnCredential as Credential
from idp.services.mfa import webauthn
from tests.conftest import (
    DB_KIND,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)
from tests.integration.test_mfa_webauthn import (
    PRIVACY,
    add_key,
    credentials,
    events,
    force_mfa,
    given_key,
    key_at_mfa_step,
    options,
    passkey_sign_in,
    session_of,
)
from tests.unit.test_webauthn import SoftKey, b64

MIA, ROB = "mia@example.com", "rob@example.com"


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, MIA)
    make_user(app, ws, ROB)
    return ws


def user_id(app, email: str, workspace=None):  # type: ignore[no-untyped-def]
    with app.app_context():
        query = sa.select(User.id).where(User.email == email)
        if workspace is not None:
            query = query.where(User.workspace_id == workspace.id)
        return db.session.scalar(query)


def set_status(app, email: str, status: str) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == email).values(status=status)
        )
        db.session.commit()


def live_sessions(app, email: str) -> list[Session]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Session)
                .join(User, User.id == Session.user_id)
                .where(User.email == email, Session.revoked_at.is_(None))
            )
        )


def json_headers(client, page: str = "/login") -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"X-CSRFToken": csrf_from(client, page), "Accept": "application/json"}


# --- passkey sign-in as somebody else ------------------------------------------


def test_credential_of_a_with_the_user_handle_of_b_signs_nobody_in(app, acme):
    """Attack: Mia signs a passkey sign-in with her own key but puts Rob's
    user handle in the answer, hoping the handle picks the account."""
    key = given_key(app, signed_in(app, MIA))
    given_key(app, signed_in(app, ROB))
    browser = app.test_client()
    response = passkey_sign_in(browser, key, user_handle=user_id(app, ROB).bytes)
    assert response.status_code == 401
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure")[-1] == ("failure", "user_handle_mismatch")


def test_a_passkey_without_user_verification_signs_nobody_in(app, acme):
    """Attack: a stolen passkey used with only a touch (no PIN or
    fingerprint): without user verification it is one factor, not a
    password replacement."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    response = passkey_sign_in(browser, key, uv=False)
    assert response.status_code == 401
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure")[-1] == ("failure", "user_verification_missing")


def test_a_security_key_with_a_user_handle_still_needs_the_password(app, acme):
    """Attack: a security key (registered without user verification) answers
    the passkey sign-in with verification and its owner's user handle."""
    key = given_key(app, signed_in(app, MIA), "security_key")
    key.verifies_user = True
    browser = app.test_client()
    response = passkey_sign_in(browser, key, user_handle=user_id(app, MIA).bytes)
    assert response.status_code == 401
    assert session_cookie(browser) is None


@pytest.mark.parametrize("status", ["invited", "disabled"])
def test_passkey_sign_in_to_an_account_not_active_is_refused(app, acme, status):
    """Attack: keep using a passkey after the account was disabled, or put
    back to an invitation (no session may come of it)."""
    key = given_key(app, signed_in(app, MIA))
    set_status(app, MIA, status)
    browser = app.test_client()
    response = passkey_sign_in(browser, key)
    assert response.status_code in (401, 403)
    assert session_cookie(browser) is None


def test_passkey_of_a_deleted_member_signs_nobody_in(app, acme):
    """Attack: the member is deleted; their passkey is tried again."""
    key = given_key(app, signed_in(app, MIA))
    with app.app_context():
        db.session.execute(sa.delete(User).where(User.email == MIA))
        db.session.commit()
    browser = app.test_client()
    response = passkey_sign_in(browser, key)
    assert response.status_code == 401
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure")[-1] == ("failure", "credential_unknown")


def test_passkey_sign_in_from_outside_the_ip_allow_list_is_refused(app, acme):
    """Attack: a passkey skips the password form; does it skip the IP
    allow-list too? (The test client's address is 127.0.0.1.)"""
    key = given_key(app, signed_in(app, MIA))
    with app.app_context():
        db.session.add(IpAllowEntry(workspace_id=acme.id, network="203.0.113.0/24"))
        db.session.get(SecurityPolicy, acme.id).ip_restriction_enabled = True
        db.session.commit()
    browser = app.test_client()
    response = passkey_sign_in(browser, key)
    assert response.status_code == 403
    assert session_cookie(browser) is None
    assert events(app, "signin.failure")[-1][0] == "denied"


def test_a_passkey_of_workspace_x_signs_in_only_its_own_account(app, acme):
    """Attack: Mia has accounts in two workspaces; the passkey of the Acme
    account must never yield a session of her Globex account, and Globex
    cannot register the same credential again."""
    globex = make_workspace(app, "Globex")
    make_user(app, globex, MIA)
    acme_id, globex_id = user_id(app, MIA, acme), user_id(app, MIA, globex)
    browser = app.test_client()
    login(browser, MIA)  # two accounts: the workspace choice
    choose = csrf_from(browser, "/login/workspace")
    browser.post(
        "/login/workspace", data={"account": str(acme_id), "csrf_token": choose}
    )
    assert browser.get("/portal/profile").status_code == 200
    key = given_key(app, browser)

    signer = app.test_client()
    assert passkey_sign_in(signer, key).status_code == 302
    assert session_of(app, signer).user_id == acme_id

    # The Globex account tries to register the very same credential id.
    other = app.test_client()
    login(other, MIA)
    choose = csrf_from(other, "/login/workspace")
    other.post(
        "/login/workspace", data={"account": str(globex_id), "csrf_token": choose}
    )
    assert session_of(app, other).user_id == globex_id
    copy = SoftKey(credential_id=key.credential_id)
    response = add_key(other, copy)
    assert response.status_code == 400
    assert events(app, "mfa.webauthn_added")[-1] == (
        "failure",
        "credential_registered",
    )


def test_registering_another_members_credential_id_is_refused(app, acme):
    """Attack: Rob registers an authenticator answer that carries Mia's
    credential id (his own key pair), hoping to take over her credential row
    or to make the sign-in lookup find his key."""
    mine = given_key(app, signed_in(app, MIA))
    copy = SoftKey(credential_id=mine.credential_id)
    response = add_key(signed_in(app, ROB), copy)
    assert response.status_code == 400
    [kept] = credentials(app, MIA)
    assert credentials(app, ROB) == []
    assert passkey_sign_in(app.test_client(), mine).status_code == 302
    assert kept.user_id == user_id(app, MIA)


# --- challenges ---------------------------------------------------------------


def test_a_challenge_of_the_mfa_step_does_not_serve_a_passkey_sign_in(app, acme):
    """Attack: Rob knows Mia's password, gets the MFA step's challenge (bound
    to Mia), and uses it at the passwordless sign-in with a passkey answer:
    different ceremony, different cookie key, different account binding."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    login(browser, MIA)
    answer = options(browser, "/login/mfa/webauthn/options", "/login/mfa")
    credential = key.get(answer.get_data(as_text=True))
    response = post_form(
        browser, "/login/passkey", {"credential": credential}, csrf_page="/login"
    )
    assert response.status_code == 401
    assert session_cookie(browser) is None


def test_a_passkey_sign_in_challenge_does_not_serve_the_mfa_step(app, acme):
    """Attack: the reverse: a passkey sign-in challenge answered at the MFA
    step."""
    key = given_key(app, signed_in(app, MIA), "security_key")
    browser = app.test_client()
    answer = options(browser, "/login/passkey/options", "/login")
    login(browser, MIA)
    credential = key.get(answer.get_data(as_text=True))
    response = post_form(
        browser, "/login/mfa", {"method": "webauthn", "credential": credential}
    )
    assert response.status_code == 401
    assert session_cookie(browser) is None


def test_a_registration_challenge_does_not_serve_a_sign_in(app, acme):
    """Attack: the registration options' challenge signed as an assertion."""
    browser = signed_in(app, MIA)
    key = given_key(app, browser)
    answer = options(
        browser, f"{PRIVACY}/passkeys/options", f"{PRIVACY}/passkeys/new"
    ).get_data(as_text=True)
    request_options = json.dumps(
        {"challenge": json.loads(answer)["challenge"], "rpId": "localhost"}
    )
    credential = key.get(request_options)
    fresh = app.test_client()
    response = post_form(
        fresh, "/login/passkey", {"credential": credential}, csrf_page="/login"
    )
    assert response.status_code == 401
    assert session_cookie(fresh) is None


def test_an_expired_passkey_challenge_is_refused(app, acme, clock):
    """Attack: an answer signed now and replayed after the challenge's
    lifetime."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    answer = options(browser, "/login/passkey/options", "/login")
    credential = key.get(answer.get_data(as_text=True))
    clock.advance(seconds=301)
    response = post_form(
        browser, "/login/passkey", {"credential": credential}, csrf_page="/login"
    )
    assert response.status_code == 401
    assert events(app, "mfa.failure")[-1] == ("failure", "challenge_expired")


def test_a_member_cannot_fill_the_challenge_table(app, acme):
    """Attack: a signed-in member (no rate limit on the portal) asks for
    registration options in a loop; each request writes a challenge row
    that lives for five minutes. The rows kept per account must stay
    bounded."""
    browser = signed_in(app, MIA)
    headers = json_headers(browser, f"{PRIVACY}/passkeys/new")
    for _ in range(40):
        answer = browser.post(f"{PRIVACY}/passkeys/options", headers=headers)
        assert answer.status_code == 200
    with app.app_context():
        kept = db.session.scalar(
            sa.select(sa.func.count()).select_from(WebAuthnChallenge)
        )
    assert kept <= 10
    # The latest is still good.
    response = add_key(browser, SoftKey())
    assert response.status_code == 200


# --- counter (MFA-2) under races ----------------------------------------------


def test_two_parallel_sign_ins_of_a_cloned_key_do_not_both_pass(app, acme, monkeypatch):
    """Attack (MFA-2 race): a cloned authenticator and the original sign in
    at the same instant with the same counter value (stored 5, both assert
    6). Both read 5 before either writes; at most one may pass, and the
    stored counter must never go backwards."""
    if DB_KIND == "sqlite":
        pytest.skip("SQLite runs one writer at a time: the ceremonies cannot overlap")
    key = given_key(app, signed_in(app, MIA))
    with app.app_context():
        db.session.execute(
            sa.update(Credential)
            .where(Credential.credential_id == key.credential_id)
            .values(sign_count=5)
        )
        db.session.commit()
    browsers = [app.test_client(), app.test_client()]
    posts = []
    for browser in browsers:
        answer = options(browser, "/login/passkey/options", "/login")
        credential = key.get(answer.get_data(as_text=True), count=6)
        posts.append((browser, credential, csrf_from(browser, "/login")))

    real = webauthn.verify_authentication_response
    both_verified = threading.Barrier(2, timeout=10)

    def verify(**kwargs: Any):  # type: ignore[no-untyped-def]
        result = real(**kwargs)
        both_verified.wait()
        return result

    monkeypatch.setattr(webauthn, "verify_authentication_response", verify)
    codes: list[int] = []

    def attempt(browser, credential, token) -> None:  # type: ignore[no-untyped-def]
        response = browser.post(
            "/login/passkey", data={"credential": credential, "csrf_token": token}
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=post) for post in posts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [302, 401]
    [stored] = credentials(app, MIA)
    assert stored.sign_count == 6


# --- the return URL and the session -------------------------------------------


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
        "http://localhost.evil.example/",
    ],
)
def test_passkey_sign_in_never_redirects_off_site(app, acme, rd):
    """Attack (GW-1): a phishing link to /login?rd=<evil> and the victim
    signs in with their passkey."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    page = "/login"
    answer = options(browser, "/login/passkey/options", page)
    credential = key.get(answer.get_data(as_text=True))
    response = post_form(
        browser, "/login/passkey", {"credential": credential, "rd": rd}, csrf_page=page
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"


def test_the_session_token_after_a_passkey_sign_in_is_new(app, acme):
    """Attack (session fixation): a browser already holding Rob's session
    (or a planted one) signs in with Mia's passkey; the token must be new
    and the old session ended."""
    key = given_key(app, signed_in(app, MIA))
    browser = signed_in(app, ROB)
    planted = session_cookie(browser)
    answer = options(browser, "/login/passkey/options", PRIVACY)
    credential = key.get(answer.get_data(as_text=True))
    response = post_form(
        browser, "/login/passkey", {"credential": credential}, csrf_page=PRIVACY
    )
    assert response.status_code == 302
    assert session_cookie(browser) != planted
    assert session_of(app, browser).user_id == user_id(app, MIA)
    assert live_sessions(app, ROB) == []


# --- CSRF ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/login/passkey/options",
        "/login/passkey",
        "/login/mfa/webauthn/options",
        "/login/mfa/setup/passkey/options",
        "/login/mfa/setup/passkey",
    ],
)
def test_anonymous_webauthn_posts_need_the_csrf_token(app, acme, path):
    """Attack: a cross-site form or fetch to the options endpoint and the
    sign-in itself (login CSRF, challenge rows written for free)."""
    client = app.test_client()
    client.get("/login")
    response = client.post(path, data={"credential": "{}"})
    assert response.status_code in (400, 403)
    with app.app_context():
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(WebAuthnChallenge))
            == 0
        )


@pytest.mark.parametrize(
    "path",
    [
        f"{PRIVACY}/passkeys/options",
        f"{PRIVACY}/security-keys/options",
        f"{PRIVACY}/passkeys/new",
        f"{PRIVACY}/security-keys/new",
    ],
)
def test_portal_webauthn_posts_need_the_csrf_token(app, acme, path):
    """Attack: a cross-site POST from a page the signed-in member visits."""
    browser = signed_in(app, MIA)
    response = browser.post(path, data={"credential": "{}", "name": "x"})
    assert response.status_code in (400, 403)


def test_rename_and_delete_need_the_csrf_token(app, acme):
    """Attack: a cross-site form that deletes or renames the member's key."""
    browser = signed_in(app, MIA)
    given_key(app, browser)
    given_key(app, browser)
    first = credentials(app, MIA)[0]
    for action, data in (("rename", {"name": "pwned"}), ("delete", {})):
        response = browser.post(f"{PRIVACY}/passkeys/{first.id}/{action}", data=data)
        assert response.status_code in (400, 403)
    assert [c.name for c in credentials(app, MIA)] == ["Passkey", "Passkey"]


# --- another member's credentials ---------------------------------------------


def test_rename_or_delete_a_credential_of_another_workspace_is_not_found(app, acme):
    """Attack (IDOR): an admin of Globex posts the row id of an Acme member's
    key to rename and delete, under both kinds' addresses."""
    target = given_key(app, signed_in(app, MIA), "security_key")
    [row] = credentials(app, MIA)
    globex = make_workspace(app, "Globex")
    make_user(app, globex, "eve@globex.example", role="admin")
    eve = signed_in(app, "eve@globex.example")
    given_key(app, eve)
    for segment in ("passkeys", "security-keys"):
        base = f"{PRIVACY}/{segment}/{row.id}"
        assert eve.get(f"{base}/rename").status_code == 404
        token = csrf_from(eve, PRIVACY)
        for action in ("rename", "delete"):
            answer = eve.post(
                f"{base}/{action}", data={"name": "pwned", "csrf_token": token}
            )
            assert answer.status_code == 404
    [still] = credentials(app, MIA)
    assert still.name == row.name
    assert target.credential_id == still.credential_id


def test_two_deletes_at_once_leave_a_factor_under_forced_mfa(app, acme, monkeypatch):
    """Attack: MFA is forced and the member has two keys; two browsers
    delete one each at the same instant, hoping each counts the other as
    the one that stays."""
    setup = signed_in(app, MIA)
    key = given_key(app, setup)
    given_key(app, setup)
    force_mfa(app, acme)
    rows = credentials(app, MIA)
    browser, other = app.test_client(), app.test_client()
    for client in (browser, other):
        assert passkey_sign_in(client, key).status_code == 302
    tokens = [csrf_from(b, PRIVACY) for b in (browser, other)]
    start = threading.Barrier(2, timeout=10)
    codes: list[int] = []

    def attempt(client, row, token) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        response = client.post(
            f"{PRIVACY}/passkeys/{row.id}/delete", data={"csrf_token": token}
        )
        codes.append(response.status_code)

    threads = [
        threading.Thread(target=attempt, args=(c, r, t))
        for c, r, t in zip((browser, other), rows, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(credentials(app, MIA)) == 1
    assert sorted(codes) == [302, 403]


# --- hostile input ------------------------------------------------------------


def hostile_answers(key: SoftKey, challenge: str) -> list[str]:
    options_json = json.dumps({"challenge": challenge, "rpId": "localhost"})
    good = json.loads(key.get(options_json))
    transports = dict(good, response={**good["response"], "transports": ["usb"] * 2000})
    return [
        "null",
        "[]",
        '"x"',
        "{",
        json.dumps({**good, "rawId": "!!!not base64!!!"}),
        json.dumps({**good, "id": b64(os.urandom(2000))}),
        json.dumps({**good, "response": None}),
        json.dumps({**good, "response": {**good["response"], "signature": 7}}),
        json.dumps({**good, "response": {**good["response"], "userHandle": "%%"}}),
        json.dumps(transports)[:16_000],
        "x" * 20_000,
        r'{"id": "\u0000", "rawId": "\ud800", "response": {}}',
    ]


def test_hostile_passkey_answers_get_a_4xx_never_a_500(app, acme):
    """Attack: malformed JSON, base64url junk, oversized fields and huge
    lists posted to the passkey sign-in."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    answer = options(browser, "/login/passkey/options", "/login")
    challenge = json.loads(answer.get_data(as_text=True))["challenge"]
    for credential in hostile_answers(key, challenge):
        response = post_form(
            browser, "/login/passkey", {"credential": credential}, csrf_page="/login"
        )
        assert 400 <= response.status_code < 500, credential[:80]
        assert session_cookie(browser) is None


def test_hostile_registrations_get_a_4xx_never_a_500(app, acme):
    """Attack: junk and a huge transports list posted as a new key."""
    browser = signed_in(app, MIA)
    key = SoftKey()
    for junk in ("null", "[]", "{", "x" * 20_000):
        response = post_form(
            browser, f"{PRIVACY}/passkeys/new", {"credential": junk, "name": ""}
        )
        assert response.status_code == 400
    answer = options(browser, f"{PRIVACY}/passkeys/options", f"{PRIVACY}/passkeys/new")
    created = json.loads(key.create(answer.get_data(as_text=True)))
    created["response"]["transports"] = ["usb", "nfc", "made-up", "x" * 200] * 40
    response = post_form(
        browser,
        f"{PRIVACY}/passkeys/new",
        {"credential": json.dumps(created), "name": ""},
    )
    assert response.status_code in (200, 400)
    for row in credentials(app, MIA):
        assert set(row.transports) <= {
            "usb",
            "nfc",
            "ble",
            "internal",
            "hybrid",
            "cable",
            "smart-card",
        }


def test_names_with_html_and_control_characters_are_shown_as_text(app, acme):
    """Attack (stored XSS): a key named with markup and control characters,
    shown in the member's list and in the audit log."""
    browser = signed_in(app, MIA)
    name = '<script>alert(1)</script>\x07\x1b\u202e"><img src=x onerror=alert(2)>'
    given_key(app, browser, name=name)
    listed = browser.get(PRIVACY).get_data(as_text=True)
    assert "<script>alert(1)" not in listed
    assert "<img src=x" not in listed
    [row] = credentials(app, MIA)
    # No control characters, and no bidi override that turns the list's
    # (or the audit log's) text around.
    assert not {"\x07", "\x1b", "\u202e"} & set(row.name)
    assert row.name.startswith("<script>")  # kept as text, shown escaped
    with app.app_context():
        details = db.session.scalars(
            sa.select(AuditEvent.details).where(
                AuditEvent.action == "mfa.webauthn_added"
            )
        ).all()
    assert all("\\u202e" not in json.dumps(d) for d in details)


# --- the MFA step's key branch -------------------------------------------------


def test_the_mfa_step_answer_binds_to_the_pending_account(app, acme):
    """Attack: Rob is at Mia's MFA step (he knows her password); he asks
    for options in his own half-finished sign-in in another browser and
    answers Mia's step with his own key over his own challenge."""
    given_key(app, signed_in(app, MIA), "security_key")
    robs = given_key(app, signed_in(app, ROB), "security_key")
    rob_browser = app.test_client()
    login(rob_browser, ROB)
    answer = options(rob_browser, "/login/mfa/webauthn/options", "/login/mfa")
    credential = robs.get(answer.get_data(as_text=True))
    mia_browser = app.test_client()
    login(mia_browser, MIA)
    options(mia_browser, "/login/mfa/webauthn/options", "/login/mfa")
    response = post_form(
        mia_browser, "/login/mfa", {"method": "webauthn", "credential": credential}
    )
    assert response.status_code == 401
    assert session_cookie(mia_browser) is None


def test_a_passkey_sign_in_does_not_finish_another_pending_mfa_step(app, acme):
    """Attack: Rob, who knows Mia's password, is at her MFA step; he signs
    in with his own passkey in that browser. He must end up as Rob, and
    Mia's half-finished sign-in must not be usable afterwards."""
    given_key(app, signed_in(app, MIA), "security_key")
    robs = given_key(app, signed_in(app, ROB))
    browser = app.test_client()
    login(browser, MIA)
    assert passkey_sign_in(browser, robs).status_code == 302
    assert session_of(app, browser).user_id == user_id(app, ROB)
    # Mia's half-finished sign-in went with the old flow.
    assert browser.get("/login/mfa").status_code == 302
    assert session_of(app, browser).user_id == user_id(app, ROB)


def test_a_replayed_mfa_step_answer_is_refused(app, acme):
    """Attack: the security key's answer at the MFA step replayed in a
    second sign-in with the password."""
    key = given_key(app, signed_in(app, MIA), "security_key")
    browser = app.test_client()
    login(browser, MIA)
    answer = options(browser, "/login/mfa/webauthn/options", "/login/mfa")
    credential = key.get(answer.get_data(as_text=True))
    assert (
        post_form(
            browser, "/login/mfa", {"method": "webauthn", "credential": credential}
        ).status_code
        == 302
    )
    again = app.test_client()
    login(again, MIA)
    options(again, "/login/mfa/webauthn/options", "/login/mfa")
    response = post_form(
        again, "/login/mfa", {"method": "webauthn", "credential": credential}
    )
    assert response.status_code == 401
    assert session_cookie(again) is None
    assert key_at_mfa_step(again, key).status_code == 302


@pytest.mark.parametrize(
    "attack",
    [
        {"origin": "http://LOCALHOST"},
        {"origin": "http://localhost:8000"},
        {"origin": "https://localhost"},
        {"origin": "http://localhost."},
        {"origin": "http://xn--localhost-.example"},
        {"origin": "null"},
        {"rp_id": "localhost."},
        {"rp_id": "LOCALHOST"},
        {"rp_id": "evil.example"},
    ],
)
def test_passkey_sign_in_from_a_lookalike_origin_or_rp_id_is_refused(app, acme, attack):
    """Attack (MFA-3 through the web): an answer made on an origin that only
    looks like ours (case, trailing dot, port, scheme, IDN, opaque origin),
    or with authenticator data for a spelling of the RP id."""
    key = given_key(app, signed_in(app, MIA))
    browser = app.test_client()
    response = passkey_sign_in(browser, key, **attack)
    assert response.status_code == 401
    assert session_cookie(browser) is None
    assert events(app, "mfa.failure")[-1][1] in ("origin_mismatch", "rp_id_mismatch")

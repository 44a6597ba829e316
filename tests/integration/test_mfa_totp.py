"""The authenticator app and recovery codes through the browser's eyes: set
up, confirm and remove in the portal, the MFA step with a code or a
recovery code, set-up at sign-in when MFA is forced, and parallel
submissions of one code (MFA-1) on SQLite and PostgreSQL alike."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    RecoveryCode,
    SecurityPolicy,
    Session,
    TotpSecret,
    User,
)
from idp.services import mfa
from idp.services.context import Client, Context
from idp.services.mfa import recovery, totp
from tests.conftest import (
    CSRF_RE,
    csrf_from,
    give_authenticator,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)
from tests.integration.test_authorization import inline_code

ANN = "ann@example.com"
SETUP = "/portal/privacy-security/authenticator"
REMOVE = "/portal/privacy-security/authenticator/remove"
REGENERATE = "/portal/privacy-security/recovery-codes"
PRIVACY = "/portal/privacy-security"
SIGNIN_SETUP = "/login/mfa/setup/totp"
SECRET_RE = re.compile(r'<code class="totp-secret">([A-Z2-7 ]+)</code>')
CODES_RE = re.compile(r"<li><code>([0-9a-z]{6}-[0-9a-z]{6})</code></li>")


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, ANN)
    return ws


def force_mfa(app, ws, mode: str = "force") -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).mfa_mode = mode
        db.session.commit()


def code_for(app, secret: str, seconds: int = 0) -> str:  # type: ignore[no-untyped-def]
    moment = app.extensions["idp"].clock() + timedelta(seconds=seconds)
    return pyotp.TOTP(secret).at(moment)


def secret_on(page: str) -> str:
    match = SECRET_RE.search(page)
    assert match, "no secret on the set-up page"
    return match.group(1).replace(" ", "")


def events(app, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


def totp_row(app, email: str = ANN) -> TotpSecret | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(
            sa.select(TotpSecret).join(User).where(User.email == email)
        )


def sessions_of(app, email: str = ANN) -> list[Session]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Session)
                .join(User)
                .where(User.email == email, Session.revoked_at.is_(None))
            )
        )


def submit(client, code: str, method: str = "totp"):  # type: ignore[no-untyped-def]
    token = csrf_from(client, "/login/mfa")
    return client.post(
        "/login/mfa", data={"method": method, "code": code, "csrf_token": token}
    )


def signed_in_with_code(app, clock, secret: str):  # type: ignore[no-untyped-def]
    """A new browser signed in with the password and a code. The clock moves
    on a step first, since each code works once."""
    clock.advance(seconds=30)
    client = app.test_client()
    assert login(client, ANN).headers["Location"] == "/login/mfa"
    assert submit(client, code_for(app, secret)).status_code == 302
    return client


def set_up_in_portal(app, client) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """Set-up from the portal; returns the secret and the recovery codes."""
    page = client.get(SETUP).get_data(as_text=True)
    secret = secret_on(page)
    answer = post_form(client, SETUP, {"code": code_for(app, secret)}, csrf_page=SETUP)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    codes = CODES_RE.findall(answer.get_data(as_text=True))
    return secret, codes


def recovery_codes_of(app, email: str = ANN) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        return recovery.issue(Context.for_user(user, Client()), user)


# --- the portal -----------------------------------------------------------------


def test_privacy_tab_offers_set_up(app, acme):
    client = signed_in(app, ANN)
    page = client.get(PRIVACY).get_data(as_text=True)
    assert "Multi-factor authentication (MFA)" in page
    assert f'href="{SETUP}"' in page and ">Set up<" in page
    assert "Recovery codes" not in page


def test_set_up_shows_a_qr_code_and_the_secret(app, acme):
    client = signed_in(app, ANN)

    answer = client.get(SETUP)

    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert '<svg width="' in page and 'class="qr-code"' in page
    secret = secret_on(page)
    assert f"otpauth://totp/Portcullis:ann%40example.com?secret={secret}" in page
    assert inline_code(page) == []
    row = totp_row(app)
    assert row is not None and row.confirmed_at is None
    assert secret not in row.secret_encrypted


def test_set_up_in_the_portal_shows_recovery_codes_once(app, acme):
    client = signed_in(app, ANN)

    _, codes = set_up_in_portal(app, client)

    assert len(codes) == len(set(codes)) == 10
    row = totp_row(app)
    assert row is not None and row.confirmed_at is not None
    assert [e.action for e in events(app, "mfa.totp_enabled")] == ["mfa.totp_enabled"]
    assert len(events(app, "mfa.recovery_issued")) == 1
    page = client.get(PRIVACY).get_data(as_text=True)
    assert "An authenticator app is set up" in page and ">Remove<" in page
    assert "10 unused codes left" in page
    assert not any(code in page for code in codes)
    # The codes are shown once: nothing shows them again.
    assert not CODES_RE.search(client.get(SETUP).get_data(as_text=True))


def test_adding_a_factor_offers_to_log_out_other_sessions(app, acme):
    signed_in(app, ANN)
    client = signed_in(app, ANN)
    set_up_in_portal(app, client)
    page = client.get(PRIVACY).get_data(as_text=True)
    assert "Your sign-in methods changed" in page


def test_a_wrong_code_shows_the_same_set_up_again(app, acme):
    client = signed_in(app, ANN)
    secret = secret_on(client.get(SETUP).get_data(as_text=True))

    answer = post_form(
        client, SETUP, {"code": code_for(app, secret, 120)}, csrf_page=SETUP
    )

    assert answer.status_code == 401
    page = answer.get_data(as_text=True)
    assert "That code is not right" in page
    assert secret_on(page) == secret
    assert totp_row(app).confirmed_at is None
    (failure,) = events(app, "mfa.failure")
    assert (failure.reason, failure.actor_label) == ("totp_invalid", ANN)
    # The set-up still works with the right code.
    answer = post_form(client, SETUP, {"code": code_for(app, secret)}, csrf_page=SETUP)
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"code": "1" * 65}, 400),
        ({"code": "12345\x00"}, 400),
        ({}, 401),
        ({"code": "<script>"}, 401),
    ],
    ids=["overlong", "nul", "missing", "markup"],
)
def test_hostile_set_up_forms_get_a_4xx(app, acme, form, status):
    client = signed_in(app, ANN)
    client.get(SETUP)
    before = len(events(app, "mfa.failure")) + len(events(app, "request.refused"))

    answer = post_form(client, SETUP, form, csrf_page=SETUP)

    assert answer.status_code == status
    assert "<script>" not in answer.get_data(as_text=True)
    assert totp_row(app).confirmed_at is None
    after = len(events(app, "mfa.failure")) + len(events(app, "request.refused"))
    assert after == before + 1


@pytest.mark.parametrize(
    "overrides", [{"mfa": {"failure_limit": 2, "lockout_seconds": 300}}]
)
def test_wrong_set_up_codes_are_throttled(app, acme, overrides):
    client = signed_in(app, ANN)
    page = client.get(SETUP).get_data(as_text=True)
    secret = secret_on(page)
    token = CSRF_RE.search(page)
    assert token is not None
    for _ in range(2):
        wrong = code_for(app, secret, 300)
        client.post(SETUP, data={"code": wrong, "csrf_token": token.group(1)})

    answer = client.post(
        SETUP, data={"code": code_for(app, secret), "csrf_token": token.group(1)}
    )

    assert answer.status_code == 429
    assert 0 < int(answer.headers["Retry-After"]) <= 300
    assert "Too many wrong codes" in answer.get_data(as_text=True)
    assert totp_row(app).confirmed_at is None


def test_confirming_without_a_set_up_is_refused(app, acme):
    client = signed_in(app, ANN)
    answer = post_form(client, SETUP, {"code": "123456"}, csrf_page=PRIVACY)
    assert answer.status_code == 400
    assert "Start the set-up again" in answer.get_data(as_text=True)
    (event,) = events(app, "request.refused")
    assert event.reason == "totp_setup_missing"


def test_set_up_again_while_one_is_on_goes_back_to_the_tab(app, acme, clock):
    client = signed_in_with_code(app, clock, give_authenticator(app, ANN))
    answer = client.get(SETUP)
    assert (answer.status_code, answer.headers["Location"]) == (302, PRIVACY)
    assert "already set up" in client.get(PRIVACY).get_data(as_text=True)


def test_removing_the_app(app, acme, clock):
    secret = give_authenticator(app, ANN)
    signed_in_with_code(app, clock, secret)
    client = signed_in_with_code(app, clock, secret)

    answer = post_form(client, REMOVE, {}, csrf_page=PRIVACY)

    assert (answer.status_code, answer.headers["Location"]) == (302, PRIVACY)
    assert totp_row(app) is None
    page = client.get(PRIVACY).get_data(as_text=True)
    assert "authenticator app was removed" in page
    assert "Your sign-in methods changed" in page
    (event,) = events(app, "mfa.totp_removed")
    assert event.actor_label == ANN


def test_removing_what_is_not_there_is_404(app, acme):
    client = signed_in(app, ANN)
    answer = post_form(client, REMOVE, {}, csrf_page=PRIVACY)
    assert answer.status_code == 404
    (event,) = events(app, "request.refused")
    assert event.reason == "totp_missing"


@pytest.mark.parametrize("mode", ["force", "force_except_sso"])
def test_the_last_factor_cannot_go_while_mfa_is_forced(app, acme, clock, mode):
    secret = give_authenticator(app, ANN)
    force_mfa(app, acme, mode)
    client = signed_in_with_code(app, clock, secret)

    answer = post_form(client, REMOVE, {}, csrf_page=PRIVACY)

    assert answer.status_code == 403
    assert "cannot be removed" in answer.get_data(as_text=True)
    assert totp_row(app) is not None
    (event,) = events(app, "request.refused")
    assert event.reason == "last_factor"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", SETUP), ("POST", SETUP), ("POST", REMOVE), ("POST", REGENERATE)],
)
def test_changes_need_a_recent_sign_in(app, acme, clock, method, path):
    client = signed_in_with_code(app, clock, give_authenticator(app, ANN))
    token = csrf_from(client, PRIVACY)
    clock.advance(minutes=11)
    before = (totp_row(app).secret_encrypted, len(events(app, "mfa.recovery_issued")))

    if method == "GET":
        answer = client.get(path)
    else:
        answer = client.post(path, data={"code": "123456", "csrf_token": token})

    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/portal/reauthenticate?next=")
    after = (totp_row(app).secret_encrypted, len(events(app, "mfa.recovery_issued")))
    assert after == before


def test_regenerating_recovery_codes(app, acme, clock):
    secret = give_authenticator(app, ANN)
    old = recovery_codes_of(app)
    client = signed_in_with_code(app, clock, secret)

    answer = post_form(client, REGENERATE, {}, csrf_page=PRIVACY)

    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    new = CODES_RE.findall(page)
    assert len(new) == 10 and not set(new) & set(old)
    assert inline_code(page) == []
    assert answer.headers["Cache-Control"] == "no-store"
    with app.app_context():
        hashes = set(db.session.scalars(sa.select(RecoveryCode.code_hash)))
        owner = db.session.scalar(sa.select(RecoveryCode.user_id))
        expected = {
            recovery.digests(owner, recovery.normalize(c) or "")[0] for c in new
        }
    assert hashes == expected


def test_no_recovery_codes_without_a_factor(app, acme):
    client = signed_in(app, ANN)
    answer = post_form(client, REGENERATE, {}, csrf_page=PRIVACY)
    assert answer.status_code == 409
    (event,) = events(app, "request.refused")
    assert event.reason == "no_factor"


# --- the MFA step -------------------------------------------------------------------


def test_password_then_code_signs_in(app, acme):
    secret = give_authenticator(app, ANN)
    client = app.test_client()

    assert login(client, ANN).headers["Location"] == "/login/mfa"
    answer = submit(client, code_for(app, secret))

    assert (answer.status_code, answer.headers["Location"]) == (302, "/portal/profile")
    (row,) = sessions_of(app)
    assert row.amr == ["pwd", "otp", "mfa"]
    assert client.get("/portal/profile").status_code == 200


def test_a_code_used_in_one_browser_is_refused_in_another(app, acme, clock):
    secret = give_authenticator(app, ANN)
    first, second = app.test_client(), app.test_client()
    code = code_for(app, secret)
    login(first, ANN)
    assert submit(first, code).status_code == 302

    clock.advance(seconds=20)
    login(second, ANN)
    answer = submit(second, code)

    assert answer.status_code == 401
    assert "already used" in answer.get_data(as_text=True)
    assert session_cookie(second) is None
    assert len(sessions_of(app)) == 1


def test_a_recovery_code_signs_in_once_and_the_member_is_told(app, acme, mailer):
    give_authenticator(app, ANN)
    codes = recovery_codes_of(app)
    client = app.test_client()
    login(client, ANN)

    answer = submit(client, codes[0].upper(), method="recovery")

    assert (answer.status_code, answer.headers["Location"]) == (302, "/portal/profile")
    (row,) = sessions_of(app)
    assert row.amr == ["pwd", "otp", "mfa"]
    (used,) = events(app, "mfa.recovery_used")
    assert used.details == {"remaining": 9}
    mail = mailer.last_to(ANN)
    assert "recovery code was used" in mail.subject
    assert "9 of your codes are left" in mail.text

    again = app.test_client()
    login(again, ANN)
    refused = submit(again, codes[0], method="recovery")
    assert refused.status_code == 401
    assert "not right, or it was already used" in refused.get_data(as_text=True)
    assert session_cookie(again) is None


@pytest.mark.parametrize(
    "overrides", [{"mfa": {"failure_limit": 3, "lockout_seconds": 300}}]
)
def test_wrong_codes_at_the_step_are_throttled_per_member(app, acme, clock, overrides):
    secret = give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    good = {code_for(app, secret, s) for s in (-30, 0, 30)}
    wrong = next(c for c in ("111111", "222222", "333333") if c not in good)
    statuses = [submit(client, wrong).status_code for _ in range(3)]

    answer = submit(client, code_for(app, secret))

    assert statuses == [401, 401, 401]
    assert answer.status_code == 429
    assert "Too many wrong codes" in answer.get_data(as_text=True)
    assert session_cookie(client) is None
    reasons = [e.reason for e in events(app, "mfa.failure")]
    assert reasons == ["totp_invalid"] * 3 + ["mfa_throttled"]

    clock.advance(seconds=301)
    login(client, ANN)
    assert submit(client, code_for(app, secret)).status_code == 302


# --- set-up at sign-in --------------------------------------------------------------


def test_forced_mfa_takes_a_member_without_a_factor_through_set_up(app, acme):
    force_mfa(app, acme)
    client = app.test_client()

    assert login(client, ANN).headers["Location"] == "/login/mfa/setup"
    setup_page = client.get(SIGNIN_SETUP)
    assert setup_page.status_code == 200
    assert inline_code(setup_page.get_data(as_text=True)) == []
    secret = secret_on(setup_page.get_data(as_text=True))
    assert session_cookie(client) is None

    codes_page = post_form(
        client, SIGNIN_SETUP, {"code": code_for(app, secret)}, csrf_page=SIGNIN_SETUP
    )

    assert codes_page.status_code == 200
    page = codes_page.get_data(as_text=True)
    assert len(CODES_RE.findall(page)) == 10
    assert 'action="/login/mfa/setup/done"' in page
    assert session_cookie(client) is None
    token = CSRF_RE.search(page)
    assert token is not None
    done = client.post("/login/mfa/setup/done", data={"csrf_token": token.group(1)})
    assert (done.status_code, done.headers["Location"]) == (302, "/portal/profile")
    (row,) = sessions_of(app)
    assert row.amr == ["pwd", "otp", "mfa"]
    assert client.get("/portal/profile").status_code == 200
    assert len(events(app, "mfa.totp_enabled")) == 1


def test_a_wrong_code_at_sign_in_set_up_shows_it_again(app, acme):
    force_mfa(app, acme)
    client = app.test_client()
    login(client, ANN)
    secret = secret_on(client.get(SIGNIN_SETUP).get_data(as_text=True))

    answer = post_form(
        client, SIGNIN_SETUP, {"code": code_for(app, secret, 90)}, csrf_page=None
    )

    assert answer.status_code == 401
    assert secret_on(answer.get_data(as_text=True)) == secret
    assert session_cookie(client) is None


def test_set_up_at_sign_in_is_only_for_enrolment(app, acme):
    """A member with a factor proves it: neither the set-up page nor the
    set-up's last step lets the password alone through."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    token = csrf_from(client, "/login/mfa")

    get = client.get(SIGNIN_SETUP)
    post = client.post(SIGNIN_SETUP, data={"code": "123456", "csrf_token": token})
    done = client.post("/login/mfa/setup/done", data={"csrf_token": token})

    assert get.headers["Location"] == "/login/mfa"
    assert post.headers["Location"] == "/login/mfa"
    assert done.headers["Location"] == "/login/mfa"
    assert session_cookie(client) is None
    assert sessions_of(app) == []
    with app.app_context():
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(TotpSecret)) == 1
        )


def test_set_up_at_sign_in_without_a_sign_in_goes_to_sign_in(app, acme):
    client = app.test_client()
    answer = client.get(SIGNIN_SETUP)
    assert answer.headers["Location"] == "/login?expired=1"


# --- parallel submissions (MFA-1) -----------------------------------------------


def in_parallel(app, call, count: int = 2) -> list[Any]:  # type: ignore[no-untyped-def]
    """Run ``call(user)`` on ``count`` threads, each in its own app context
    (its own database connection), released together."""
    start = threading.Barrier(count)
    outcomes: list[Any] = [None] * count

    def run(i: int) -> None:
        with app.app_context():
            user = db.session.scalar(sa.select(User).where(User.email == ANN))
            start.wait()
            try:
                call(user)
                outcomes[i] = "ok"
            except mfa.MfaFailed as exc:
                outcomes[i] = exc.code
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_one_code_submitted_twice_at_once_wins_once(app, acme):
    secret = give_authenticator(app, ANN)
    code = code_for(app, secret)
    ctx = Context.anonymous(Client(ip="198.51.100.9"))

    outcomes = in_parallel(app, lambda user: totp.verify(ctx, user, code), count=4)

    assert sorted(outcomes) == ["ok"] + ["totp_replayed"] * 3


def test_one_recovery_code_used_twice_at_once_wins_once(app, acme):
    give_authenticator(app, ANN)
    code = recovery_codes_of(app)[0]
    ctx = Context.anonymous(Client(ip="198.51.100.9"))

    outcomes = in_parallel(app, lambda user: recovery.use(ctx, user, code), count=4)

    assert sorted(outcomes) == ["ok"] + ["recovery_invalid"] * 3
    assert len(events(app, "mfa.recovery_used")) == 1


def test_two_browsers_sending_one_code_at_once_get_one_session(app, acme):
    secret = give_authenticator(app, ANN)
    clients = [app.test_client() for _ in range(2)]
    tokens = []
    for client in clients:
        login(client, ANN)
        tokens.append(csrf_from(client, "/login/mfa"))
    code = code_for(app, secret)
    start = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def send(i: int) -> None:
        start.wait()
        answers[i] = clients[i].post(
            "/login/mfa",
            data={"method": "totp", "code": code, "csrf_token": tokens[i]},
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # The loser is refused the code (401) or, when the winner's sign-in
    # already ended the shared flow, sent back to sign in (302 to /login).
    winners = [
        a
        for a in answers
        if a.status_code == 302 and a.headers["Location"].startswith("/portal")
    ]
    assert len(winners) == 1
    loser = next(a for a in answers if a is not winners[0])
    assert loser.status_code == 401 or loser.headers["Location"].startswith("/login")
    assert len(sessions_of(app)) == 1

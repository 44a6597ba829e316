"""Attacks on multi-factor sign-in: each test names an attack in its
docstring and asserts the safe outcome. They run on SQLite and PostgreSQL
alike (PORTCULLIS_TEST_DB)."""

from __future__ import annotations

import hashlib
import html
import posixpath
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pyotp
import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    IpAllowEntry,
    LoginThrottle,
    RecoveryCode,
    SecurityPolicy,
    Session,
    TotpSecret,
    User,
    WebAuthnCredential,
)
from idp.services import mfa
from idp.services.context import Client, Context
from idp.services.errors import Forbidden, Throttled
from idp.services.mfa import recovery, totp
from idp.state import state
from tests.conftest import (
    CSRF_RE,
    PASSWORD,
    TOTP_SECRET,
    csrf_from,
    give_authenticator,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
    table_rows,
)
from tests.integration.test_accounts import link_path, reset_mail_inline  # noqa: F401
from tests.integration.test_mfa_totp import CODES_RE, secret_on

ANN = "ann@example.com"
BOB = "bob@example.com"
BOSS = "boss@example.com"
PROXY = "10.0.0.5"
FLOW_COOKIE = "portcullis_flow"
STEP = "/login/mfa"
SETUP_CHOICE = "/login/mfa/setup"
SETUP_TOTP = "/login/mfa/setup/totp"
SETUP_DONE = "/login/mfa/setup/done"
PORTAL_SETUP = "/portal/privacy-security/authenticator"
PORTAL_REMOVE = "/portal/privacy-security/authenticator/remove"
PORTAL_CODES = "/portal/privacy-security/recovery-codes"
PRIVACY = "/portal/privacy-security"
REAUTH = "/portal/reauthenticate"
CLIENT = Client(ip="198.51.100.9")
THROTTLED = {"gateway": {"trusted_proxies": [PROXY]}, "mfa": {"failure_limit": 3}}


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"gateway": {"trusted_proxies": [PROXY]}}


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, ANN)
    make_user(app, ws, BOB)
    make_user(app, ws, BOSS, role="admin")
    return ws


# --- helpers ------------------------------------------------------------------


def force_mfa(app, ws, mode: str = "force") -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).mfa_mode = mode
        db.session.commit()


def code_for(app, secret: str = TOTP_SECRET, seconds: int = 0) -> str:  # type: ignore[no-untyped-def]
    moment = app.extensions["idp"].clock() + timedelta(seconds=seconds)
    return pyotp.TOTP(secret).at(moment)


def wrong_code(app) -> str:  # type: ignore[no-untyped-def]
    """A well-formed code that is right for none of the accepted steps."""
    good = {code_for(app, seconds=s) for s in (-30, 0, 30)}
    return next(c for c in ("111111", "222222", "333333", "444444") if c not in good)


def submit(client, code: str, method: str = "totp"):  # type: ignore[no-untyped-def]
    token = csrf_from(client, STEP)
    return client.post(STEP, data={"method": method, "code": code, "csrf_token": token})


def user_id(app, email: str):  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.email == email))


def live_sessions(app, email: str = ANN) -> list[Session]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Session)
                .join(User)
                .where(User.email == email, Session.revoked_at.is_(None))
            )
        )


def events(app, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


def audit_count(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent))


def ask_gateway(client):  # type: ignore[no-untyped-def]
    return client.get(
        "/auth/check",
        headers={
            "X-Original-URL": "http://localhost/dashboard",
            "X-Original-Method": "GET",
        },
        environ_base={"REMOTE_ADDR": PROXY},
    )


def copy_flow(app, source):  # type: ignore[no-untyped-def]
    """A new browser holding a copy of ``source``'s flow cookie."""
    held = source.get_cookie(FLOW_COOKIE)
    assert held is not None
    thief = app.test_client()
    thief.set_cookie(FLOW_COOKIE, held.value, domain=held.domain)
    return thief


def issue_codes(app, email: str = ANN) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        return recovery.issue(Context.for_user(user, CLIENT), user)


def signed_in_with_mfa(app, clock, email: str = ANN):  # type: ignore[no-untyped-def]
    """A browser signed in with the password and a fresh code (the clock
    moves a step on first, since each code works once)."""
    clock.advance(seconds=30)
    client = app.test_client()
    assert login(client, email).headers["Location"] == STEP
    answer = submit(client, code_for(app))
    assert answer.status_code == 302, answer.get_data(as_text=True)[:300]
    return client


def enrol_at_sign_in(app, client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """In a forced-MFA sign-in: set up the app and stop on the recovery codes
    page. Returns the secret and that page's CSRF token."""
    assert login(client, ANN).headers["Location"] == SETUP_CHOICE
    secret = secret_on(client.get(SETUP_TOTP).get_data(as_text=True))
    page = post_form(client, SETUP_TOTP, {"code": code_for(app, secret)})
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    token = CSRF_RE.search(page.get_data(as_text=True))
    assert token is not None
    return secret, token.group(1)


def signed_in_answers(answers: list[Any]) -> int:
    """How many answers issued a session. The others are refused: 401 for a
    spent code, or sent to sign in again when the winner's sign-in ended
    their flow first (either is safe; which one is a matter of timing)."""
    for answer in answers:
        assert answer.status_code in (302, 401), answer.status_code
        if answer.status_code == 302:
            assert answer.headers["Location"] in ("/portal/profile", "/login?expired=1")
    return sum(a.headers.get("Location") == "/portal/profile" for a in answers)


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call on its own thread, released together; returns each
    result, or the exception it raised."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome is the result
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def as_member(app, email: str, call: Callable[[User], Any]) -> Callable[[], Any]:  # type: ignore[no-untyped-def]
    """``call(user)`` in an app context of its own (its own connection)."""

    def run() -> Any:
        with app.app_context():
            try:
                user = db.session.scalar(sa.select(User).where(User.email == email))
                call(user)
                return "ok"
            except mfa.MfaFailed as exc:
                return exc.code
            except (Throttled, Forbidden) as exc:
                return exc.code
            finally:
                db.session.remove()

    return run


# --- the password alone -----------------------------------------------------------


def test_the_password_alone_reaches_no_page_and_no_gateway(app, acme):
    """Attack: with only the password of a member who has a factor, open
    portal pages, the set-up pages and the gateway check (as the trusted
    proxy) while the sign-in waits at the MFA step."""
    give_authenticator(app, ANN)
    client = app.test_client()
    assert login(client, ANN).headers["Location"] == STEP

    for page in ("/portal/profile", PRIVACY, "/portal/users", PORTAL_SETUP, REAUTH):
        answer = client.get(page)
        assert answer.status_code == 302, page
        assert answer.headers["Location"].startswith("/login"), page
    assert ask_gateway(client).status_code == 401
    token = csrf_from(client, STEP)
    done = client.post(SETUP_DONE, data={"csrf_token": token})
    assert done.headers["Location"] == STEP
    assert session_cookie(client) is None
    assert live_sessions(app) == []


def test_forced_set_up_cannot_be_skipped(app, acme):
    """Attack: MFA is forced and the member has no factor; with the password
    go straight to the set-up's last step, the MFA step, the portal and the
    gateway instead of setting a factor up (and with a set-up begun but not
    confirmed)."""
    force_mfa(app, acme)
    client = app.test_client()
    assert login(client, ANN).headers["Location"] == SETUP_CHOICE
    # The set-up page: a token, and a secret waiting that is never confirmed.
    token = csrf_from(client, SETUP_TOTP)

    done_get = client.get(SETUP_DONE)
    done_post = client.post(SETUP_DONE, data={"csrf_token": token})
    step = client.post(
        STEP, data={"method": "recovery", "code": "x" * 12, "csrf_token": token}
    )

    assert done_get.headers["Location"] == SETUP_CHOICE
    assert done_post.headers["Location"] == SETUP_CHOICE
    assert step.status_code == 302 and step.headers["Location"].startswith("/login")
    assert client.get("/portal/profile").status_code == 302
    assert ask_gateway(client).status_code == 401
    assert session_cookie(client) is None
    assert live_sessions(app) == []


def test_a_wrong_password_says_nothing_about_factors(app, acme):
    """Attack (enumeration): compare the answer to a wrong password for a
    member with a factor and one without; neither the status nor the page
    may tell them apart."""
    give_authenticator(app, ANN)
    answers = []
    for email in (ANN, BOB):
        client = app.test_client()
        answer = login(client, email, "not the password at all")
        answers.append((answer.status_code, answer.get_data(as_text=True)))
        assert client.get(STEP).headers["Location"].startswith("/login")
    body = [
        CSRF_RE.sub("", a[1]).replace(ANN, "EMAIL").replace(BOB, "EMAIL")
        for a in answers
    ]
    assert answers[0][0] == answers[1][0] == 401
    assert body[0] == body[1]


# --- the flow cookie ------------------------------------------------------------


def test_a_copied_flow_dies_when_the_member_signs_in_elsewhere(app, acme, clock):
    """Attack: copy the flow cookie at the MFA step into another browser; the
    member signs in elsewhere; the copy then presents a fresh valid code."""
    give_authenticator(app, ANN)
    victim = app.test_client()
    login(victim, ANN)
    thief = copy_flow(app, victim)
    signed_in_with_mfa(app, clock)  # the member, in a third browser

    clock.advance(seconds=30)
    answer = thief.get(STEP)

    assert answer.headers["Location"] == "/login?expired=1"
    assert victim.get(STEP).headers["Location"] == "/login?expired=1"
    assert len(live_sessions(app)) == 1


def test_a_flow_dies_when_the_password_changes(app, acme, clock):
    """Attack: hold a flow at the MFA step (password known, say phished); the
    member changes the password; finish the old flow with a valid code."""
    give_authenticator(app, ANN)
    thief = app.test_client()
    login(thief, ANN)
    token = csrf_from(thief, STEP)
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == ANN))
        user.password_hash = state().passwords.hash("a brand new passphrase here")
        db.session.commit()

    answer = thief.post(
        STEP, data={"method": "totp", "code": code_for(app), "csrf_token": token}
    )

    assert answer.headers["Location"] == "/login?expired=1"
    assert live_sessions(app) == []
    with app.app_context():
        # The code was never checked, so it is still unused.
        assert db.session.scalar(sa.select(TotpSecret.last_step)) is None


def test_a_copied_set_up_flow_cannot_finish_again(app, acme, clock):
    """Attack: during a forced set-up, copy the flow cookie on the recovery
    codes page (it already records the confirmed factor); after the member
    continues, replay it at /login/mfa/setup/done for a second session."""
    force_mfa(app, acme)
    victim = app.test_client()
    _, token = enrol_at_sign_in(app, victim)
    thief = copy_flow(app, victim)
    assert victim.post(SETUP_DONE, data={"csrf_token": token}).status_code == 302

    clock.advance(seconds=1)
    answer = thief.post(SETUP_DONE, data={"csrf_token": token})

    assert answer.headers["Location"] == "/login?expired=1"
    assert session_cookie(thief) is None
    assert len(live_sessions(app)) == 1


def test_a_copied_set_up_flow_posted_twice_at_once_signs_in_once(app, acme):
    """Attack: post the set-up's last step from the member's browser and from
    a copy of its flow cookie at the same instant (no code is spent there),
    hoping both pass the flow check before either session is written."""
    force_mfa(app, acme)
    victim = app.test_client()
    _, token = enrol_at_sign_in(app, victim)
    thief = copy_flow(app, victim)

    answers = in_parallel(
        [
            lambda c=c: c.post(SETUP_DONE, data={"csrf_token": token})
            for c in (victim, thief)
        ]
    )

    issued = [a for a in answers if a.headers["Location"] == "/portal/profile"]
    assert len(issued) == 1
    assert len(live_sessions(app)) == 1


def test_an_mfa_reset_ends_a_waiting_flow(app, acme):
    """Attack: hold a flow at the MFA step; an admin resets the member's MFA
    (lost phone); use the old flow to reach set-up or the step."""
    give_authenticator(app, ANN)
    thief = app.test_client()
    login(thief, ANN)
    token = csrf_from(thief, STEP)
    admin = signed_in(app, BOSS)
    uid = user_id(app, ANN)
    post_form(admin, f"/portal/users/{uid}/reset-mfa", {}, csrf_page="/portal/users")

    step = thief.post(
        STEP, data={"method": "totp", "code": "123456", "csrf_token": token}
    )
    setup = thief.get(SETUP_TOTP)
    done = thief.post(SETUP_DONE, data={"csrf_token": token})

    assert step.headers["Location"] == "/login?expired=1"
    assert setup.headers["Location"] == STEP  # not an enrolment flow
    assert done.headers["Location"] == SETUP_CHOICE
    assert live_sessions(app) == []
    with app.app_context():
        assert db.session.scalars(sa.select(TotpSecret)).all() == []


def test_a_member_disabled_or_moved_off_the_allow_list_mid_flow_is_refused(app, acme):
    """Attack: the password and a right code, after the account was disabled
    (or the allow-list tightened) while the flow waited at the MFA step."""
    give_authenticator(app, ANN)
    disabled = app.test_client()
    login(disabled, ANN)
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == ANN).values(status="disabled")
        )
        db.session.commit()
    assert submit(disabled, code_for(app)).status_code == 403
    assert session_cookie(disabled) is None
    assert live_sessions(app) == []

    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == ANN).values(status="active")
        )
        db.session.commit()
    outside = app.test_client()
    login(outside, ANN)
    with app.app_context():
        db.session.add(IpAllowEntry(workspace_id=acme.id, network="203.0.113.0/24"))
        db.session.get(SecurityPolicy, acme.id).ip_restriction_enabled = True
        db.session.commit()
    assert submit(outside, code_for(app, seconds=30)).status_code == 403
    assert session_cookie(outside) is None
    assert live_sessions(app) == []
    reasons = [e.reason for e in events(app, "signin.failure")]
    assert reasons == ["account_disabled", "ip_not_allowed"]


def test_the_session_token_after_the_mfa_step_is_new(app, acme, clock):
    """Attack (session fixation): plant a session cookie in the browser (one
    of the member's, or the attacker's own) before the member signs in with
    the MFA step; the token afterwards must be new and the planted one dead."""
    give_authenticator(app, ANN)
    planted_as_member = session_cookie(signed_in_with_mfa(app, clock))
    planted_own = session_cookie(signed_in(app, BOB))
    for planted in (planted_as_member, planted_own):
        browser = app.test_client()
        browser.set_cookie("portcullis_session", planted)
        clock.advance(seconds=30)
        # /login sends a signed-in browser on, so the form is posted as-is.
        post_form(browser, "/login", {"email": ANN}, csrf_page=PRIVACY)
        browser.post(
            "/login/password",
            data={"password": PASSWORD, "csrf_token": csrf_from(browser, PRIVACY)},
        )
        assert submit(browser, code_for(app)).status_code == 302
        token = session_cookie(browser)
        assert token and token != planted
        stale = app.test_client()
        stale.set_cookie("portcullis_session", planted)
        assert stale.get("/portal/profile").status_code == 302
    # The flow cookie no longer holds the half-finished sign-in.
    assert browser.get(STEP).headers["Location"] == "/login?expired=1"


# --- TOTP codes -----------------------------------------------------------------


@pytest.mark.parametrize("seconds", [-60, 60, -90, 90])
def test_codes_two_steps_away_are_refused(app, acme, seconds):
    """Attack: codes for T-60 and T+60 (and further), beyond the one-step
    tolerance."""
    give_authenticator(app, ANN)
    code = code_for(app, seconds=seconds)
    if code in {code_for(app, seconds=s) for s in (-30, 0, 30)}:
        pytest.skip("the code happens to repeat inside the window")
    client = app.test_client()
    login(client, ANN)
    answer = submit(client, code)
    assert answer.status_code == 401
    assert live_sessions(app) == []


def test_codes_one_step_away_work_each_once_in_order(app, acme, clock):
    """Attack: each of T-30, T and T+30 twice, in two browsers; and then the
    earlier steps again after a later one was accepted."""
    give_authenticator(app, ANN)
    outcomes = []
    for seconds in (-30, 0, 30):
        code = code_for(app, seconds=seconds)
        for _ in range(2):
            client = app.test_client()
            login(client, ANN)
            outcomes.append(submit(client, code).status_code)
    assert outcomes == [302, 401, 302, 401, 302, 401]
    for seconds in (-30, 0):
        client = app.test_client()
        login(client, ANN)
        assert submit(client, code_for(app, seconds=seconds)).status_code == 401
    assert [e.reason for e in events(app, "mfa.failure")].count("totp_replayed") == 5


def test_a_code_with_a_leading_zero_works(app, acme, clock):
    """Attack on parsing: a code starting with 0 must not be read as a number
    (and lose its zero); ``12345`` is not ``012345``."""
    give_authenticator(app, ANN)
    for _ in range(400):
        if code_for(app).startswith("0"):
            break
        clock.advance(seconds=30)
    code = code_for(app)
    assert code.startswith("0")
    client = app.test_client()
    login(client, ANN)
    assert submit(client, code[1:]).status_code == 401
    assert submit(client, str(int(code))).status_code == 401
    assert submit(client, code).status_code == 302


def test_the_set_up_code_cannot_be_used_again_to_sign_in(app, acme):
    """Attack: the code typed to confirm a set-up (seen over the shoulder)
    reused at the next sign-in's MFA step in the same 30 s."""
    force_mfa(app, acme)
    member = app.test_client()
    secret, token = enrol_at_sign_in(app, member)
    member.post(SETUP_DONE, data={"csrf_token": token})
    member.post("/logout", data={"csrf_token": csrf_from(member, PRIVACY)})

    thief = app.test_client()
    assert login(thief, ANN).headers["Location"] == STEP
    answer = submit(thief, code_for(app, secret))

    assert answer.status_code == 401
    assert events(app, "mfa.failure")[-1].reason == "totp_replayed"
    assert session_cookie(thief) is None


@pytest.mark.parametrize(
    "code",
    ["１２３４５６", "١٢٣٤٥٦", "+12345", "-12345", "12345.", "0x1e240", "1e5"],
    ids=["fullwidth", "arabic-indic", "plus", "minus", "dot", "hex", "exponent"],
)
def test_codes_in_odd_spellings_are_refused_without_a_500(app, acme, code):
    """Attack on parsing: Unicode digits, NUL, signs and other spellings that
    a lax int() or regex would take as a code."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    before = table_rows(app, TotpSecret, Session)
    answer = submit(client, code)
    assert answer.status_code == 401
    assert table_rows(app, TotpSecret, Session) == before
    assert events(app, "mfa.failure")[-1].reason == "totp_malformed"


def test_a_code_with_a_nul_is_refused_before_the_database(app, acme):
    """Attack: a NUL in the code (PostgreSQL refuses NUL in text: a careless
    path would answer 500)."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    before = table_rows(app, TotpSecret, Session, LoginThrottle)
    audited = audit_count(app)
    answer = submit(client, code_for(app) + "\x00")
    assert answer.status_code == 400
    assert table_rows(app, TotpSecret, Session, LoginThrottle) == before
    assert audit_count(app) == audited + 1


def test_one_code_from_four_browsers_at_once_signs_in_once(app, acme):
    """Attack (race): the same code from four browsers at once, on both
    databases: exactly one session."""
    give_authenticator(app, ANN)
    clients = [app.test_client() for _ in range(4)]
    tokens = []
    for client in clients:
        login(client, ANN)
        tokens.append(csrf_from(client, STEP))
    code = code_for(app)

    answers = in_parallel(
        [
            lambda c=c, t=t: c.post(
                STEP, data={"method": "totp", "code": code, "csrf_token": t}
            )
            for c, t in zip(clients, tokens, strict=True)
        ]
    )

    assert signed_in_answers(answers) == 1
    assert len(live_sessions(app)) == 1


# --- recovery codes ---------------------------------------------------------------


def test_a_recovery_code_in_other_spellings_still_works_once(app, acme):
    """Attack: spend a recovery code, then the same code upper-cased, without
    its dash, with spaces, a Unicode dash, and look-alikes (0/o, 1/l)."""
    give_authenticator(app, ANN)
    codes = issue_codes(app)
    code = codes[0]
    client = app.test_client()
    login(client, ANN)
    assert submit(client, code, method="recovery").status_code == 302

    raw = code.replace("-", "")
    spellings = [
        code.upper(),
        raw,
        f" {raw[:3]} {raw[3:6]} {raw[6:]} ",
        code.replace("-", "\u2013"),
        code.replace("0", "o").replace("1", "l"),
    ]
    for spelling in spellings:
        again = app.test_client()
        login(again, ANN)
        answer = submit(again, spelling, method="recovery")
        assert answer.status_code == 401, spelling
        assert session_cookie(again) is None
    assert len(events(app, "mfa.recovery_used")) == 1


def test_another_members_recovery_code_is_refused(app, acme):
    """Attack: sign in as Ann with one of Bob's recovery codes."""
    give_authenticator(app, ANN)
    give_authenticator(app, BOB)
    bobs = issue_codes(app, BOB)
    issue_codes(app, ANN)
    client = app.test_client()
    login(client, ANN)

    answer = submit(client, bobs[0], method="recovery")

    assert answer.status_code == 401
    assert live_sessions(app) == []
    with app.app_context():
        unused = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.used_at.is_(None))
        )
    assert unused == 20


def test_a_recovery_code_from_two_browsers_at_once_signs_in_once(app, acme):
    """Attack (race): one recovery code posted from two browsers at the same
    instant, on both databases."""
    give_authenticator(app, ANN)
    code = issue_codes(app)[0]
    clients = [app.test_client() for _ in range(2)]
    tokens = []
    for client in clients:
        login(client, ANN)
        tokens.append(csrf_from(client, STEP))

    answers = in_parallel(
        [
            lambda c=c, t=t: c.post(
                STEP, data={"method": "recovery", "code": code, "csrf_token": t}
            )
            for c, t in zip(clients, tokens, strict=True)
        ]
    )

    assert signed_in_answers(answers) == 1
    assert len(live_sessions(app)) == 1
    assert len(events(app, "mfa.recovery_used")) == 1


def test_regenerated_codes_kill_the_old_ones(app, acme, clock):
    """Attack: keep an old printout of recovery codes after the member
    regenerated them."""
    give_authenticator(app, ANN)
    old = issue_codes(app)
    member = signed_in_with_mfa(app, clock)
    page = post_form(member, PORTAL_CODES, {}, csrf_page=PRIVACY)
    new = CODES_RE.findall(page.get_data(as_text=True))
    assert len(new) == 10 and not set(new) & set(old)

    thief = app.test_client()
    login(thief, ANN)
    assert submit(thief, old[0], method="recovery").status_code == 401
    assert session_cookie(thief) is None


def test_no_secret_or_code_is_stored_in_clear(app, acme):
    """Attack (database read): look for the authenticator secret and the
    recovery codes, in any spelling, in every column of every table."""
    force_mfa(app, acme)
    member = app.test_client()
    secret, _ = enrol_at_sign_in(app, member)
    codes = issue_codes(app)
    needles = {secret, secret.lower(), *codes, *(c.replace("-", "") for c in codes)}
    with app.app_context():
        dump = []
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                dump.extend(str(v) for v in row)
    text = "\n".join(dump)
    assert not [n for n in needles if n in text]


# --- guessing ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [THROTTLED])
def test_alternating_codes_and_recovery_codes_share_one_count(app, acme, overrides):
    """Attack (throttle bypass): alternate wrong authenticator codes and wrong
    recovery codes, hoping each kind has its own count."""
    give_authenticator(app, ANN)
    right = issue_codes(app)[0]
    client = app.test_client()
    login(client, ANN)
    wrong = wrong_code(app)

    statuses = [
        submit(client, wrong).status_code,
        submit(client, "zzzzzz-zzzzzz", method="recovery").status_code,
        submit(client, wrong).status_code,
    ]
    after = [
        submit(client, right, method="recovery").status_code,
        submit(client, code_for(app)).status_code,
    ]

    assert statuses == [401, 401, 401]
    assert after == [429, 429]
    assert live_sessions(app) == []


@pytest.mark.parametrize("overrides", [THROTTLED])
def test_new_flows_do_not_reset_the_count(app, acme, overrides):
    """Attack (throttle bypass): after each wrong code, sign in again with the
    password (which clears the password count) for a fresh flow."""
    give_authenticator(app, ANN)
    wrong = wrong_code(app)
    statuses = []
    for _ in range(4):
        client = app.test_client()
        login(client, ANN)
        statuses.append(submit(client, wrong).status_code)
    client = app.test_client()
    login(client, ANN)
    assert statuses == [401, 401, 401, 429]
    assert submit(client, code_for(app)).status_code == 429


@pytest.mark.parametrize("overrides", [THROTTLED])
def test_the_set_up_path_does_not_reset_the_count(app, acme, overrides):
    """Attack (throttle bypass): between wrong codes at the MFA step, try the
    sign-in set-up page (whose success would clear the count)."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    token = csrf_from(client, STEP)
    wrong = wrong_code(app)
    first = [submit(client, wrong).status_code for _ in range(2)]
    setup_get = client.get(SETUP_TOTP)
    setup_post = client.post(SETUP_TOTP, data={"code": wrong, "csrf_token": token})
    third = submit(client, wrong).status_code

    assert first == [401, 401]
    assert setup_get.headers["Location"] == STEP
    assert setup_post.headers["Location"] == STEP
    assert third == 401
    assert submit(client, code_for(app)).status_code == 429
    with app.app_context():
        count = sa.select(sa.func.count()).select_from(TotpSecret)
        assert db.session.scalar(count) == 1


@pytest.mark.parametrize("overrides", [THROTTLED])
def test_after_a_lockout_each_wait_buys_one_guess(app, acme, clock, overrides):
    """Attack (slow brute force): wait out each lockout and guess again; the
    count must not start over at zero after every wait."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    wrong = wrong_code(app)
    assert [submit(client, wrong).status_code for _ in range(4)] == [401] * 3 + [429]

    clock.advance(seconds=301)
    login(client, ANN)
    assert submit(client, wrong).status_code == 401
    assert submit(client, wrong).status_code == 429


@pytest.mark.parametrize("overrides", [THROTTLED])
def test_a_burst_of_parallel_guesses_is_bounded_by_the_limit(app, acme, overrides):
    """Attack (race): twelve wrong codes at the same instant, on both
    databases, hoping all pass the check before any is counted."""
    give_authenticator(app, ANN)
    ctx = Context.anonymous(CLIENT)
    wrong = wrong_code(app)

    outcomes = in_parallel(
        [as_member(app, ANN, lambda u: totp.verify(ctx, u, wrong)) for _ in range(12)]
    )

    assert outcomes.count("totp_invalid") == 3
    assert outcomes.count("mfa_throttled") == 9


def test_an_email_spelled_like_the_mfa_count_cannot_lock_the_member(app, acme):
    """Attack (lock-out of another member): type ``mfa:<member id>`` as the
    email at the password step until it is locked, hoping it is the key the
    MFA step counts under."""
    give_authenticator(app, ANN)
    key = f"mfa:{user_id(app, ANN)}"
    for _ in range(11):
        login(app.test_client(), key.upper(), "wrong wrong wrong")
    client = app.test_client()
    login(client, ANN)
    assert submit(client, code_for(app)).status_code == 302
    with app.app_context():
        keys = db.session.scalars(sa.select(LoginThrottle.email)).all()
    assert keys == [key]


# --- CSRF -------------------------------------------------------------------------


def test_every_mfa_post_needs_the_csrf_token(app, acme):
    """Attack (CSRF): each POST of the MFA step, set-up, portal factor pages,
    re-authentication and Reset MFA, without a token or with another
    browser's token; nothing stored may change."""
    make_user(app, acme, "cat@example.com")
    give_authenticator(app, BOB)
    bob_id = user_id(app, BOB)
    admin = signed_in(app, BOSS)
    member = signed_in(app, ANN)
    member.get(PORTAL_SETUP)
    at_step = app.test_client()
    login(at_step, BOB)
    # A forced set-up, begun while forcing is on; the sessions above are
    # not used meanwhile (forcing would end them).
    force_mfa(app, acme)
    enrolling = app.test_client()
    assert login(enrolling, "cat@example.com").headers["Location"] == SETUP_CHOICE
    enrolling.get(SETUP_TOTP)
    force_mfa(app, acme, "off")
    other_token = csrf_from(app.test_client(), "/login")
    attempts = [
        (at_step, STEP, {"method": "totp", "code": code_for(app)}),
        (enrolling, SETUP_TOTP, {"code": "123456"}),
        (enrolling, SETUP_DONE, {}),
        (member, PORTAL_SETUP, {"code": "123456"}),
        (member, PORTAL_REMOVE, {}),
        (member, PORTAL_CODES, {}),
        (member, REAUTH, {"password": PASSWORD}),
        (admin, f"/portal/users/{bob_id}/reset-mfa", {}),
    ]
    models = (TotpSecret, RecoveryCode, Session, User, LoginThrottle)
    before = table_rows(app, *models)

    for client, path, form in attempts:
        for extra in ({}, {"csrf_token": other_token}):
            answer = client.post(path, data={**form, **extra})
            assert answer.status_code == 400, (path, extra)

    assert table_rows(app, *models) == before
    refused = [e.reason for e in events(app, "request.refused")]
    assert refused.count("csrf_failed") == 2 * len(attempts)


# --- removing factors -----------------------------------------------------------------


def add_security_key(app, email: str) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        db.session.add(
            WebAuthnCredential(
                workspace_id=user.workspace_id,
                user_id=user.id,
                kind="security_key",
                credential_id=b"attack-key-" + email.encode(),
                public_key=b"\x00" * 32,
                name="Key",
            )
        )
        db.session.commit()


def remove_key(user: User) -> None:
    """What a credential removal does: ask ensure_may_remove, then delete."""
    mfa.ensure_may_remove(user, credentials=1)
    db.session.execute(
        sa.delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id)
    )
    db.session.commit()


def test_two_removals_at_once_leave_a_factor_under_forced_mfa(app, acme):
    """Attack (race): with an authenticator app and a security key under
    forced MFA, remove both at the same instant, each seeing the other still
    there."""
    give_authenticator(app, ANN)
    add_security_key(app, ANN)
    force_mfa(app, acme)
    ctx = Context.anonymous(CLIENT)

    outcomes = in_parallel(
        [
            as_member(app, ANN, lambda u: totp.remove(ctx, u)),
            as_member(app, ANN, remove_key),
        ]
    )

    assert sorted(outcomes) == ["last_factor", "ok"]
    with app.app_context():
        left = mfa.factors(user_id(app, ANN))
    assert left.count == 1


def test_the_last_factor_cannot_be_removed_by_posting_twice(app, acme, clock):
    """Attack: under forced MFA, post *Remove* for the only factor twice at
    once from two signed-in browsers."""
    give_authenticator(app, ANN)
    force_mfa(app, acme)
    browsers = [signed_in_with_mfa(app, clock) for _ in range(2)]
    tokens = [csrf_from(b, PRIVACY) for b in browsers]

    answers = in_parallel(
        [
            lambda b=b, t=t: b.post(PORTAL_REMOVE, data={"csrf_token": t})
            for b, t in zip(browsers, tokens, strict=True)
        ]
    )

    assert [a.status_code for a in answers] == [403, 403]
    with app.app_context():
        count = sa.select(sa.func.count()).select_from(TotpSecret)
        assert db.session.scalar(count) == 1


def test_factor_changes_need_a_recent_sign_in_even_by_post(app, acme, clock):
    """Attack: a session older than the recent sign-in window (a stolen
    cookie) posts *Remove* and *Regenerate* directly."""
    give_authenticator(app, ANN)
    issue_codes(app)
    member = signed_in_with_mfa(app, clock)
    tokens = csrf_from(member, PRIVACY)
    clock.advance(minutes=11)
    before = table_rows(app, TotpSecret, RecoveryCode)

    for path in (PORTAL_REMOVE, PORTAL_CODES):
        answer = member.post(path, data={"csrf_token": tokens})
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith(REAUTH)
    assert table_rows(app, TotpSecret, RecoveryCode) == before


# --- Reset MFA ----------------------------------------------------------------------


def test_a_read_only_member_cannot_reset_mfa(app, acme, clock):
    """Attack (privilege): a Read Only member posts Reset MFA for a colleague,
    with a role field added for good measure."""
    give_authenticator(app, BOB)
    member = signed_in(app, ANN)
    bob_id = user_id(app, BOB)
    before = table_rows(app, TotpSecret, Session, User)

    page = member.get(f"/portal/users/{bob_id}/reset-mfa")
    answer = post_form(
        member,
        f"/portal/users/{bob_id}/reset-mfa",
        {"role": "admin"},
        csrf_page=PRIVACY,
    )

    assert page.status_code == 403
    assert answer.status_code == 403
    assert table_rows(app, TotpSecret, Session, User) == before
    assert events(app, "mfa.reset") == []


def test_an_admin_cannot_reset_another_workspaces_member(app, acme, idp):
    """Attack (cross-tenant): an admin of Acme resets the MFA of a member of
    Globex by id, at the page and by POST; and the CLI asked for the wrong
    workspace."""
    globex = make_workspace(app, "Globex")
    make_user(app, globex, "gil@globex.example")
    give_authenticator(app, "gil@globex.example")
    gil = user_id(app, "gil@globex.example")
    admin = signed_in(app, BOSS)
    before = table_rows(app, TotpSecret, Session)

    page = admin.get(f"/portal/users/{gil}/reset-mfa")
    answer = post_form(
        admin, f"/portal/users/{gil}/reset-mfa", {}, csrf_page="/portal/users"
    )
    code, _, err = idp(
        "user", "reset-mfa", "--workspace", acme.slug, "gil@globex.example"
    )

    assert page.status_code == 404
    assert "Authenticator" not in page.get_data(as_text=True)
    assert answer.status_code == 404
    assert code == 2 and "no member" in err
    assert table_rows(app, TotpSecret, Session) == before


# --- redirects ----------------------------------------------------------------------


HOSTILE_TARGETS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "/%5Cevil.example/",
    "/%2F%2Fevil.example/",
    "javascript:alert(1)",
    "http://localhost@evil.example/",
    "https:evil.example",
    "\t//evil.example",
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_rd_through_the_mfa_step_stays_on_site(app, acme, target):
    """Attack (open redirect): a sign-in link with ``rd`` to another site,
    carried through the password and the MFA step."""
    give_authenticator(app, ANN)
    client = app.test_client()
    post_form(
        client,
        "/login?rd=" + quote(target, safe=""),
        {"email": ANN},
        csrf_page="/login",
    )
    client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf_from(client, "/login/password")},
    )

    answer = submit(client, code_for(app))

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/portal/profile"


@pytest.mark.parametrize(
    "target",
    [
        *HOSTILE_TARGETS,
        "/portal/\\evil.example",
        "/portal//evil.example",
        "/portal/%2e%2e/%2e%2e/evil",
        "/portal/..%2f..%2fauth/check",
        "/portal/../../evil.example",
        "http://localhost/portal/profile",
        "/portal/\\\\evil.example",
    ],
)
def test_reauthenticate_next_stays_in_the_portal(app, acme, target):
    """Attack (open redirect): ``next`` on /portal/reauthenticate, as a link
    (GET) and as the posted form."""
    client = signed_in(app, ANN)
    page = client.get(REAUTH, query_string={"next": target}).get_data(as_text=True)
    answer = post_form(
        client, REAUTH, {"password": PASSWORD, "next": target}, csrf_page=REAUTH
    )
    hidden = re.search(r'name="next" value="([^"]*)"', page)
    assert hidden is not None
    for where in (html.unescape(hidden.group(1)), answer.headers["Location"]):
        # As a browser reads it: backslashes are slashes in http(s) URLs.
        landed = urlsplit(
            urljoin("http://localhost" + REAUTH, where.replace("\\", "/"))
        )
        assert landed.netloc == "localhost", where
        assert posixpath.normpath(landed.path).startswith("/portal/"), where


# --- hostile fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"method": "totp", "code": "1" * 65}, "field_too_long"),
        ({"method": "recovery", "code": "a" * 65}, "field_too_long"),
        ({"method": "totp" * 20, "code": "123456"}, "mfa_method_unknown"),
        ({"code": "123456"}, "mfa_method_unknown"),
    ],
    ids=["long-code", "long-recovery", "long-method", "no-method"],
)
def test_oversized_or_odd_step_fields_get_a_4xx_an_audit_entry_and_no_change(
    app, acme, form, reason
):
    """Attack: oversized and malformed fields at the MFA step: never a 500;
    a 4xx with an audit entry naming the reason; nothing stored changes."""
    give_authenticator(app, ANN)
    client = app.test_client()
    login(client, ANN)
    token = csrf_from(client, STEP)
    before = table_rows(app, TotpSecret, RecoveryCode, Session, LoginThrottle)
    audited = audit_count(app)

    answer = client.post(STEP, data={**form, "csrf_token": token})

    assert 400 <= answer.status_code < 500
    assert table_rows(app, TotpSecret, RecoveryCode, Session, LoginThrottle) == before
    assert audit_count(app) == audited + 1
    with app.app_context():
        latest = db.session.scalars(
            sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)
        ).one()
    assert latest.reason == reason


@pytest.mark.parametrize("path", [STEP, SETUP_TOTP, REAUTH])
def test_a_body_over_the_request_limit_is_refused_and_audited(app, acme, path):
    """Attack: a 1 MB field to the step, the sign-in set-up and
    re-authentication."""
    if path == STEP:
        give_authenticator(app, ANN)
    if path == SETUP_TOTP:
        force_mfa(app, acme)
    client = signed_in(app, ANN) if path == REAUTH else app.test_client()
    if path != REAUTH:
        login(client, ANN)
    token = csrf_from(client, path)
    field = "password" if path == REAUTH else "code"
    audited = audit_count(app)

    answer = client.post(path, data={field: "1" * 1_000_000, "csrf_token": token})

    assert answer.status_code == 413
    assert audit_count(app) == audited + 1


# --- the set-up page's secret ---------------------------------------------------------


def test_the_set_up_page_shows_each_member_only_their_own_secret(app, acme):
    """Attack: two members set up at once; neither page shows the other's
    secret, and Bob cannot confirm with a code of Ann's secret."""
    ann, bob = signed_in(app, ANN), signed_in(app, BOB)
    ann_secret = secret_on(ann.get(PORTAL_SETUP).get_data(as_text=True))
    bob_page = bob.get(PORTAL_SETUP).get_data(as_text=True)

    assert ann_secret not in bob_page.replace(" ", "")
    answer = post_form(
        bob, PORTAL_SETUP, {"code": code_for(app, ann_secret)}, csrf_page=PORTAL_SETUP
    )
    assert answer.status_code == 401
    assert ann_secret not in answer.get_data(as_text=True).replace(" ", "")


def test_a_set_up_in_progress_is_not_shown_to_another_browser(app, acme):
    """Attack (covert second factor): MFA is forced and Ann has no factor. An
    attacker with her password opens the sign-in set-up while she scans her
    QR code, hoping to be shown the same secret; or posts a wrong code so the
    error page shows the set-up waiting. Ann then confirms: the attacker must
    not know her authenticator's secret."""
    force_mfa(app, acme)
    ann = app.test_client()
    login(ann, ANN)
    ann_secret = secret_on(ann.get(SETUP_TOTP).get_data(as_text=True))

    thief = app.test_client()
    login(thief, ANN)
    token = csrf_from(thief, SETUP_TOTP)
    error_page = thief.post(SETUP_TOTP, data={"code": "000000", "csrf_token": token})
    shown_page = thief.get(SETUP_TOTP)

    for page in (error_page, shown_page):
        assert ann_secret not in page.get_data(as_text=True).replace(" ", "")


def test_a_portal_set_up_in_progress_is_not_shown_to_another_session(app, acme):
    """Attack: the same, in the portal: another session of the member (a
    stolen cookie) reads the secret the member is scanning."""
    ann = signed_in(app, ANN)
    ann_secret = secret_on(ann.get(PORTAL_SETUP).get_data(as_text=True))
    thief = signed_in(app, ANN)

    shown = thief.get(PORTAL_SETUP)
    error = post_form(thief, PORTAL_SETUP, {"code": "000000"}, csrf_page=PRIVACY)

    for page in (shown, error):
        assert ann_secret not in page.get_data(as_text=True).replace(" ", "")


def test_a_set_up_reload_in_the_same_browser_keeps_its_secret(app, acme, clock):
    """Guard for the fix above: the member's own reload still shows the
    secret just scanned, and confirming it works."""
    force_mfa(app, acme)
    client = app.test_client()
    login(client, ANN)
    first = secret_on(client.get(SETUP_TOTP).get_data(as_text=True))
    clock.advance(seconds=60)
    again = secret_on(client.get(SETUP_TOTP).get_data(as_text=True))
    assert first == again
    page = post_form(client, SETUP_TOTP, {"code": code_for(app, first)})
    assert page.status_code == 200
    assert len(CODES_RE.findall(page.get_data(as_text=True))) == 10


def test_set_up_and_codes_pages_are_not_cached(app, acme):
    """Attack (shared computer): read the secret or the recovery codes back
    from the browser's or a proxy's cache."""
    force_mfa(app, acme)
    client = app.test_client()
    login(client, ANN)
    setup = client.get(SETUP_TOTP)
    secret = secret_on(setup.get_data(as_text=True))
    codes = post_form(client, SETUP_TOTP, {"code": code_for(app, secret)})
    for page in (setup, codes):
        assert page.headers["Cache-Control"] == "no-store"


# --- other ways around the step ---------------------------------------------------


@pytest.mark.usefixtures("reset_mail_inline")
def test_a_password_reset_does_not_skip_the_factor(app, acme, mailer):
    """Attack (6.4.3): with the member's mailbox but not her phone, reset the
    password and expect to be signed in, or sign in with the new password
    without a code."""
    give_authenticator(app, ANN)
    client = app.test_client()
    post_form(client, "/login/forgot", {"email": ANN})
    client.get(link_path(mailer, ANN))
    new = "an entirely new passphrase"

    reset = post_form(client, "/reset", {"password": new, "password_confirm": new})

    assert (reset.status_code, reset.headers["Location"]) == (302, "/login")
    assert session_cookie(client) is None
    assert login(client, ANN, new).headers["Location"] == STEP
    assert client.get("/portal/profile").status_code == 302
    assert live_sessions(app) == []


def test_the_workspace_choice_leads_the_account_with_a_factor_to_the_step(app, acme):
    """Attack: one password opens Ann's account in two workspaces, only one
    of which has a factor; choose that one and expect the password to do,
    or reuse the choice after reaching the step to pick the other."""
    globex = make_workspace(app, "Globex")
    make_user(app, globex, ANN)
    give_authenticator(app, ANN)  # to one of her two accounts
    with app.app_context():
        with_factor = db.session.scalar(sa.select(TotpSecret.user_id))
        without = db.session.scalar(
            sa.select(User.id).where(User.email == ANN, User.id != with_factor)
        )
    client = app.test_client()
    assert login(client, ANN).headers["Location"] == "/login/workspace"
    token = csrf_from(client, "/login/workspace")

    chosen = client.post(
        "/login/workspace", data={"account": str(with_factor), "csrf_token": token}
    )
    again = client.post(
        "/login/workspace", data={"account": str(without), "csrf_token": token}
    )

    assert chosen.headers["Location"] == STEP
    assert again.headers["Location"].startswith("/login")
    assert session_cookie(client) is None
    with app.app_context():
        assert db.session.scalars(sa.select(Session)).all() == []


def test_no_secret_or_code_reaches_the_logs(app, acme, caplog):
    """Attack (16.2.5): read the application's logs for the authenticator
    secret, the codes typed and the recovery codes, through a set-up, a
    wrong and a right code, and a recovery code."""
    caplog.set_level("DEBUG")
    force_mfa(app, acme)
    member = app.test_client()
    secret, token = enrol_at_sign_in(app, member)
    member.post(SETUP_DONE, data={"csrf_token": token})
    codes = issue_codes(app)
    typed = [code_for(app, secret, 30), wrong_code(app), codes[0]]
    for code, method in zip(typed, ["totp", "totp", "recovery"], strict=True):
        client = app.test_client()
        login(client, ANN)
        submit(client, code, method=method)

    logged = caplog.text
    for needle in {secret, *typed, *codes, *(c.replace("-", "") for c in codes)}:
        assert needle not in logged


def test_wrong_used_and_foreign_recovery_codes_get_one_answer(app, acme):
    """Attack (oracle): tell apart a code that never existed, one already
    used, and one of another member, by status or page."""
    give_authenticator(app, ANN)
    give_authenticator(app, BOB)
    used, *_ = issue_codes(app)
    bobs = issue_codes(app, BOB)
    first = app.test_client()
    login(first, ANN)
    assert submit(first, used, method="recovery").status_code == 302

    answers = []
    for code in ("zzzzzz-zzzzzz", used, bobs[0]):
        client = app.test_client()
        login(client, ANN)
        answer = submit(client, code, method="recovery")
        answers.append((answer.status_code, CSRF_RE.sub("", answer.get_data(True))))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 401


def test_a_database_copy_alone_does_not_give_away_recovery_codes(app, acme):
    """Attack (offline, many targets at once): from a copy of the database,
    hash candidate codes with plain SHA-256 and look them up among every
    member's stored digests. The stored form must not be that: it is keyed
    with the installation's secret key and bound to the member."""
    give_authenticator(app, ANN)
    codes = issue_codes(app)
    with app.app_context():
        stored = set(db.session.scalars(sa.select(RecoveryCode.code_hash)))
    plain = {
        hashlib.sha256(str(recovery.normalize(c)).encode()).hexdigest() for c in codes
    }
    assert not stored & plain

"""The account cases (ACC-1 to ACC-5 of cases/accounts.md), one test or
parametrized group per case, through the Flask test client.

API tokens, SCIM, SSO and /auth/check are not built yet; their parts of
ACC-1 and ACC-4 wait for them.
"""

from __future__ import annotations

import re
import secrets
import threading

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    DomainAllowEntry,
    Invitation,
    SecurityPolicy,
    Session,
    User,
)
from idp.security import token_digest
from tests.conftest import (
    CSRF_PAGE,
    GENERIC_FAILURE,
    INVALID_LINK,
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)

COOKIE = "portcullis_session"
NEW_PASSWORD = "a brand new long passphrase"


# --- helpers ----------------------------------------------------------------


def with_cookie(app, token: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.set_cookie(COOKIE, token)
    return client


def assert_refused(client) -> None:  # type: ignore[no-untyped-def]
    """The next portal request goes to sign-in and the dead cookie is cleared."""
    response = client.get("/portal/profile")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?")
    assert "expired=1" in response.headers["Location"]
    assert session_cookie(client) is None


def admin_post(client, user_id, action: str, **data: str):  # type: ignore[no-untyped-def]
    return post_form(
        client, f"/portal/users/{user_id}/{action}", data, csrf_page=CSRF_PAGE
    )


def scalar(app, statement):  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(statement)


def count(app, model, *where) -> int:  # type: ignore[no-untyped-def]
    return scalar(app, sa.select(sa.func.count()).select_from(model).where(*where))


def live_sessions(app, user_id=None) -> int:  # type: ignore[no-untyped-def]
    where = [Session.revoked_at.is_(None)]
    if user_id is not None:
        where.append(Session.user_id == user_id)
    return count(app, Session, *where)


def stored_user(app, email: str) -> User | None:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        if user is not None:
            db.session.expunge(user)
        return user


def masked(response, local_part: str) -> str:  # type: ignore[no-untyped-def]
    """The body with the typed address and the per-browser CSRF token blanked."""
    body = response.get_data(as_text=True).replace(local_part, "X@")
    return re.sub(r'name="csrf_token" value="[^"]+"', "", body)


def link_path(mailer, address: str) -> str:  # type: ignore[no-untyped-def]
    return mailer.last_to(address).link.removeprefix("http://localhost")


# --- ACC-1: a disabled, deleted or demoted user keeps working ----------------


@pytest.mark.parametrize(
    ("action", "signin_status", "signin_message"),
    [
        ("disable", 403, "This account is disabled."),
        ("delete", 401, GENERIC_FAILURE),
    ],
    ids=["disable", "delete"],
)
def test_acc_1_removed_member_is_refused_on_the_next_request(
    app, action, signin_status, signin_message
):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    bob = make_user(app, ws, "bob@example.com")
    member = signed_in(app, "bob@example.com")
    assert member.get("/portal/profile").status_code == 200
    admin = signed_in(app, "ann@example.com")

    assert admin_post(admin, bob.id, action).status_code == 302

    assert_refused(member)
    again = login(app.test_client(), "bob@example.com")
    assert again.status_code == signin_status
    assert signin_message in again.get_data(as_text=True)
    assert live_sessions(app, bob.id) == 0
    if action == "delete":
        # Nothing tells a deleted account from one that never existed.
        unknown = login(app.test_client(), "nobody@example.com")
        assert masked(again, "bob@") == masked(unknown, "nobody@")
    else:
        refusals = count(app, AuditEvent, AuditEvent.reason == "account_disabled")
        assert refusals == 1


def test_acc_1_re_enabling_does_not_bring_the_old_session_back(app):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    bob = make_user(app, ws, "bob@example.com")
    old = session_cookie(signed_in(app, "bob@example.com"))
    admin = signed_in(app, "ann@example.com")
    admin_post(admin, bob.id, "disable")

    assert admin_post(admin, bob.id, "enable").status_code == 302

    assert_refused(with_cookie(app, old))
    fresh = signed_in(app, "bob@example.com")
    assert session_cookie(fresh) != old
    assert fresh.get("/portal/profile").status_code == 200


def test_acc_1_reinviting_a_deleted_email_does_not_bring_the_old_session_back(
    app, mailer
):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    bob = make_user(app, ws, "bob@example.com")
    old = session_cookie(signed_in(app, "bob@example.com"))
    admin = signed_in(app, "ann@example.com")
    admin_post(admin, bob.id, "delete")

    post_form(
        admin,
        "/portal/users/invite",
        {"email": "bob@example.com", "role": "read_only", "full_name": "Bob"},
    )
    joined = accept(app.test_client(), link_path(mailer, "bob@example.com"))

    assert joined.status_code == 302
    assert_refused(with_cookie(app, old))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/portal/users/invite"),
        ("POST", "/portal/users/invite"),
        ("POST", "disable"),
        ("POST", "role"),
    ],
    ids=["get_invite_page", "post_invite", "post_disable", "post_make_admin"],
)
def test_acc_1_demoted_admin_gets_403_on_the_next_admin_request(app, method, path):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    bob = make_user(app, ws, "bob@example.com", role="admin")
    carol = make_user(app, ws, "carol@example.com")
    demoted = signed_in(app, "bob@example.com")
    assert demoted.get("/portal/users/invite").status_code == 200
    admin = signed_in(app, "ann@example.com")

    assert admin_post(admin, bob.id, "role", role="read_only").status_code == 302

    if method == "GET":
        response = demoted.get(path)
    elif path == "/portal/users/invite":
        response = post_form(
            demoted,
            path,
            {"email": "eve@example.com", "role": "admin", "full_name": "Eve"},
            csrf_page=CSRF_PAGE,
        )
    else:
        target = bob.id if path == "role" else carol.id
        response = admin_post(demoted, target, path, role="admin")
    assert response.status_code == 403
    assert demoted.get("/portal/profile").status_code == 200
    assert stored_user(app, "bob@example.com").role == "read_only"
    assert stored_user(app, "carol@example.com").status == "active"
    assert stored_user(app, "eve@example.com") is None
    denied = AuditEvent.action == "authz.denied"
    assert (
        count(app, AuditEvent, denied, AuditEvent.actor_label == "bob@example.com") == 1
    )


# --- ACC-2: other sessions survive a password change or log-out-others -------


def _change_password(client) -> None:  # type: ignore[no-untyped-def]
    response = post_form(
        client,
        "/portal/privacy-security/password",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)


def _log_out_others(client) -> None:  # type: ignore[no-untyped-def]
    response = post_form(client, "/portal/privacy-security/logout-others", {})
    assert response.status_code == 302


@pytest.mark.parametrize(
    "act",
    [_change_password, _log_out_others],
    ids=["change_password", "log_out_other_sessions"],
)
def test_acc_2_other_sessions_end_and_this_one_gets_a_new_token(app, act):
    ws = make_workspace(app)
    ann = make_user(app, ws, "ann@example.com")
    a = signed_in(app, "ann@example.com")
    b = signed_in(app, "ann@example.com")
    before = session_cookie(a)
    assert "/privacy-security/sessions/" in a.get(CSRF_PAGE).get_data(as_text=True)

    act(a)

    assert_refused(b)
    after = session_cookie(a)
    assert after and after != before
    assert_refused(with_cookie(app, before))
    page = a.get("/portal/privacy-security").get_data(as_text=True)
    assert page.count("This session") == 1
    assert "/privacy-security/sessions/" not in page  # no other session to end
    assert live_sessions(app, ann.id) == 1


def test_acc_2_password_reset_by_email_ends_every_session(app, mailer, monkeypatch):
    inline_reset_mail(monkeypatch)
    ws = make_workspace(app)
    ann = make_user(app, ws, "ann@example.com")
    a = signed_in(app, "ann@example.com")
    b = signed_in(app, "ann@example.com")
    before = session_cookie(a)

    post_form(a, "/login/forgot", {"email": "ann@example.com"})
    assert a.get(link_path(mailer, "ann@example.com")).status_code == 302
    reset = post_form(
        a, "/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )

    assert reset.status_code == 302
    assert reset.headers["Location"] == "/login"
    assert session_cookie(a) is None
    assert_refused(b)
    assert_refused(with_cookie(app, before))
    assert live_sessions(app, ann.id) == 0
    again = signed_in(app, "ann@example.com", NEW_PASSWORD)
    page = again.get("/portal/privacy-security").get_data(as_text=True)
    assert page.count("This session") == 1
    assert live_sessions(app, ann.id) == 1


class _InlineThread:
    """Runs the reset mailer's thread at start(), so the mail is recorded
    before the request returns."""

    def __init__(self, target, args=(), daemon=None):  # type: ignore[no-untyped-def]
        self._target, self._args = target, args

    def start(self) -> None:
        self._target(*self._args)


def inline_reset_mail(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import types

    monkeypatch.setattr(
        "idp.services.account.threading", types.SimpleNamespace(Thread=_InlineThread)
    )


# --- ACC-3: session fixation ------------------------------------------------


def test_acc_3_sign_in_issues_a_new_token_and_a_new_csrf_token(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client.get("/login")
    assert session_cookie(client) is None
    pre_login = [client.get_cookie("portcullis_flow").value]
    old_csrf = csrf_from(client, "/login")
    post_form(client, "/login", {"email": "ann@example.com"})
    pre_login.append(client.get_cookie("portcullis_flow").value)

    response = client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf_from(client, "/login/password")},
    )

    assert response.status_code == 302
    token = session_cookie(client)
    assert token and token not in pre_login
    for value in pre_login:
        assert_refused(with_cookie(app, value))
    stale = client.post(
        "/portal/profile", data={"full_name": "Mallory", "csrf_token": old_csrf}
    )
    assert stale.status_code == 400
    assert "Form expired" in stale.get_data(as_text=True)
    assert csrf_from(client, CSRF_PAGE) != old_csrf
    fresh = post_form(
        client, "/portal/profile", {"full_name": "Ann A"}, csrf_page=CSRF_PAGE
    )
    assert fresh.status_code == 302


CHOSEN_VALUES = {
    "plausible_token": secrets.token_urlsafe(32),
    "short_word": "attacker",
    "empty": "",
    "sql_text": "x' OR '1'='1",
    "path_text": "../../etc/passwd",
    "overlong": "A" * 3000,
}


@pytest.mark.parametrize("chosen", CHOSEN_VALUES.values(), ids=CHOSEN_VALUES.keys())
def test_acc_3_a_client_chosen_cookie_is_never_adopted(app, chosen):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = with_cookie(app, chosen)
    anonymous = client.get("/portal/profile")
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/login?")

    # Present the chosen value at every step of the sign-in itself.
    client.set_cookie(COOKIE, chosen)
    token = csrf_from(client, "/login")
    client.set_cookie(COOKIE, chosen)
    client.post("/login", data={"email": "ann@example.com", "csrf_token": token})
    token = csrf_from(client, "/login/password")
    client.set_cookie(COOKIE, chosen)
    response = client.post(
        "/login/password", data={"password": PASSWORD, "csrf_token": token}
    )

    assert response.status_code == 302
    assert session_cookie(client) not in (None, chosen)
    assert client.get("/portal/profile").status_code == 200
    assert_refused(with_cookie(app, chosen))
    assert count(app, Session, Session.token_hash == token_digest(chosen)) == 0


# --- ACC-5: invitation links ------------------------------------------------


def invite(admin, mailer, email: str = "carol@example.com") -> str:  # type: ignore[no-untyped-def]
    response = post_form(
        admin,
        "/portal/users/invite",
        {"email": email, "role": "read_only", "full_name": "Carol"},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return link_path(mailer, email)


def exchange(client, path: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Follow the mailed link (the token moves into the flow cookie) and
    return the acceptance form's fields."""
    landed = client.get(path)
    assert landed.status_code == 302
    assert landed.headers["Location"] == "/invite"
    # The CSRF token is per browser, so any form will do, even when the
    # invitation page itself refuses the link.
    return {
        "full_name": "Carol Carter",
        "password": NEW_PASSWORD,
        "password_confirm": NEW_PASSWORD,
        "csrf_token": csrf_from(client, "/login/forgot"),
    }


def accept(client, path: str):  # type: ignore[no-untyped-def]
    return client.post("/invite", data=exchange(client, path))


def snapshot(app) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    return (
        count(app, User),
        count(app, User, User.status == "active"),
        count(app, Session),
    )


def assert_invalid_link_page(response, reference: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 400
    assert INVALID_LINK in response.get_data(as_text=True)
    assert response.get_data(as_text=True) == reference


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    return ws


@pytest.fixture
def invalid_page(app) -> str:  # type: ignore[no-untyped-def]
    """The page for a link that was never issued: every bad link must look
    exactly like it."""
    response = app.test_client().get(
        "/invite/" + secrets.token_urlsafe(32), follow_redirects=True
    )
    assert response.status_code == 400
    return response.get_data(as_text=True)


def test_acc_5_invitation_accept_works(app, mailer, acme):
    path = invite(signed_in(app, "ann@example.com"), mailer)
    carol = app.test_client()

    response = accept(carol, path)

    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"
    assert carol.get("/portal/profile").status_code == 200
    user = stored_user(app, "carol@example.com")
    assert user.status == "active" and user.full_name == "Carol Carter"
    assert count(app, Invitation) == 0
    assert signed_in(app, "carol@example.com", NEW_PASSWORD)


def test_acc_5_reusing_an_accepted_link_is_refused(app, mailer, acme, invalid_page):
    path = invite(signed_in(app, "ann@example.com"), mailer)
    assert accept(app.test_client(), path).status_code == 302
    before = snapshot(app)

    again = app.test_client()
    form = exchange(again, path)
    assert_invalid_link_page(again.get("/invite"), invalid_page)
    assert_invalid_link_page(again.post("/invite", data=form), invalid_page)
    assert snapshot(app) == before
    assert session_cookie(again) is None


@pytest.mark.parametrize(
    ("age", "works"),
    [
        ({"days": 6, "hours": 23, "minutes": 59}, True),
        ({"days": 7}, False),
        ({"days": 8}, False),
    ],
    ids=["just_under_7_days", "exactly_7_days", "8_days"],
)
def test_acc_5_links_last_seven_days(
    app, mailer, clock, acme, invalid_page, age, works
):
    path = invite(signed_in(app, "ann@example.com"), mailer)
    before = snapshot(app)
    clock.advance(**age)

    response = accept(app.test_client(), path)

    if works:
        assert response.status_code == 302
    else:
        assert_invalid_link_page(response, invalid_page)
        assert snapshot(app) == before
        assert stored_user(app, "carol@example.com").status == "invited"


def test_acc_5_resend_kills_the_old_link_and_the_new_one_works(
    app, mailer, acme, invalid_page
):
    admin = signed_in(app, "ann@example.com")
    old = invite(admin, mailer)
    carol = stored_user(app, "carol@example.com")
    assert admin_post(admin, carol.id, "resend").status_code == 302
    new = link_path(mailer, "carol@example.com")
    assert new != old
    before = snapshot(app)

    assert_invalid_link_page(accept(app.test_client(), old), invalid_page)
    assert snapshot(app) == before
    assert accept(app.test_client(), new).status_code == 302


def test_acc_5_link_of_a_deleted_user_is_refused(app, mailer, acme, invalid_page):
    admin = signed_in(app, "ann@example.com")
    path = invite(admin, mailer)
    carol = stored_user(app, "carol@example.com")
    assert admin_post(admin, carol.id, "delete").status_code == 302
    before = snapshot(app)

    assert_invalid_link_page(accept(app.test_client(), path), invalid_page)
    assert snapshot(app) == before
    assert stored_user(app, "carol@example.com") is None


def test_acc_5_link_for_another_address_while_signed_in_is_refused(
    app, mailer, acme, invalid_page
):
    path = invite(signed_in(app, "ann@example.com"), mailer)
    make_user(app, acme, "bob@example.com")
    bob = signed_in(app, "bob@example.com")
    bob_token = session_cookie(bob)
    before = snapshot(app)

    response = accept(bob, path)

    assert_invalid_link_page(response, invalid_page)
    assert snapshot(app) == before
    assert session_cookie(bob) == bob_token
    assert "bob@example.com" in bob.get("/portal/profile").get_data(as_text=True)
    assert stored_user(app, "carol@example.com").status == "invited"
    assert count(app, AuditEvent, AuditEvent.reason == "signed_in_as_other") == 1
    # The refusal consumed nothing: the invited person can still join.
    assert accept(app.test_client(), path).status_code == 302


def test_acc_5_one_link_accepted_twice_at_once_succeeds_once(
    app, mailer, monkeypatch, acme, invalid_page
):
    path = invite(signed_in(app, "ann@example.com"), mailer)
    clients = [app.test_client(), app.test_client()]
    forms = [exchange(c, path) for c in clients]
    barrier = threading.Barrier(2)
    # Both requests must have passed every check before either claims the
    # link: they meet again while hashing the new password.
    passwords = app.extensions["idp"].passwords
    real_hash = passwords.hash
    hashed = threading.Barrier(2)

    def meet_then_hash(password: str) -> str:
        hashed.wait(timeout=10)
        return real_hash(password)

    monkeypatch.setattr(passwords, "hash", meet_then_hash)
    results: list[int] = []

    def post(client, form) -> None:  # type: ignore[no-untyped-def]
        barrier.wait(timeout=10)
        results.append(client.post("/invite", data=form).status_code)

    threads = [threading.Thread(target=post, args=pair) for pair in zip(clients, forms)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == [302, 400]
    carol = stored_user(app, "carol@example.com")
    assert carol.status == "active"
    assert count(app, Session, Session.user_id == carol.id) == 1
    assert count(app, AuditEvent, AuditEvent.action == "invitation.accept") == 1
    assert [session_cookie(c) is not None for c in clients].count(True) == 1


# --- ACC-4: the email-domain allow-list, invitation part ---------------------


@pytest.fixture
def restricted(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    make_user(app, ws, "old@other.org")
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).domain_restriction_enabled = True
        db.session.add(DomainAllowEntry(workspace_id=ws.id, domain="example.com"))
        db.session.commit()
    return ws


def _invite_as_ann(app, email: str):  # type: ignore[no-untyped-def]
    admin = signed_in(app, "ann@example.com")
    return post_form(
        admin,
        "/portal/users/invite",
        {"email": email, "role": "read_only", "full_name": "New"},
    )


@pytest.mark.parametrize(
    "email",
    [
        "user@example.com",
        "User@EXAMPLE.COM",
        "user@example.com.",
        "  user@example.com  ",
    ],
    ids=["plain", "upper_case", "trailing_dot", "surrounding_spaces"],
)
def test_acc_4_allowed_domains_invite_and_store_the_normal_form(
    app, mailer, restricted, email
):
    response = _invite_as_ann(app, email)

    assert response.status_code == 302, response.get_data(as_text=True)
    assert stored_user(app, "user@example.com").status == "invited"
    assert mailer.last_to("user@example.com")


REFUSED = {
    "no_label_boundary": "user@evilexample.com",
    "domain_as_local_part": "example.com@evil.example",
    "allowed_domain_as_prefix": "user@example.com.evil.example",
    "subdomain_not_enabled": "user@sub.example.com",
    "idn_lookalike": "user@ex\u00e4mple.com",
}


@pytest.mark.parametrize("email", REFUSED.values(), ids=REFUSED.keys())
def test_acc_4_other_domains_are_refused_and_audited(app, mailer, restricted, email):
    before = count(app, User)

    response = _invite_as_ann(app, email)

    assert response.status_code == 403
    assert "not on the approved list" in response.get_data(as_text=True)
    assert count(app, User) == before
    assert count(app, Invitation) == 0
    assert mailer.sent == []
    events = count(
        app,
        AuditEvent,
        AuditEvent.action == "user.invite",
        AuditEvent.outcome == "denied",
        AuditEvent.reason == "domain_not_allowed",
        AuditEvent.target_label == email.lower(),
    )
    assert events == 1


def test_acc_4_two_at_signs_are_malformed(app, mailer, restricted):
    before = count(app, User)

    response = _invite_as_ann(app, "user@example.com@evil.example")

    assert response.status_code == 400
    assert "valid email address" in response.get_data(as_text=True)
    assert count(app, User) == before
    assert mailer.sent == []


def test_acc_4_existing_members_outside_the_list_are_unaffected(app, restricted):
    member = signed_in(app, "old@other.org")

    assert member.get("/portal/profile").status_code == 200
    assert stored_user(app, "old@other.org").status == "active"

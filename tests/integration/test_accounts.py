"""Account features through the Flask test client: sign-in, the failure
throttle, forgotten and changed passwords, the Users tab, the profile and a
mail server that is down."""

from __future__ import annotations

import re
import threading
import types
import uuid

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from idp.db import db
from idp.models import AuditEvent, Invitation, LoginThrottle, Session, User
from idp.services import users as user_service
from idp.services.context import Context
from idp.services.errors import Conflict
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

NEW_PASSWORD = "a brand new long passphrase"
WRONG = "definitely not the password"


# --- helpers ----------------------------------------------------------------


def scalar(app, statement):  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(statement)


def count(app, model, *where) -> int:  # type: ignore[no-untyped-def]
    return scalar(app, sa.select(sa.func.count()).select_from(model).where(*where))


def stored(app, email: str, workspace=None) -> User | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        statement = sa.select(User).where(User.email == email)
        if workspace is not None:
            statement = statement.where(User.workspace_id == workspace.id)
        user = db.session.scalar(statement)
        if user is not None:
            db.session.expunge(user)
        return user


def update_user(app, email: str, **values) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.execute(sa.update(User).where(User.email == email).values(**values))
        db.session.commit()


def events(app, action: str, **where: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        statement = sa.select(AuditEvent).where(AuditEvent.action == action)
        for column, value in where.items():
            statement = statement.where(getattr(AuditEvent, column) == value)
        found = list(db.session.scalars(statement.order_by(AuditEvent.id)))
        db.session.expunge_all()
        return found


def link_path(mailer, address: str) -> str:  # type: ignore[no-untyped-def]
    return mailer.last_to(address).link.removeprefix("http://localhost")


def admin_post(client, user_id, action: str, **data: str):  # type: ignore[no-untyped-def]
    return post_form(
        client, f"/portal/users/{user_id}/{action}", data, csrf_page=CSRF_PAGE
    )


def portal_post(client, path: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    return post_form(client, path, data, csrf_page=CSRF_PAGE)


def listed_emails(page: str) -> list[str]:
    return re.findall(r'data-email="([^"]+)"', page)


def text(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


class _InlineThread:
    """Stands in for the reset mailer's thread: runs at start(), so the mail
    is recorded before the request returns."""

    def __init__(self, target, args=(), daemon=None):  # type: ignore[no-untyped-def]
        self._target, self._args = target, args

    def start(self) -> None:
        self._target(*self._args)


@pytest.fixture
def reset_mail_inline(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        "idp.services.account.threading", types.SimpleNamespace(Thread=_InlineThread)
    )


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin", name="Ann Admin")
    return ws


# --- sign-in ----------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "ann@example.com",
        "ANN@Example.COM",
        "  ann@example.com  ",
        "ann@example.com.",
        " Ann@EXAMPLE.com. ",
    ],
    ids=["plain", "case", "spaces", "trailing_dot", "all_at_once"],
)
def test_sign_in_normalises_the_email(app, acme, typed):
    client = app.test_client()

    response = login(client, typed)

    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"
    assert "ann@example.com" in text(client.get("/portal/profile"))


def test_signing_in_again_in_the_same_browser_ends_the_session_it_had(app, acme):
    make_user(app, acme, "bob@example.com")
    client = signed_in(app, "ann@example.com")
    first = session_cookie(client)

    # GET /login sends a signed-in browser to the portal; the form still posts.
    portal_post(client, "/login", {"email": "bob@example.com"})
    answer = post_form(client, "/login/password", {"password": PASSWORD})

    assert answer.status_code == 302

    assert session_cookie(client) != first
    assert "bob@example.com" in text(client.get("/portal/profile"))
    stale = app.test_client()
    stale.set_cookie("portcullis_session", first)
    assert stale.get("/portal/profile").status_code == 302


@pytest.fixture
def two_workspaces(app):  # type: ignore[no-untyped-def]
    acme = make_workspace(app, "Acme")
    beta = make_workspace(app, "Beta")
    make_user(app, acme, "ann@example.com", name="Ann of Acme")
    make_user(app, beta, "ann@example.com", role="admin", name="Ann of Beta")
    make_user(app, acme, "zed@example.com", name="Zed")
    return acme, beta


def test_one_email_in_two_workspaces_offers_a_choice(app, two_workspaces):
    _, beta = two_workspaces
    client = app.test_client()

    response = login(client, "ann@example.com")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login/workspace"
    assert session_cookie(client) is None
    page = text(client.get("/login/workspace"))
    assert "Acme" in page and "Beta" in page
    chosen = post_form(
        client,
        "/login/workspace",
        {"account": str(stored(app, "ann@example.com", beta).id)},
    )
    assert chosen.status_code == 302
    assert chosen.headers["Location"] == "/portal/profile"
    profile = text(client.get("/portal/profile"))
    assert "Ann of Beta" in profile and "Beta" in profile
    assert listed_emails(text(client.get("/portal/users"))) == ["ann@example.com"]


def test_only_workspaces_the_password_opens_are_offered(app, two_workspaces):
    _, beta = two_workspaces
    update_user(app, "ann@example.com", password_hash=None)
    beta_hash = PasswordHasher(memory_cost=64, time_cost=1, parallelism=1).hash(
        NEW_PASSWORD
    )
    with app.app_context():
        db.session.execute(
            sa.update(User)
            .where(User.workspace_id == beta.id)
            .values(password_hash=beta_hash)
        )
        db.session.commit()
    client = app.test_client()

    response = login(client, "ann@example.com", NEW_PASSWORD)

    assert response.headers["Location"] == "/portal/profile"
    assert "Ann of Beta" in text(client.get("/portal/profile"))


def _other_workspace_user_id(app) -> str:  # type: ignore[no-untyped-def]
    third = make_workspace(app, "Gamma")
    return str(
        make_user(app, third, "ann@example.com", password="another long passphrase").id
    )


UNOFFERED = {
    "account_in_a_workspace_the_password_does_not_open": "third",
    "other_member_of_an_offered_workspace": "zed",
    "random_uuid": str(uuid.uuid4()),
    "not_a_uuid": "not-a-uuid",
    "empty": "",
    "sql_text": "' OR '1'='1",
}


@pytest.mark.parametrize("chosen", UNOFFERED.values(), ids=UNOFFERED.keys())
def test_choosing_a_workspace_not_offered_is_refused(app, two_workspaces, chosen):
    if chosen == "third":
        chosen = _other_workspace_user_id(app)
    elif chosen == "zed":
        chosen = str(stored(app, "zed@example.com").id)
    client = app.test_client()
    login(client, "ann@example.com")

    response = post_form(client, "/login/workspace", {"account": chosen})

    assert response.status_code == 400
    assert session_cookie(client) is None
    assert count(app, Session) == 0


@pytest.mark.parametrize(
    ("status", "password", "code", "message"),
    [
        ("disabled", PASSWORD, 403, "This account is disabled."),
        ("invited", None, 401, GENERIC_FAILURE),
    ],
    ids=["disabled", "invited"],
)
def test_inactive_accounts_cannot_sign_in(app, acme, status, password, code, message):
    make_user(app, acme, "bob@example.com", status=status, password=password)
    client = app.test_client()

    response = login(client, "bob@example.com")

    assert response.status_code == code
    assert message in text(response)
    assert session_cookie(client) is None
    assert count(app, Session) == 0


def _fail(client, email: str, times: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(times):
        assert login(client, email, WRONG).status_code == 401


def test_ten_failures_lock_the_email_for_five_minutes(app, acme, clock):
    client = app.test_client()
    _fail(client, "ann@example.com", 10)

    locked = login(client, "ann@example.com")

    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "300"
    assert "Too many failed attempts for this email" in text(locked)
    assert session_cookie(client) is None
    clock.advance(seconds=299)
    assert login(client, "ann@example.com").headers["Retry-After"] == "1"
    clock.advance(seconds=2)
    assert login(client, "ann@example.com").status_code == 302
    assert events(app, "signin.failure", reason="account_throttled")


def test_after_the_wait_one_more_failure_locks_again(app, acme, clock):
    client = app.test_client()
    _fail(client, "ann@example.com", 10)
    clock.advance(seconds=301)

    _fail(client, "ann@example.com", 1)

    locked = login(client, "ann@example.com")
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "300"


def test_ordinary_sign_in_answers_carry_no_retry_after(app, acme):
    client = app.test_client()

    failed = login(client, "ann@example.com", WRONG)
    passed = login(client, "ann@example.com")

    assert (failed.status_code, passed.status_code) == (401, 302)
    assert "Retry-After" not in failed.headers
    assert "Retry-After" not in passed.headers


@pytest.mark.parametrize(
    "overrides", [{"signin": {"ip_limits": "3 per hour"}}], ids=["3_per_hour"]
)
def test_the_per_address_limit_answers_429_with_its_window(app, acme, overrides):
    client = app.test_client()
    form = {"email": "ann@example.com", "csrf_token": csrf_from(client, "/login")}
    for _ in range(3):
        assert client.post("/login", data=form).status_code == 302

    limited = client.post("/login", data=form)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3600"


def test_the_throttle_counts_unknown_emails_as_typed(app, acme):
    client = app.test_client()
    _fail(client, "Nobody@Example.com", 10)

    locked = login(client, " nobody@example.com. ", WRONG)

    assert locked.status_code == 429
    assert "Retry-After" in locked.headers
    key = LoginThrottle.email == "nobody@example.com"
    assert scalar(app, sa.select(LoginThrottle.failures).where(key)) == 10
    assert login(client, "ann@example.com").status_code == 302


def test_nine_failures_do_not_lock_and_success_resets_the_count(app, acme):
    client = app.test_client()
    _fail(client, "ann@example.com", 9)
    assert login(client, "ann@example.com").status_code == 302
    assert count(app, LoginThrottle) == 0

    other = app.test_client()
    _fail(other, "ann@example.com", 9)

    assert login(other, "ann@example.com").status_code == 302


def test_a_password_reset_clears_the_lock(app, acme, mailer, reset_mail_inline):
    client = app.test_client()
    _fail(client, "ann@example.com", 10)
    assert login(client, "ann@example.com").status_code == 429

    post_form(client, "/login/forgot", {"email": "ann@example.com"})
    client.get(link_path(mailer, "ann@example.com"))
    reset = post_form(
        client, "/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )

    assert reset.status_code == 302
    assert login(client, "ann@example.com", NEW_PASSWORD).status_code == 302


class _CountingHasher:
    def __init__(self, real: PasswordHasher) -> None:
        self.real, self.calls = real, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in ("hash", "verify"):
            self.calls += 1
        return getattr(self.real, name)


@pytest.mark.parametrize(
    "password",
    ["x" * 1025, "\u00e9" * 1025, "x" * 60_000],
    ids=["1025_ascii", "1025_two_byte", "60000_chars"],
)
def test_overlong_passwords_are_refused_before_hashing(
    app, acme, monkeypatch, password
):
    counting = _CountingHasher(app.extensions["idp"].passwords.hasher)
    monkeypatch.setattr(app.extensions["idp"].passwords, "hasher", counting)
    client = app.test_client()

    response = login(client, "ann@example.com", password)

    assert response.status_code == 400
    assert "at most 1024 characters" in text(response)
    assert counting.calls == 0
    assert count(app, LoginThrottle) == 0
    assert login(client, "ann@example.com").status_code == 302
    assert counting.calls > 0  # the spy does see hashing


def test_a_one_megabyte_body_gets_413(app, acme):
    client = app.test_client()
    post_form(client, "/login", {"email": "ann@example.com"})
    token = csrf_from(client, "/login/password")

    response = client.post(
        "/login/password", data={"password": "x" * 1_000_000, "csrf_token": token}
    )

    assert response.status_code == 413
    assert session_cookie(client) is None


def test_a_hash_with_other_parameters_is_rehashed_at_sign_in(app, acme):
    old = PasswordHasher(memory_cost=128, time_cost=2, parallelism=1).hash(PASSWORD)
    update_user(app, "ann@example.com", password_hash=old)
    hasher = app.extensions["idp"].passwords.hasher
    assert hasher.check_needs_rehash(old)

    assert login(app.test_client(), "ann@example.com").status_code == 302

    new = stored(app, "ann@example.com").password_hash
    assert new != old
    assert not hasher.check_needs_rehash(new)
    hasher.verify(new, PASSWORD)


# --- forgot password --------------------------------------------------------


def test_forgot_password_answers_alike_for_known_and_unknown(
    app, acme, mailer, reset_mail_inline
):
    known = post_form(app.test_client(), "/login/forgot", {"email": "ann@example.com"})
    unknown = post_form(
        app.test_client(), "/login/forgot", {"email": "nobody@example.com"}
    )

    assert known.status_code == unknown.status_code == 200
    assert text(known) == text(unknown)
    assert [m.to for m in mailer.sent] == ["ann@example.com"]


def _request_reset(app, mailer) -> str:  # type: ignore[no-untyped-def]
    post_form(app.test_client(), "/login/forgot", {"email": "ann@example.com"})
    return link_path(mailer, "ann@example.com")


def _reset(client, path: str, password: str = NEW_PASSWORD, confirm: str | None = None):  # type: ignore[no-untyped-def]
    client.get(path)
    # Any form gives the browser's CSRF token, even when /reset refuses the link.
    return post_form(
        client,
        "/reset",
        {
            "password": password,
            "password_confirm": password if confirm is None else confirm,
        },
        csrf_page="/login/forgot",
    )


def test_reset_link_works_within_the_hour_and_once(
    app, acme, mailer, clock, reset_mail_inline
):
    path = _request_reset(app, mailer)
    clock.advance(minutes=59)

    done = _reset(app.test_client(), path)

    assert done.status_code == 302
    assert login(app.test_client(), "ann@example.com", NEW_PASSWORD).status_code == 302
    assert login(app.test_client(), "ann@example.com", PASSWORD).status_code == 401
    again = _reset(app.test_client(), path, "yet another long passphrase")
    assert again.status_code == 400
    assert INVALID_LINK in text(again)
    assert events(app, "password.reset")


def test_reset_link_expires_after_an_hour(app, acme, mailer, clock, reset_mail_inline):
    path = _request_reset(app, mailer)
    clock.advance(minutes=61)
    client = app.test_client()
    client.get(path)

    page = client.get("/reset")

    assert page.status_code == 400
    assert INVALID_LINK in text(page)
    assert _reset(app.test_client(), path).status_code == 400
    assert login(app.test_client(), "ann@example.com").status_code == 302


def test_reset_token_leaves_the_url_at_once(app, acme, mailer, reset_mail_inline):
    path = _request_reset(app, mailer)
    token = path.rsplit("/", 1)[1]
    client = app.test_client()

    landed = client.get(path)

    assert landed.status_code == 302
    assert landed.headers["Location"] == "/reset"
    assert landed.headers["Referrer-Policy"] == "no-referrer"
    form = client.get("/reset")
    assert form.status_code == 200
    assert token not in text(form)


def test_reset_link_of_a_member_disabled_meanwhile_is_refused(
    app, acme, mailer, reset_mail_inline
):
    bob = make_user(app, acme, "bob@example.com")
    post_form(app.test_client(), "/login/forgot", {"email": "bob@example.com"})
    path = link_path(mailer, "bob@example.com")
    admin_post(signed_in(app, "ann@example.com"), bob.id, "disable")

    refused = _reset(app.test_client(), path)

    assert refused.status_code == 400
    assert INVALID_LINK in text(refused)
    assert stored(app, "bob@example.com").password_hash == bob.password_hash


def test_forgot_password_mails_nobody_who_cannot_sign_in(
    app, acme, mailer, reset_mail_inline
):
    make_user(app, acme, "dis@example.com", status="disabled")
    make_user(app, acme, "inv@example.com", status="invited", password=None)

    for email in ("dis@example.com", "inv@example.com"):
        answer = post_form(app.test_client(), "/login/forgot", {"email": email})
        assert answer.status_code == 200

    assert mailer.sent == []


def test_a_newer_reset_link_replaces_the_older(app, acme, mailer, reset_mail_inline):
    first = _request_reset(app, mailer)
    second = _request_reset(app, mailer)

    assert _reset(app.test_client(), first).status_code == 400
    assert _reset(app.test_client(), second).status_code == 302


WEAK = {
    "short": ("short pass", "at least 12 characters"),
    "common": ("123qweasdzxc", "most common"),
    "common_other_case": ("123QWEASDZXC", "most common"),
    "too_long": ("y" * 1025, "at most 1024 characters"),
    "empty": ("", "at least 12 characters"),
}


@pytest.mark.parametrize(("password", "reason"), WEAK.values(), ids=WEAK.keys())
def test_reset_refuses_a_weak_password_with_the_reason(
    app, acme, mailer, reset_mail_inline, password, reason
):
    path = _request_reset(app, mailer)
    client = app.test_client()

    refused = _reset(client, path, password)

    assert refused.status_code == 400
    assert reason in text(refused)
    assert login(app.test_client(), "ann@example.com").status_code == 302
    # The link was not used up by the refusal.
    form = {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    assert post_form(client, "/reset", form).status_code == 302


def test_reset_refuses_a_mismatched_confirmation(app, acme, mailer, reset_mail_inline):
    refused = _reset(
        app.test_client(),
        _request_reset(app, mailer),
        NEW_PASSWORD,
        "a brand new long passphrasE",
    )

    assert refused.status_code == 400
    assert "differ" in text(refused)
    assert login(app.test_client(), "ann@example.com").status_code == 302


# --- change password --------------------------------------------------------


def _change(client, current: str, new: str, confirm: str | None = None):  # type: ignore[no-untyped-def]
    return portal_post(
        client,
        "/portal/privacy-security/password",
        {
            "current_password": current,
            "new_password": new,
            "new_password_confirm": new if confirm is None else confirm,
        },
    )


def test_change_password_needs_the_current_one(app, acme):
    client = signed_in(app, "ann@example.com")
    other = signed_in(app, "ann@example.com")
    before = stored(app, "ann@example.com").password_hash

    response = _change(client, WRONG, NEW_PASSWORD)

    assert response.status_code == 400
    assert "current password is incorrect" in text(response)
    assert stored(app, "ann@example.com").password_hash == before
    assert other.get("/portal/profile").status_code == 200
    assert events(app, "password.verify", outcome="failure")


@pytest.mark.parametrize(
    "path",
    ["/portal/privacy-security/password", "/portal/profile/email"],
    ids=["change_password", "change_email"],
)
def test_current_password_guesses_share_the_sign_in_lock(app, acme, mailer, path):
    # A stolen session must not allow endless guesses at the password.
    client = signed_in(app, "ann@example.com")

    def attempt(current: str):  # type: ignore[no-untyped-def]
        return portal_post(
            client,
            path,
            {
                "current_password": current,
                "password": current,
                "email": "ann.new@example.com",
                "new_password": NEW_PASSWORD,
                "new_password_confirm": NEW_PASSWORD,
            },
        )

    for _ in range(10):
        assert attempt(WRONG).status_code == 400
    locked = attempt(PASSWORD)

    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "300"
    assert login(app.test_client(), "ann@example.com", PASSWORD).status_code == 429
    assert stored(app, "ann@example.com") is not None
    assert mailer.sent == []


@pytest.mark.parametrize(
    ("new", "confirm", "reason"),
    [
        ("short pass", None, "at least 12 characters"),
        ("123qweasdzxc", None, "most common"),
        ("z" * 1025, None, "at most 1024 characters"),
        (NEW_PASSWORD, NEW_PASSWORD + " ", "differ"),
    ],
    ids=["short", "common", "too_long", "mismatched_confirmation"],
)
def test_change_password_refuses_bad_new_passwords(app, acme, new, confirm, reason):
    client = signed_in(app, "ann@example.com")
    before = stored(app, "ann@example.com").password_hash

    response = _change(client, PASSWORD, new, confirm)

    assert response.status_code == 400
    assert reason in text(response)
    assert stored(app, "ann@example.com").password_hash == before


def test_change_password_switches_the_password(app, acme):
    client = signed_in(app, "ann@example.com")

    assert _change(client, PASSWORD, NEW_PASSWORD).status_code == 302

    assert login(app.test_client(), "ann@example.com", PASSWORD).status_code == 401
    assert login(app.test_client(), "ann@example.com", NEW_PASSWORD).status_code == 302
    assert events(app, "password.change", target_label="ann@example.com")


# --- Users tab: list and search ---------------------------------------------


@pytest.fixture
def crew(app, acme):  # type: ignore[no-untyped-def]
    make_user(app, acme, "hopper@navy.example", name="Grace Hopper")
    update_user(
        app,
        "hopper@navy.example",
        username="amazing.grace",
        job_title="Rear Admiral",
        phone="+442079460958",
    )
    make_user(app, acme, "lovelace@example.org", name="Ada Lovelace")
    make_user(app, acme, "pat_100%@example.org", name="Pat Percent")
    return acme


@pytest.mark.parametrize(
    "query",
    ["grace hop", "HOPPER@", "amazing.gr", "rear adm", "7946"],
    ids=["name", "email", "username", "job_title", "phone"],
)
def test_users_search_matches_any_text(app, crew, query):
    client = signed_in(app, "ann@example.com")

    page = client.get("/portal/users", query_string={"q": query})

    assert page.status_code == 200
    assert listed_emails(text(page)) == ["hopper@navy.example"]


def test_users_list_shows_every_member(app, crew):
    page = text(signed_in(app, "ann@example.com").get("/portal/users"))

    assert sorted(listed_emails(page)) == sorted(
        [
            "ann@example.com",
            "hopper@navy.example",
            "lovelace@example.org",
            "pat_100%@example.org",
        ]
    )
    assert "Admin" in page and "Read Only" in page and "Joined" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("%", ["pat_100%@example.org"]),
        ("_", ["pat_100%@example.org"]),
        ("\\", []),
        ("' OR '1'='1", []),
        ("<script>alert(1)</script>", []),
        ("x" * 5000, []),
    ],
    ids=["percent", "underscore", "backslash", "sql_text", "markup", "overlong"],
)
def test_users_search_takes_hostile_text_literally(app, crew, query, expected):
    page = signed_in(app, "ann@example.com").get(
        "/portal/users", query_string={"q": query}
    )

    assert page.status_code == 200
    assert listed_emails(text(page)) == expected
    assert "<script>alert" not in text(page)


# --- Users tab: invite ------------------------------------------------------


def _invite(client, email="carol@example.com", role="read_only", full_name="Carol"):  # type: ignore[no-untyped-def]
    return portal_post(
        client,
        "/portal/users/invite",
        {"email": email, "role": role, "full_name": full_name},
    )


BAD_INVITES = {
    "not_an_email": {"email": "carol"},
    "two_at_signs": {"email": "carol@example.com@evil.example"},
    "empty_email": {"email": ""},
    "header_injection": {"email": "carol@example.com\r\nBcc: eve@evil.example"},
    "reserved_domain": {"email": "carol@printer.local"},
    "unknown_role": {"role": "owner"},
    "empty_role": {"role": ""},
    "role_in_other_case": {"role": "Admin"},
    "control_char_in_name": {"full_name": "Carol\x07"},
    "overlong_name": {"full_name": "C" * 201},
}


@pytest.mark.parametrize("fields", BAD_INVITES.values(), ids=BAD_INVITES.keys())
def test_invite_validates_its_fields(app, acme, mailer, fields):
    client = signed_in(app, "ann@example.com")

    response = _invite(client, **fields)

    assert response.status_code == 400
    assert count(app, User) == 1
    assert mailer.sent == []


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("active", "already a member"),
        ("disabled", "already a member"),
        ("invited", "already invited"),
    ],
    ids=["member", "disabled_member", "already_invited"],
)
def test_invite_refuses_an_existing_address(app, acme, mailer, status, message):
    make_user(app, acme, "carol@example.com", status=status)
    client = signed_in(app, "ann@example.com")

    response = _invite(client, email="Carol@Example.com")

    assert response.status_code == 409
    assert message in text(response)
    assert count(app, User) == 2
    assert mailer.sent == []


def test_invite_then_resend_replaces_the_link(app, acme, mailer):
    client = signed_in(app, "ann@example.com")
    assert _invite(client, role="admin").status_code == 302
    old = link_path(mailer, "carol@example.com")
    carol = stored(app, "carol@example.com")
    assert (carol.status, carol.role) == ("invited", "admin")
    assert "Pending approval" in text(client.get("/portal/users"))

    assert admin_post(client, carol.id, "resend").status_code == 302

    new = link_path(mailer, "carol@example.com")
    assert new != old
    dead = app.test_client()
    dead.get(old)
    assert dead.get("/invite").status_code == 400
    live = app.test_client()
    live.get(new)
    assert live.get("/invite").status_code == 200
    assert count(app, Invitation) == 1
    assert events(app, "user.resend_invitation", target_label="carol@example.com")


def test_resend_to_a_member_who_joined_is_refused(app, acme, mailer):
    bob = make_user(app, acme, "bob@example.com")

    response = admin_post(signed_in(app, "ann@example.com"), bob.id, "resend")

    assert response.status_code == 409
    assert mailer.sent == []


# --- Users tab: disable, enable, delete, role --------------------------------


def test_admin_actions_change_the_member_and_are_audited(app, acme):
    bob = make_user(app, acme, "bob@example.com")
    client = signed_in(app, "ann@example.com")

    steps = [
        ("disable", {}, ("disabled", "read_only")),
        ("enable", {}, ("active", "read_only")),
        ("role", {"role": "admin"}, ("active", "admin")),
        ("role", {"role": "read_only"}, ("active", "read_only")),
    ]
    for action, data, expected in steps:
        assert admin_post(client, bob.id, action, **data).status_code == 302
        user = stored(app, "bob@example.com")
        assert (user.status, user.role) == expected

    assert admin_post(client, bob.id, "delete").status_code == 302
    assert stored(app, "bob@example.com") is None
    for action in ("user.disable", "user.enable", "user.change_role", "user.delete"):
        found = events(app, action, target_label="bob@example.com")
        assert found, action
        assert all(
            e.actor_label == "ann@example.com" and e.outcome == "success" for e in found
        )
    roles = [e.details for e in events(app, "user.change_role")]
    assert roles == [
        {"old": "read_only", "new": "admin"},
        {"old": "admin", "new": "read_only"},
    ]


def test_the_users_tab_shows_disabled_members(app, acme):
    bob = make_user(app, acme, "bob@example.com")
    client = signed_in(app, "ann@example.com")
    admin_post(client, bob.id, "disable")

    page = text(client.get("/portal/users"))

    assert "Disabled" in page and "Enable User" in page


def test_deleting_a_member_lets_the_email_be_invited_again(app, acme, mailer):
    bob = make_user(app, acme, "bob@example.com")
    client = signed_in(app, "ann@example.com")
    admin_post(client, bob.id, "delete")

    assert _invite(client, email="bob@example.com").status_code == 302
    assert stored(app, "bob@example.com").status == "invited"


@pytest.mark.parametrize(
    "user_id",
    [str(uuid.uuid4()), "not-a-uuid", "1 OR 1=1"],
    ids=["unknown_uuid", "not_a_uuid", "sql_text"],
)
def test_actions_on_unknown_ids_are_404(app, acme, user_id):
    client = signed_in(app, "ann@example.com")

    assert admin_post(client, user_id, "disable").status_code == 404


def test_actions_on_a_member_of_another_workspace_are_404(app, acme):
    other = make_workspace(app, "Other")
    stranger = make_user(app, other, "stranger@example.com")
    client = signed_in(app, "ann@example.com")

    for action in ("disable", "delete", "resend"):
        assert admin_post(client, stranger.id, action).status_code == 404
    assert admin_post(client, stranger.id, "role", role="admin").status_code == 404
    assert stored(app, "stranger@example.com").status == "active"


def test_an_unknown_role_is_refused(app, acme):
    bob = make_user(app, acme, "bob@example.com")

    response = admin_post(
        signed_in(app, "ann@example.com"), bob.id, "role", role="superuser"
    )

    assert response.status_code == 400
    assert stored(app, "bob@example.com").role == "read_only"


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("disable", {}),
        ("delete", {}),
        ("role", {"role": "read_only"}),
    ],
    ids=["disable", "delete", "demote"],
)
def test_an_admin_cannot_act_on_themselves(app, acme, action, data):
    make_user(app, acme, "bob@example.com", role="admin")
    client = signed_in(app, "ann@example.com")
    ann = stored(app, "ann@example.com")

    response = admin_post(client, ann.id, action, **data)

    assert response.status_code == 409
    assert "ask another admin" in text(response)
    ann = stored(app, "ann@example.com")
    assert (ann.status, ann.role) == ("active", "admin")
    assert client.get("/portal/users/invite").status_code == 200


@pytest.mark.parametrize(
    "act",
    [
        user_service.disable_user,
        user_service.delete_user,
        lambda ctx, ws, uid: user_service.change_role(ctx, ws, uid, "read_only"),
    ],
    ids=["disable", "delete", "demote"],
)
def test_the_last_active_admin_cannot_be_removed(app, acme, act):
    # A disabled admin does not count; the operator is an actor that is not
    # itself an admin of the workspace, so only the last-admin rule applies.
    make_user(app, acme, "bob@example.com", role="admin", status="disabled")
    ann = stored(app, "ann@example.com")

    with app.app_context(), pytest.raises(Conflict) as refused:
        act(Context.operator(), acme, ann.id)

    assert refused.value.status == 409
    assert refused.value.code == "last_admin"
    ann = stored(app, "ann@example.com")
    assert (ann.status, ann.role) == ("active", "admin")


def test_two_admins_demoting_each_other_at_once_leave_an_admin(app, acme, monkeypatch):
    make_user(app, acme, "bob@example.com", role="admin")
    ann, bob = stored(app, "ann@example.com"), stored(app, "bob@example.com")
    clients = [signed_in(app, "ann@example.com"), signed_in(app, "bob@example.com")]
    tokens = [csrf_from(c, CSRF_PAGE) for c in clients]
    # Hold each request just after its last-admin check, so both checks run
    # before either change: the workspace lock must make the second wait and
    # see the first. When the lock works, the second never reaches this
    # point while the first waits, and the wait times out harmlessly.
    checked = threading.Barrier(2)
    real_check = user_service._require_other_admin

    def check_then_meet(*args):  # type: ignore[no-untyped-def]
        real_check(*args)
        try:
            checked.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass

    monkeypatch.setattr(user_service, "_require_other_admin", check_then_meet)
    statuses: list[int] = []

    def demote(client, token, target) -> None:  # type: ignore[no-untyped-def]
        statuses.append(
            client.post(
                f"/portal/users/{target}/role",
                data={"role": "read_only", "csrf_token": token},
            ).status_code
        )

    threads = [
        threading.Thread(target=demote, args=(clients[0], tokens[0], bob.id)),
        threading.Thread(target=demote, args=(clients[1], tokens[1], ann.id)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(statuses) == [302, 409]
    assert count(app, User, User.role == "admin", User.status == "active") == 1


# --- Users tab: Read Only members --------------------------------------------


def test_read_only_members_see_the_list_without_actions(app, acme):
    make_user(app, acme, "bob@example.com")
    make_user(app, acme, "carol@example.com", status="invited", password=None)

    page = text(signed_in(app, "bob@example.com").get("/portal/users"))

    assert sorted(listed_emails(page)) == [
        "ann@example.com",
        "bob@example.com",
        "carol@example.com",
    ]
    for label in (
        "Invite",
        "Resend invitation email",
        "Disable User",
        "Enable User",
        "Delete User",
        "Make Admin",
        "Make Read Only",
    ):
        assert label not in page, label


READ_ONLY_ATTEMPTS = {
    "invite": (
        "/portal/users/invite",
        {"email": "eve@example.com", "role": "admin", "full_name": "Eve"},
    ),
    "resend": ("/portal/users/{carol}/resend", {}),
    "disable": ("/portal/users/{ann}/disable", {}),
    "enable": ("/portal/users/{dave}/enable", {}),
    "make_other_admin": ("/portal/users/{carol}/role", {"role": "admin"}),
    "make_self_admin": ("/portal/users/{bob}/role", {"role": "admin"}),
    "demote_admin": ("/portal/users/{ann}/role", {"role": "read_only"}),
    "delete": ("/portal/users/{ann}/delete", {}),
}


@pytest.mark.parametrize(
    ("path", "data"), READ_ONLY_ATTEMPTS.values(), ids=READ_ONLY_ATTEMPTS.keys()
)
def test_read_only_members_are_refused_every_action(app, acme, mailer, path, data):
    bob = make_user(app, acme, "bob@example.com")
    carol = make_user(app, acme, "carol@example.com", status="invited", password=None)
    dave = make_user(app, acme, "dave@example.com", status="disabled")
    ids = {
        "ann": stored(app, "ann@example.com").id,
        "bob": bob.id,
        "carol": carol.id,
        "dave": dave.id,
    }
    client = signed_in(app, "bob@example.com")
    with app.app_context():
        before = sorted(
            (u.email, u.role, u.status) for u in db.session.scalars(sa.select(User))
        )

    response = portal_post(client, path.format(**ids), data)

    assert response.status_code == 403
    with app.app_context():
        after = sorted(
            (u.email, u.role, u.status) for u in db.session.scalars(sa.select(User))
        )
    assert after == before
    assert mailer.sent == []
    denied = events(app, "authz.denied", actor_label="bob@example.com")
    assert len(denied) == 1
    assert (denied[0].outcome, denied[0].reason) == ("denied", "admin_required")


def test_read_only_members_cannot_open_the_delete_page(app, acme):
    make_user(app, acme, "bob@example.com")
    ann = stored(app, "ann@example.com")

    response = signed_in(app, "bob@example.com").get(f"/portal/users/{ann.id}/delete")

    assert response.status_code == 403


# --- profile ----------------------------------------------------------------


def _save_profile(client, **fields: str):  # type: ignore[no-untyped-def]
    values = {"full_name": "Ann Admin", "username": "", "phone": "", "job_title": ""}
    values.update(fields)
    return portal_post(client, "/portal/profile", values)


def test_profile_view_edit_and_save(app, acme):
    client = signed_in(app, "ann@example.com")
    assert "Edit" in text(client.get("/portal/profile"))
    assert "Save" in text(client.get("/portal/profile?edit=1"))

    saved = _save_profile(
        client,
        full_name="  Ann   Arbor ",
        username="Ann.A",
        phone="+44 20 7946 0958",
        job_title="Chief Gatekeeper",
    )

    assert saved.status_code == 302
    page = text(client.get("/portal/profile"))
    for shown in ("Ann Arbor", "Ann.A", "+442079460958", "Chief Gatekeeper"):
        assert shown in page
    ann = stored(app, "ann@example.com")
    assert (ann.full_name, ann.username, ann.username_key) == (
        "Ann Arbor",
        "Ann.A",
        "ann.a",
    )
    assert events(app, "profile.update", target_label="ann@example.com")


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("+33 1 23 45 67 89", "+33123456789"),
        ("  +81 3-1234-5678  ", "+81312345678"),
    ],
    ids=["gb", "us", "fr", "jp_with_spaces"],
)
def test_valid_phone_numbers_are_stored_in_e164(app, acme, typed, e164):
    client = signed_in(app, "ann@example.com")

    assert _save_profile(client, phone=typed).status_code == 302

    assert stored(app, "ann@example.com").phone == e164


BAD_PHONES = {
    "no_country": "020 7946 0958",
    "too_short": "+44 20 7946",
    "digits_only": "12345",
    "words": "call me maybe",
    "unknown_country_code": "+999 1234567",
    "letters_after_number": "+44 20 7946 0958 call me",
    "markup": "<script>alert(1)</script>",
    "overlong": "+4" + "4" * 399,
    "junk_after_padding": "+44 20 7946 0958" + " " * 30 + "then some junk",
}


@pytest.mark.parametrize("phone", BAD_PHONES.values(), ids=BAD_PHONES.keys())
def test_bad_phone_numbers_are_refused_and_nothing_changes(app, acme, phone):
    update_user(app, "ann@example.com", phone="+442079460958")
    client = signed_in(app, "ann@example.com")

    response = _save_profile(client, full_name="Changed Name", phone=phone)

    assert response.status_code == 400
    assert "phone" in text(response)
    ann = stored(app, "ann@example.com")
    assert (ann.full_name, ann.phone) == ("Ann Admin", "+442079460958")


def test_usernames_are_unique_in_a_workspace_ignoring_case(app, acme):
    make_user(app, acme, "bob@example.com")
    update_user(
        app, "bob@example.com", username="Gatekeeper", username_key="gatekeeper"
    )
    client = signed_in(app, "ann@example.com")

    response = _save_profile(client, username="GATEKEEPER", job_title="Changed")

    assert response.status_code == 409
    assert "taken" in text(response)
    ann = stored(app, "ann@example.com")
    assert (ann.username, ann.job_title) == (None, None)


def test_usernames_may_repeat_across_workspaces(app, acme):
    other = make_workspace(app, "Other")
    make_user(app, other, "zed@example.org")
    update_user(
        app, "zed@example.org", username="gatekeeper", username_key="gatekeeper"
    )

    response = _save_profile(signed_in(app, "ann@example.com"), username="Gatekeeper")

    assert response.status_code == 302
    assert stored(app, "ann@example.com").username == "Gatekeeper"


BAD_USERNAMES = {
    "space": "ann admin",
    "markup": "<b>ann</b>",
    "too_long": "a" * 65,
    "zero_width_space": "ann\u200b",
    "at_sign": "ann@example.com",
}


@pytest.mark.parametrize("username", BAD_USERNAMES.values(), ids=BAD_USERNAMES.keys())
def test_bad_usernames_are_refused(app, acme, username):
    response = _save_profile(signed_in(app, "ann@example.com"), username=username)

    assert response.status_code == 400
    assert stored(app, "ann@example.com").username is None


def test_job_title_is_saved_and_an_overlong_one_refused(app, acme):
    client = signed_in(app, "ann@example.com")
    assert _save_profile(client, job_title="Keeper of the Gate").status_code == 302
    assert stored(app, "ann@example.com").job_title == "Keeper of the Gate"

    assert _save_profile(client, job_title="J" * 201).status_code == 400

    assert stored(app, "ann@example.com").job_title == "Keeper of the Gate"


def test_an_empty_name_is_refused(app, acme):
    response = _save_profile(signed_in(app, "ann@example.com"), full_name="   ")

    assert response.status_code == 400
    assert stored(app, "ann@example.com").full_name == "Ann Admin"


# --- profile: email change ---------------------------------------------------


def _ask_email_change(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return portal_post(
        client, "/portal/profile/email", {"email": email, "password": password}
    )


def test_email_change_takes_effect_only_after_the_link(app, acme, mailer):
    client = signed_in(app, "ann@example.com")

    asked = _ask_email_change(client, "Ann.New@Example.com")

    assert asked.status_code == 302
    mail = mailer.last_to("ann.new@example.com")
    assert stored(app, "ann@example.com") is not None
    assert login(app.test_client(), "ann.new@example.com").status_code == 401
    follower = app.test_client()
    landed = follower.get(mail.link.removeprefix("http://localhost"))
    assert (landed.status_code, landed.headers["Location"]) == (302, "/email/confirm")
    assert follower.get("/email/confirm").status_code == 200
    assert stored(app, "ann@example.com") is not None  # GET changes nothing

    confirmed = post_form(follower, "/email/confirm", {})

    assert confirmed.status_code == 200
    assert "ann.new@example.com" in text(confirmed)
    assert stored(app, "ann@example.com") is None
    assert stored(app, "ann.new@example.com").full_name == "Ann Admin"
    told = mailer.last_to("ann@example.com")
    assert "ann.new@example.com" in told.text and told.link is None
    assert login(app.test_client(), "ann.new@example.com").status_code == 302
    assert login(app.test_client(), "ann@example.com").status_code == 401
    assert events(app, "email.change", target_label="ann.new@example.com")
    again = app.test_client()
    again.get(mail.link.removeprefix("http://localhost"))
    assert again.get("/email/confirm").status_code == 400
    assert (
        again.post(
            "/email/confirm", data={"csrf_token": csrf_from(again, "/login")}
        ).status_code
        == 400
    )


def test_email_change_needs_the_current_password(app, acme, mailer):
    response = _ask_email_change(
        signed_in(app, "ann@example.com"), "ann.new@example.com", WRONG
    )

    assert response.status_code == 400
    assert "current password is incorrect" in text(response)
    assert mailer.sent == []


@pytest.mark.parametrize(
    "email",
    ["bob@example.com", "BOB@example.com.", "carol@example.com"],
    ids=["member", "member_other_spelling", "invited"],
)
def test_email_change_refuses_an_address_in_use(app, acme, mailer, email):
    make_user(app, acme, "bob@example.com")
    make_user(app, acme, "carol@example.com", status="invited", password=None)

    response = _ask_email_change(signed_in(app, "ann@example.com"), email)

    assert response.status_code == 409
    assert mailer.sent == []


def test_email_change_to_an_address_taken_meanwhile_is_refused(app, acme, mailer):
    client = signed_in(app, "ann@example.com")
    _ask_email_change(client, "new@example.com")
    path = link_path(mailer, "new@example.com")
    make_user(app, acme, "new@example.com")
    follower = app.test_client()
    follower.get(path)

    response = post_form(follower, "/email/confirm", {})

    assert response.status_code == 409
    assert stored(app, "ann@example.com") is not None


@pytest.mark.parametrize(
    "email",
    ["not an email", "ann@example.com@evil.example", "", "ann@example.com"],
    ids=["not_an_email", "two_at_signs", "empty", "same_address"],
)
def test_email_change_refuses_bad_addresses(app, acme, mailer, email):
    response = _ask_email_change(signed_in(app, "ann@example.com"), email)

    assert response.status_code == 400
    assert mailer.sent == []


# --- SMTP down --------------------------------------------------------------


def test_invitation_survives_a_mail_server_that_is_down(app, acme, mailer):
    client = signed_in(app, "ann@example.com")
    mailer.fail_with = "connection refused"

    response = _invite(client)

    assert response.status_code == 302
    carol = stored(app, "carol@example.com")
    assert carol.status == "invited"
    page = text(client.get("/portal/users"))
    assert "could not be sent" in page and "connection refused" in page
    assert "send failed" in page
    mailer.fail_with = None

    assert admin_post(client, carol.id, "resend").status_code == 302

    assert "send failed" not in text(client.get("/portal/users"))
    joined = app.test_client()
    joined.get(link_path(mailer, "carol@example.com"))
    assert joined.get("/invite").status_code == 200


def test_resend_while_the_mail_server_is_still_down_says_so(app, acme, mailer):
    client = signed_in(app, "ann@example.com")
    mailer.fail_with = "connection refused"
    _invite(client)
    carol = stored(app, "carol@example.com")

    resent = admin_post(client, carol.id, "resend")

    assert resent.status_code == 302
    page = text(client.get("/portal/users"))
    assert "could not be sent (connection refused)" in page
    assert "send failed" in page

"""The policy pipeline as a person meets it: at sign-in and at a portal page,
with the workspace policy written straight into its rows and time moved by
the fake clock."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from markupsafe import escape

from idp.db import db
from idp.models import AuditEvent, IpAllowEntry, SecurityPolicy, Session, User
from idp.services import sessions
from idp.services.context import Client
from idp.services.reasons import MESSAGES
from tests.conftest import (
    CSRF_PAGE,
    PASSWORD,
    give_authenticator,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    table_rows,
)

COOKIE = "portcullis_session"
PROFILE = "/portal/profile"
PROXY = "10.0.0.5"
ALLOWED = "203.0.113.0/25"
IDLE = 10 * 60


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"gateway": {"trusted_proxies": [PROXY]}}


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    return ws


# --- helpers -------------------------------------------------------------------


def set_policy(app, ws, **values: Any) -> None:  # type: ignore[no-untyped-def]
    """Write the Security tab's row directly (the tab is built elsewhere)."""
    with app.app_context():
        row = db.session.get(SecurityPolicy, ws.id)
        for key, value in values.items():
            setattr(row, key, value)
        db.session.commit()


def allow(app, ws, *entries: str) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).ip_restriction_enabled = True
        for entry in entries:
            db.session.add(IpAllowEntry(workspace_id=ws.id, network=entry))
        db.session.commit()


def browser(app, peer: str = "127.0.0.1", forwarded: str | None = None):  # type: ignore[no-untyped-def]
    client = app.test_client()
    place(client, peer, forwarded)
    return client


def place(client, peer: str, forwarded: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Move a browser: the socket peer, and what it sends as X-Forwarded-For."""
    client.environ_base["REMOTE_ADDR"] = peer
    client.environ_base.pop("HTTP_X_FORWARDED_FOR", None)
    if forwarded is not None:
        client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded


def signed_in_browser(app, email: str = "ann@example.com", **where: Any):  # type: ignore[no-untyped-def]
    client = browser(app, **where)
    answer = login(client, email)
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return client


def with_cookie(app, token: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.set_cookie(COOKIE, token)
    return client


def events(app, action: str, **where: Any) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        query = sa.select(AuditEvent).where(AuditEvent.action == action)
        for column, value in where.items():
            query = query.where(getattr(AuditEvent, column) == value)
        rows = list(db.session.scalars(query.order_by(AuditEvent.id)))
        db.session.expunge_all()
        return rows


def session_rows(app) -> list[Session]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = list(db.session.scalars(sa.select(Session).order_by(Session.created_at)))
        db.session.expunge_all()
        return rows


def shows(response, reason: str) -> bool:  # type: ignore[no-untyped-def]
    return str(escape(MESSAGES[reason])) in response.get_data(as_text=True)


def assert_sent_to_sign_in(client, reason: str) -> None:  # type: ignore[no-untyped-def]
    """The next portal request goes to /login, which says why."""
    response = client.get(PROFILE)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("/login?rd=")
    assert f"reason={reason}" in location
    assert session_cookie(client) is None
    page = client.get(location)
    assert page.status_code == 200
    assert shows(page, reason)


# --- GW-2: X-Forwarded-For spoofing against the IP allow-list ----------------

SPOOFS = [
    pytest.param(
        "203.0.113.200", "203.0.113.9", "203.0.113.200", id="a_untrusted_peer"
    ),
    pytest.param(
        PROXY, "203.0.113.9, 203.0.113.200", "203.0.113.200", id="b_rightmost"
    ),
    pytest.param(PROXY, "a", None, id="c_letter"),
    pytest.param(PROXY, "999.1.1.1", None, id="c_bad_octet"),
    pytest.param(PROXY, "", None, id="c_empty"),
]


def _reason(client_ip: str | None) -> str:
    return "ip_not_allowed" if client_ip else "ip_unknown"


@pytest.mark.parametrize(("peer", "forwarded", "client_ip"), SPOOFS)
def test_gw_2_sign_in_is_refused(app, acme, peer, forwarded, client_ip):
    allow(app, acme, ALLOWED)
    client = browser(app, peer, forwarded)
    before = table_rows(app, Session)

    answer = login(client, "ann@example.com")

    assert answer.status_code == 403
    assert shows(answer, _reason(client_ip))
    assert session_cookie(client) is None
    assert table_rows(app, Session) == before
    (event,) = events(app, "signin.failure")
    assert event.reason == _reason(client_ip)
    assert (event.client_ip, event.peer_ip) == (client_ip, peer)
    assert events(app, "signin.success") == []


@pytest.mark.parametrize(("peer", "forwarded", "client_ip"), SPOOFS)
def test_gw_2_portal_page_is_refused_and_the_session_kept(
    app, acme, peer, forwarded, client_ip
):
    allow(app, acme, ALLOWED)
    client = signed_in_browser(app, peer=PROXY, forwarded="203.0.113.9")
    assert client.get(PROFILE).status_code == 200

    place(client, peer, forwarded)
    answer = client.get(PROFILE)

    assert answer.status_code == 403
    assert shows(answer, _reason(client_ip))
    (event,) = events(app, "access.denied")
    assert event.reason == _reason(client_ip)
    assert (event.client_ip, event.peer_ip) == (client_ip, peer)
    # Where the member is, not who: back on the allowed network, the same
    # session works again.
    assert session_cookie(client) is not None
    place(client, PROXY, "203.0.113.9")
    assert client.get(PROFILE).status_code == 200
    assert events(app, "session.ended") == []


@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        (PROXY, "203.0.113.9"),
        (PROXY, "198.51.100.1, 203.0.113.9"),
        (PROXY, f"203.0.113.9, {PROXY}"),
        ("203.0.113.9", None),
        ("203.0.113.127", "198.51.100.1"),
        ("::ffff:203.0.113.9", None),
    ],
    ids=[
        "through_proxy",
        "rightmost_untrusted_counts",
        "proxy_chain",
        "direct",
        "untrusted_header_ignored",
        "v4_mapped_peer",
    ],
)
def test_gw_2_allowed_address_passes(app, acme, peer, forwarded):
    allow(app, acme, ALLOWED)
    client = signed_in_browser(app, peer=peer, forwarded=forwarded)

    assert client.get(PROFILE).status_code == 200
    (event,) = events(app, "signin.success")
    assert event.client_ip.startswith("203.0.113.")


def test_an_empty_allow_list_switched_on_refuses_everyone(app, acme):
    allow(app, acme)
    answer = login(browser(app, "203.0.113.9"), "ann@example.com")
    assert answer.status_code == 403
    assert shows(answer, "ip_not_allowed")


def test_a_stored_entry_that_does_not_parse_allows_nothing_and_breaks_nothing(
    app, acme
):
    allow(app, acme, "not-a-network", ALLOWED)
    assert login(browser(app, "203.0.113.9"), "ann@example.com").status_code == 302
    refused = login(browser(app, "198.51.100.1"), "ann@example.com")
    assert refused.status_code == 403


# --- idle timeout and forced re-login ------------------------------------------


def test_idle_timeout_one_second_before_and_after(app, acme, clock):
    set_policy(app, acme, idle_timeout_seconds=IDLE)
    client = signed_in_browser(app)
    token = session_cookie(client)

    clock.advance(seconds=IDLE - 1)
    assert client.get(PROFILE).status_code == 200
    clock.advance(seconds=IDLE + 1)

    assert_sent_to_sign_in(client, "idle_timeout")
    (row,) = session_rows(app)
    assert (row.revoked_at, row.revoked_reason) == (clock.now, "idle_timeout")
    # The same cookie again (another tab): still sent to sign in, no second
    # event.
    assert_sent_to_sign_in(with_cookie(app, token), "idle_timeout")
    (event,) = events(app, "session.ended")
    assert event.reason == "idle_timeout"
    assert event.details == {"session": str(row.id)}


def test_forced_relogin_one_second_before_and_after(app, acme, clock):
    set_policy(app, acme, relogin_days=1)
    client = signed_in_browser(app)
    token = session_cookie(client)

    clock.advance(days=1, seconds=-1)
    assert client.get(PROFILE).status_code == 200
    clock.advance(seconds=2)

    assert_sent_to_sign_in(client, "relogin_required")
    assert_sent_to_sign_in(with_cookie(app, token), "relogin_required")
    (row,) = session_rows(app)
    assert row.revoked_reason == "relogin_required"
    assert len(events(app, "session.ended", reason="relogin_required")) == 1


def test_forced_relogin_is_not_postponed_by_activity(app, acme, clock):
    set_policy(app, acme, relogin_days=1, idle_timeout_seconds=IDLE)
    client = signed_in_browser(app)
    for _ in range(144):
        clock.advance(seconds=IDLE - 1)
        assert client.get(PROFILE).status_code == 200
    # A day and a second after sign-in, 145 s after the last request.
    clock.advance(seconds=86_401 - 144 * (IDLE - 1))
    assert_sent_to_sign_in(client, "relogin_required")


def test_two_requests_racing_past_the_idle_timeout_end_it_once(
    app, acme, clock, monkeypatch
):
    """Both requests read the live session before either ends it; only the
    one whose revocation lands writes the event, and both go to sign in."""
    set_policy(app, acme, idle_timeout_seconds=IDLE)
    token = session_cookie(signed_in_browser(app))
    together = threading.Barrier(2, timeout=20)
    revoke = sessions.revoke_where

    def revoke_together(*conditions, reason):  # type: ignore[no-untyped-def]
        together.wait()
        return revoke(*conditions, reason=reason)

    monkeypatch.setattr(sessions, "revoke_where", revoke_together)
    clock.advance(seconds=IDLE + 1)
    answers: list[Any] = [None, None]

    def hit(i: int) -> None:
        answers[i] = with_cookie(app, token).get(PROFILE)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    for answer in answers:
        assert answer.status_code == 302
        assert "reason=idle_timeout" in answer.headers["Location"]
    assert len(events(app, "session.ended")) == 1


# Last-seen is written at most once per interval: a minute, or a tenth of
# the idle timeout when that is shorter. The idle clock runs from last-seen.


def test_a_member_active_every_30_seconds_outlives_a_one_minute_timeout(
    app, acme, clock
):
    set_policy(app, acme, idle_timeout_seconds=60)
    client = signed_in_browser(app)
    for _ in range(10):
        clock.advance(seconds=30)
        assert client.get(PROFILE).status_code == 200
        (row,) = session_rows(app)
        assert row.last_seen_at == clock.now

    clock.advance(seconds=59)
    assert client.get(PROFILE).status_code == 200
    clock.advance(seconds=60)
    assert_sent_to_sign_in(client, "idle_timeout")


def test_last_seen_lags_by_less_than_a_minute_so_a_session_ends_at_most_that_early(
    app, acme, clock
):
    set_policy(app, acme, idle_timeout_seconds=IDLE)
    client = signed_in_browser(app)
    signed_in_at = clock.now

    clock.advance(seconds=59)
    assert client.get(PROFILE).status_code == 200
    (row,) = session_rows(app)
    assert row.last_seen_at == signed_in_at

    # 541 s after the last request, 600 s after the last recorded sight.
    clock.advance(seconds=IDLE - 59)
    assert_sent_to_sign_in(client, "idle_timeout")


def test_a_request_a_minute_after_the_last_write_moves_the_idle_clock(app, acme, clock):
    set_policy(app, acme, idle_timeout_seconds=IDLE)
    client = signed_in_browser(app)

    clock.advance(seconds=60)
    assert client.get(PROFILE).status_code == 200
    clock.advance(seconds=IDLE - 1)
    assert client.get(PROFILE).status_code == 200


# --- forced MFA ----------------------------------------------------------------

MODES = pytest.mark.parametrize("mode", ["force", "force_except_sso"])


@MODES
def test_forced_mfa_takes_a_member_without_a_factor_to_set_up(app, acme, mode):
    set_policy(app, acme, mfa_mode=mode)
    client = browser(app)
    before = table_rows(app, Session, User)

    answer = login(client, "ann@example.com")

    # No session until a factor is set up: only the set-up pages open.
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login/mfa/setup"
    assert session_cookie(client) is None
    assert table_rows(app, Session, User) == before
    assert events(app, "signin.success") == []
    assert client.get(PROFILE).status_code == 302
    assert client.get("/login/mfa/setup").status_code == 200


@MODES
def test_forced_mfa_asks_a_member_with_a_factor_at_the_mfa_step(app, acme, mode):
    give_authenticator(app, "ann@example.com")
    set_policy(app, acme, mfa_mode=mode)
    client = browser(app)

    answer = login(client, "ann@example.com")

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login/mfa"
    assert session_cookie(client) is None
    assert session_rows(app) == []
    assert events(app, "signin.success") == []


@MODES
def test_forcing_mfa_ends_a_session_without_it_at_its_next_request(app, acme, mode):
    client = signed_in_browser(app)
    assert client.get(PROFILE).status_code == 200

    set_policy(app, acme, mfa_mode=mode)

    assert_sent_to_sign_in(client, "mfa_required")
    (row,) = session_rows(app)
    assert row.revoked_reason == "mfa_required"
    assert len(events(app, "session.ended", reason="mfa_required")) == 1


def _sso_session(app, email: str) -> str:  # type: ignore[no-untyped-def]
    """A session as the enterprise SSO sign-in will issue it."""
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        token = sessions.issue(
            user,
            Client(ip="127.0.0.1"),
            amr=["ext"],
            authenticated_at=app.extensions["idp"].clock(),
            sso_connection_id=uuid.uuid4(),
        )
        db.session.commit()
        return token


@pytest.mark.parametrize(
    ("mode", "passes"),
    [("force_except_sso", True), ("force", False)],
    ids=["except_sso", "force"],
)
def test_an_sso_session_counts_as_multi_factor_only_when_sso_is_excepted(
    app, acme, mode, passes
):
    set_policy(app, acme, mfa_mode=mode)
    client = with_cookie(app, _sso_session(app, "ann@example.com"))
    if passes:
        assert client.get(PROFILE).status_code == 200
    else:
        assert_sent_to_sign_in(client, "mfa_required")


def test_a_stale_session_under_forced_mfa_is_timed_out_first(app, acme, clock):
    client = signed_in_browser(app)
    set_policy(app, acme, mfa_mode="force", idle_timeout_seconds=IDLE)
    clock.advance(seconds=IDLE + 1)
    assert_sent_to_sign_in(client, "idle_timeout")
    assert events(app, "session.ended", reason="mfa_required") == []


# --- max concurrent sessions -----------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "before", "notice"),
    [
        (2, 2, "your oldest session was signed out"),
        (1, 3, "your oldest 3 sessions were signed out"),
    ],
    ids=["limit_2", "limit_1_three_open"],
)
def test_a_sign_in_past_the_limit_ends_the_oldest_sessions(
    app, acme, clock, limit, before, notice
):
    older = []
    for _ in range(before):
        older.append(signed_in_browser(app))
        clock.advance(seconds=1)
    set_policy(app, acme, max_sessions=limit)

    newest = browser(app)
    answer = login(newest, "ann@example.com")

    assert answer.status_code == 302
    page = newest.get(answer.headers["Location"])
    assert page.status_code == 200
    assert notice in page.get_data(as_text=True)
    assert newest.get(PROFILE).status_code == 200
    ended = before + 1 - limit
    for client in older[:ended]:
        assert_sent_to_sign_in(client, "session_limit")
    for client in older[ended:]:
        assert client.get(PROFILE).status_code == 200
    (event,) = events(app, "session.limit_reached")
    assert event.details == {"sessions_ended": ended, "limit": limit}
    assert event.reason == "session_limit"
    live = [r for r in session_rows(app) if r.revoked_at is None]
    assert len(live) == limit


def test_sessions_already_timed_out_do_not_count_against_the_limit(app, acme, clock):
    set_policy(app, acme, max_sessions=2, idle_timeout_seconds=IDLE)
    stale = signed_in_browser(app)
    clock.advance(seconds=IDLE // 2)
    active = signed_in_browser(app)
    clock.advance(seconds=IDLE // 2 + 1)

    newest = browser(app)
    answer = login(newest, "ann@example.com", follow=True)

    assert "limited number of sessions" not in answer.get_data(as_text=True)
    assert events(app, "session.limit_reached") == []
    assert active.get(PROFILE).status_code == 200
    assert newest.get(PROFILE).status_code == 200
    assert_sent_to_sign_in(stale, "idle_timeout")


def test_signing_in_again_in_the_same_browser_does_not_count_twice(app, acme, clock):
    set_policy(app, acme, max_sessions=2)
    other = signed_in_browser(app)
    clock.advance(seconds=1)
    client = signed_in_browser(app)
    clock.advance(seconds=1)

    # GET /login sends a signed-in browser away; the form still posts.
    post_form(client, "/login", {"email": "ann@example.com"}, csrf_page=CSRF_PAGE)
    again = post_form(client, "/login/password", {"password": PASSWORD})
    assert again.status_code == 302

    assert other.get(PROFILE).status_code == 200
    assert client.get(PROFILE).status_code == 200
    assert events(app, "session.limit_reached") == []
    reasons = sorted(str(r.revoked_reason) for r in session_rows(app))
    assert reasons == ["None", "None", "replaced"]


# --- account state: a path that forgot to revoke -------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [("disabled", "account_disabled"), ("invited", "account_not_active")],
    ids=["disabled", "invited"],
)
def test_an_account_no_longer_active_ends_its_session_at_the_next_request(
    app, acme, status, reason
):
    """Its sessions normally end with the admin's action; the pipeline ends
    one that was left behind, so enabling the account again cannot revive it."""
    client = signed_in_browser(app)
    token = session_cookie(client)
    with app.app_context():
        db.session.execute(
            sa.update(User.__table__)
            .where(User.__table__.c.email == "ann@example.com")
            .values(status=status)
        )
        db.session.commit()

    assert_sent_to_sign_in(client, reason)
    (event,) = events(app, "session.ended")
    assert event.reason == reason

    with app.app_context():
        db.session.execute(sa.update(User.__table__).values(status="active"))
        db.session.commit()
    assert with_cookie(app, token).get(PROFILE).status_code == 302


def test_an_invited_account_that_somehow_has_a_password_cannot_sign_in(app, acme):
    make_user(app, acme, "ivy@example.com", status="invited")
    client = browser(app)

    answer = login(client, "ivy@example.com")

    assert answer.status_code == 403
    assert shows(answer, "account_not_active")
    assert session_cookie(client) is None
    assert events(app, "signin.failure")[0].reason == "account_not_active"

"""Attacks on what is built: each test is a finding (or a probe that held)
from a break-it pass over sign-in, sessions, links, the Users tab and the
audit log. Each fails without the fix it names."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    DomainAllowEntry,
    EmailToken,
    SecurityPolicy,
    Session,
    User,
)
from tests.conftest import (
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
)

NEW_PASSWORD = "a quite different passphrase"


def _events(app, *conditions) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = list(
            db.session.scalars(
                sa.select(AuditEvent).where(*conditions).order_by(AuditEvent.id)
            )
        )
        db.session.expunge_all()
        return rows


def _signed_in(app, email: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    answer = login(client, email)
    assert answer.status_code == 302, answer.status_code
    return client


def _user(app, workspace, email: str) -> User:  # type: ignore[no-untyped-def]
    with app.app_context():
        user = db.session.scalar(
            sa.select(User).where(
                User.workspace_id == workspace.id, User.email == email
            )
        )
        assert user is not None
        db.session.expunge(user)
        return user


# --- per-email throttle under concurrency ---------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "signin": {
                "account_failure_limit": 3,
                "hash_concurrency": 16,
                "hash_wait_seconds": 30,
                "ip_limits": "1000 per minute",
            }
        }
    ],
    ids=["limit3"],
)
def test_concurrent_wrong_passwords_never_exceed_the_failure_limit(app, overrides):  # type: ignore[no-untyped-def]
    """Finding: the lock was read before hashing and the failure counted
    after, so a burst of parallel guesses all passed the check and every one
    was hashed: the per-email limit did not bound guesses at all."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    passwords = app.extensions["idp"].passwords
    original = passwords.verify
    hashed: list[int] = []

    def slow_verify(stored, typed):  # type: ignore[no-untyped-def]
        hashed.append(1)
        time.sleep(0.3)
        return original(stored, typed)

    passwords.verify = slow_verify
    clients = []
    for n in range(8):
        c = app.test_client()
        post_form(c, "/login", {"email": "ann@example.com"})
        clients.append((c, csrf_from(c, "/login/password"), f"wrong guess number {n}"))
    start = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def attempt(i: int) -> None:
        c, token, guess = clients[i]
        start.wait()
        answers[i] = c.post(
            "/login/password", data={"password": guess, "csrf_token": token}
        )

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(a.status_code for a in answers)
    assert len(hashed) <= 3, (len(hashed), statuses)
    assert statuses.count(401) <= 3 and statuses.count(429) >= 5, statuses
    # Every refusal still has its one audit entry.
    failures = _events(
        app, AuditEvent.action.in_(("signin.failure", "request.refused"))
    )
    assert len(failures) == len(clients), [(e.action, e.reason) for e in failures]


# --- the workspace-choice step ----------------------------------------------


def _two_workspaces(app):  # type: ignore[no-untyped-def]
    first, second = make_workspace(app, "Alpha"), make_workspace(app, "Beta")
    make_user(app, first, "sam@example.com")
    make_user(app, second, "sam@example.com")
    return first, second


def _to_choice(client) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    answer = login(client, "sam@example.com")
    assert answer.status_code == 302 and answer.headers["Location"].endswith(
        "/login/workspace"
    )
    page = client.get("/login/workspace").get_data(as_text=True)
    ids = re.findall(r'name="account" value="([^"]+)"', page)
    assert len(ids) == 2
    return client.get_cookie("portcullis_flow").value, ids


def _choose(client, flow_cookie: str, account: str):  # type: ignore[no-untyped-def]
    client.set_cookie("portcullis_flow", flow_cookie)
    token = csrf_from(client, "/login/workspace")
    return client.post(
        "/login/workspace", data={"account": account, "csrf_token": token}
    )


def test_the_workspace_choice_cannot_be_replayed_after_sign_out(app, clock):  # type: ignore[no-untyped-def]
    """Finding: the choice step was stateless: a copy of the flow cookie
    taken before the choice signed in again, without the password, after the
    person had chosen and signed out (shared computer, proxy logs)."""
    _two_workspaces(app)
    client = app.test_client()
    stolen, ids = _to_choice(client)
    clock.advance(seconds=1)
    chosen = client.post(
        "/login/workspace",
        data={"account": ids[0], "csrf_token": csrf_from(client, "/login/workspace")},
    )
    assert chosen.status_code == 302 and session_cookie(client)
    client.post(
        "/logout", data={"csrf_token": csrf_from(client, "/portal/privacy-security")}
    )
    assert session_cookie(client) is None

    clock.advance(seconds=30)
    attacker = app.test_client()
    for account in ids:
        attacker.set_cookie("portcullis_flow", stolen)
        if attacker.get("/login/workspace").status_code != 200:
            continue  # the stale flow sends back to /login: good
        answer = _choose(attacker, stolen, account)
        assert session_cookie(attacker) is None, account
        assert answer.status_code in (302, 400)
        if answer.status_code == 302:
            assert "/login" in answer.headers["Location"]


def test_the_workspace_choice_dies_when_the_password_changes(app, clock):  # type: ignore[no-untyped-def]
    """Finding: a choice opened with the old password still signed in after
    the owner changed it (up to the 15-minute flow lifetime)."""
    _two_workspaces(app)
    attacker = app.test_client()
    flow, ids = _to_choice(attacker)
    clock.advance(seconds=5)
    owner = app.test_client()
    answer = login(owner, "sam@example.com")
    answer = post_form(owner, "/login/workspace", {"account": ids[1]})
    assert answer.status_code == 302
    changed = post_form(
        owner,
        "/portal/privacy-security/password",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 302
    clock.advance(seconds=5)
    _choose(attacker, flow, ids[1])
    assert session_cookie(attacker) is None


def test_a_choice_made_normally_still_works_twice_in_a_row(app, clock):  # type: ignore[no-untyped-def]
    """Control for the two tests above: signing in again the normal way,
    choosing the same workspace, works."""
    _two_workspaces(app)
    client = app.test_client()
    for _ in range(2):
        _, ids = _to_choice(client)
        answer = client.post(
            "/login/workspace",
            data={
                "account": ids[0],
                "csrf_token": csrf_from(client, "/login/workspace"),
            },
        )
        assert answer.status_code == 302 and session_cookie(client)
        assert client.get("/portal/profile").status_code == 200
        client.post(
            "/logout",
            data={"csrf_token": csrf_from(client, "/portal/privacy-security")},
        )
        clock.advance(seconds=1)


# --- links that outlive a credential change -------------------------------


def _request_email_change(client, new: str):  # type: ignore[no-untyped-def]
    return post_form(
        client, "/portal/profile/email", {"email": new, "password": PASSWORD}
    )


def test_a_password_reset_voids_a_pending_email_change(app, mailer):  # type: ignore[no-untyped-def]
    """Finding: someone who had the password asked to move the account to
    their own address; the owner then reset the password (every session
    ended) but the 24-hour confirmation link still took the account."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    intruder = _signed_in(app, "ann@example.com")
    assert _request_email_change(intruder, "mallory@example.com").status_code == 302
    confirm_link = mailer.last_to("mallory@example.com").link

    owner = app.test_client()
    post_form(owner, "/login/forgot", {"email": "ann@example.com"})
    deadline = time.monotonic() + 5
    while (
        not any(m.to == "ann@example.com" for m in mailer.sent)
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    reset_link = mailer.last_to("ann@example.com").link
    owner.get(reset_link.removeprefix("http://localhost"))
    done = post_form(
        owner, "/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert done.status_code == 302

    intruder.get(confirm_link.removeprefix("http://localhost"))
    assert intruder.get("/email/confirm").status_code == 400
    answer = post_form(intruder, "/email/confirm", {}, csrf_page="/login")
    assert answer.status_code == 400
    assert _user(app, ws, "ann@example.com").email == "ann@example.com"


def test_a_password_change_voids_pending_reset_and_email_links(app, mailer):  # type: ignore[no-untyped-def]
    """Finding: after *Change password* (which ends every other session),
    a reset link and an email-change link issued before it kept working."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = _signed_in(app, "ann@example.com")
    assert _request_email_change(client, "mallory@example.com").status_code == 302
    with app.app_context():
        from idp.services.account import request_password_reset
        from idp.services.context import Client, Context

        request_password_reset(Context.anonymous(Client()), "ann@example.com")
    changed = post_form(
        client,
        "/portal/privacy-security/password",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 302
    with app.app_context():
        left = db.session.scalar(sa.select(sa.func.count()).select_from(EmailToken))
    assert left == 0


# --- joining a workspace whose domain allow-list changed --------------------


def test_an_invitation_cannot_be_accepted_once_its_domain_is_not_allowed(app, mailer):  # type: ignore[no-untyped-def]
    """Finding: the allow-list was checked when inviting only; an invitation
    sent before the admin restricted the domains still let the person join
    (SECURITY.md 6.3.4: wherever an account is created or joins)."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    admin = _signed_in(app, "ann@example.com")
    post_form(
        admin,
        "/portal/users/invite",
        {"email": "out@other.org", "role": "read_only", "full_name": "Out"},
    )
    link = mailer.last_to("out@other.org").link
    with app.app_context():
        db.session.get(SecurityPolicy, ws.id).domain_restriction_enabled = True
        db.session.add(DomainAllowEntry(workspace_id=ws.id, domain="example.com"))
        db.session.commit()
    guest = app.test_client()
    guest.get(link.removeprefix("http://localhost"))
    answer = post_form(
        guest,
        "/invite",
        {
            "full_name": "Out",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
        },
    )
    assert answer.status_code in (400, 403)
    assert session_cookie(guest) is None
    assert _user(app, ws, "out@other.org").status == "invited"
    refusals = _events(app, AuditEvent.reason == "domain_not_allowed")
    assert len(refusals) == 1


# --- per-address limit refusals are audited ---------------------------------


@pytest.mark.parametrize(
    "overrides", [{"signin": {"ip_limits": "2 per minute"}}], ids=["2pm"]
)
def test_a_rate_limited_request_is_audited_once(app, overrides):  # type: ignore[no-untyped-def]
    """Finding: a 429 from the per-address limit left no audit event, so an
    admin never saw a guessing run once it hit the limit (ASVS 16.3.1)."""
    client = app.test_client()
    statuses = [
        post_form(client, "/login", {"email": f"x{n}@example.com"}).status_code
        for n in range(3)
    ]
    assert statuses == [302, 302, 429]
    refused = _events(app, AuditEvent.action == "request.refused")
    assert [(e.reason, e.details.get("endpoint")) for e in refused] == [
        ("rate_limited", "auth.login")
    ]


# --- the audit log's free text: FTS syntax, other workspaces ----------------

HOSTILE_QUERIES = [
    '"',
    '""',
    '"""',
    'a"b',
    "'",
    "''; DROP TABLE audit_events; --",
    "*",
    "**",
    "abc*",
    "^abc",
    "NEAR(abc def)",
    "NEAR",
    "abc NEAR/2 def",
    "abc AND def",
    "OR",
    "NOT abc",
    "abc OR def",
    "(",
    ")",
    "((abc",
    "{actor_label}: abc",
    "actor_label:abc",
    "target_label:secret",
    "- abc",
    "+abc",
    ":",
    "%",
    "_",
    "%%%",
    "\\",
    "\\\\%",
    "a\u0301bc",
    "\u00e9\u00e9\u00e9",
    "\U0001f600\U0001f600\U0001f600",
    "\u202eabc",
    "x" * 5000,
    "se",
    "sec",
    "secret-other",
]


def test_hostile_audit_queries_never_error_or_leak_another_workspace(app):  # type: ignore[no-untyped-def]
    """Probe (held): FTS5 query syntax, LIKE wildcards and odd Unicode in the
    search box; the page and the CSV always answer, and never show another
    workspace's events."""
    ours, theirs = make_workspace(app, "Ours"), make_workspace(app, "Theirs")
    make_user(app, ours, "ann@example.com", role="read_only")
    make_user(app, theirs, "secret-other@example.com", role="admin")
    login(app.test_client(), "secret-other@example.com", "wrong password here")
    login(app.test_client(), "secret-other@example.com")
    client = _signed_in(app, "ann@example.com")
    for query in HOSTILE_QUERIES:
        for path in ("/portal/audit-logs", "/portal/audit-logs/download"):
            for key in ("q", "actor"):
                answer = client.get(path, query_string={key: query})
                assert answer.status_code == 200, (path, key, query)
                assert "secret-other@example.com" not in answer.get_data(
                    as_text=True
                ), (path, key, query)


def test_the_export_makes_hostile_values_inert(app):  # type: ignore[no-untyped-def]
    """Probe (held): formula signs and control characters chosen by anyone
    (the User-Agent of a failed sign-in) are inert in the CSV."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    nasty = [
        '=HYPERLINK("http://evil.example")',
        "+1+1",
        "-2",
        "@SUM(A1)",
        "\t=1+1",
        "\r=1+1",
        "a\r\nforged,line",
        "\x1b[31mred",
    ]
    for agent in nasty:
        anon = app.test_client()
        anon.environ_base["HTTP_USER_AGENT"] = agent
        login(anon, "ann@example.com", "not the password at all")
    client = _signed_in(app, "ann@example.com")
    body = client.get("/portal/audit-logs/download").get_data(as_text=True)
    import csv
    import io

    rows = list(csv.reader(io.StringIO(body)))
    agents = [r[9] for r in rows[1:] if r[9]]
    assert len(rows) - 1 == len(body.split("\r\n")) - 2  # no value split a line
    for value in agents:
        assert value[:1] not in ("=", "+", "-", "@", "\t", "\r"), value
        assert not any(ord(c) < 32 for c in value), value


# --- enumeration by timing ------------------------------------------------


def test_forgot_password_takes_as_long_for_known_and_unknown_addresses(app, mailer):  # type: ignore[no-untyped-def]
    """Finding: a known address cost a token write, an audit event and a
    mail to compose; the answer came about 2 ms later than for an unknown
    one, enough to tell accounts apart from outside. Now every answer is
    held to the same floor."""
    import statistics

    from idp.web import auth

    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")

    def answer_seconds(email: str) -> list[float]:
        times = []
        for _ in range(7):
            client = app.test_client()
            token = csrf_from(client, "/login/forgot")
            began = time.perf_counter()
            answer = client.post(
                "/login/forgot", data={"email": email, "csrf_token": token}
            )
            times.append(time.perf_counter() - began)
            assert answer.status_code == 200
        return times

    known, unknown = (
        answer_seconds("ann@example.com"),
        answer_seconds("nobody@example.com"),
    )
    floor = auth.FORGOT_ANSWER_FLOOR_SECONDS
    assert min(known) >= floor and min(unknown) >= floor, (known, unknown)
    assert abs(statistics.median(known) - statistics.median(unknown)) < floor / 10


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "passwords": {"argon2_memory_kib": 19456, "argon2_time_cost": 2},
            "signin": {"account_failure_limit": 1000},
        }
    ],
    ids=["owasp_cost"],
)
def test_known_and_unknown_emails_cost_the_same_at_the_password_step(app, overrides):  # type: ignore[no-untyped-def]
    """Probe (held, real argon2 cost): a wrong password for a known email
    and any password for an unknown or invited one take the same time, one
    hash each. (An email in two workspaces costs two hashes; see the
    report: inherent to per-workspace passwords.)"""
    import statistics

    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    make_user(app, ws, "ivy@example.com", status="invited", password=None)

    def answer_seconds(email: str) -> float:
        times = []
        for n in range(9):
            client = app.test_client()
            post_form(client, "/login", {"email": email})
            token = csrf_from(client, "/login/password")
            began = time.perf_counter()
            answer = client.post(
                "/login/password",
                data={"password": f"wrong password {n}", "csrf_token": token},
            )
            times.append(time.perf_counter() - began)
            assert answer.status_code == 401
        return statistics.median(times)

    answer_seconds("warm@example.com")
    known = answer_seconds("ann@example.com")
    for other in ("nobody@example.com", "ivy@example.com"):
        assert abs(answer_seconds(other) - known) < known * 0.5, (other, known)


# --- races that ended in a 500 --------------------------------------------


def test_email_confirm_racing_another_member_for_the_address_is_a_clean_conflict(
    app, mailer, monkeypatch
):  # type: ignore[no-untyped-def]
    """Finding: the confirmation checked that the address was free, then
    wrote it; an invitation for the same address landing in between made the
    commit fail with an IntegrityError, answered 500 with no audit event."""
    from idp.services import account

    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client = _signed_in(app, "ann@example.com")
    assert _request_email_change(client, "new@example.com").status_code == 302
    link = mailer.last_to("new@example.com").link
    real_check = account.require_allowed_domain

    def meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_check(*args, **kwargs)
        engine = sa.create_engine(
            app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool
        )
        with engine.begin() as conn:
            conn.execute(
                sa.insert(User.__table__).values(
                    id=__import__("uuid").uuid4(),
                    workspace_id=ws.id,
                    email="new@example.com",
                    full_name="Other",
                    role="read_only",
                    status="invited",
                )
            )
        engine.dispose()

    monkeypatch.setattr(account, "require_allowed_domain", meanwhile)
    client.get(link.removeprefix("http://localhost"))
    answer = post_form(client, "/email/confirm", {})
    assert answer.status_code == 409
    assert _user(app, ws, "ann@example.com").email == "ann@example.com"
    refused = _events(app, AuditEvent.reason == "email_taken")
    assert len(refused) == 1


def _meanwhile(app, statement) -> None:  # type: ignore[no-untyped-def]
    """Run ``statement`` on its own connection, as another request would."""
    engine = sa.create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool
    )
    with engine.begin() as conn:
        conn.execute(statement)
    engine.dispose()


@pytest.mark.parametrize("change", ["disable", "delete"])
def test_an_account_disabled_or_deleted_while_its_password_is_checked_gets_no_session(
    app, change
):  # type: ignore[no-untyped-def]
    """Finding: the account was read before the (slow) hash and its stale
    copy judged afterwards: disabled meanwhile, it got a session row and a
    `signin.success` event; deleted meanwhile, the session insert broke the
    foreign key and the person saw a 500."""
    ws = make_workspace(app)
    sam = make_user(app, ws, "sam@example.com")
    passwords = app.extensions["idp"].passwords
    original = passwords.verify

    def verify_while_admin_acts(stored, typed):  # type: ignore[no-untyped-def]
        result = original(stored, typed)
        if change == "disable":
            _meanwhile(
                app,
                sa.update(User.__table__)
                .where(User.__table__.c.id == sam.id)
                .values(status="disabled"),
            )
        else:
            _meanwhile(
                app, sa.delete(User.__table__).where(User.__table__.c.id == sam.id)
            )
        return result

    passwords.verify = verify_while_admin_acts
    client = app.test_client()
    answer = login(client, "sam@example.com")
    assert answer.status_code in (401, 403)
    assert session_cookie(client) is None
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Session)) == 0
    assert _events(app, AuditEvent.action == "signin.success") == []
    denied = _events(app, AuditEvent.action == "signin.failure")
    assert len(denied) == 1
    assert denied[0].reason == (
        "account_disabled" if change == "disable" else "account_deleted"
    )


def test_reset_while_signed_in_as_another_ends_that_session_on_the_server(app, mailer):
    from idp.models import Session

    ws = make_workspace(app, "Reset Co")
    make_user(app, ws, "ann@example.com")
    make_user(app, ws, "bob@example.com")
    browser = app.test_client()
    login(browser, "bob@example.com")
    post_form(browser, "/login/forgot", {"email": "ann@example.com"})
    import time as _time

    for _ in range(100):
        if any(m.to == "ann@example.com" for m in mailer.sent):
            break
        _time.sleep(0.02)
    link = mailer.last_to("ann@example.com").link.removeprefix("http://localhost")
    browser.get(link)
    response = post_form(
        browser,
        "/reset",
        {
            "password": "a brand new passphrase",
            "password_confirm": "a brand new passphrase",
        },
    )
    assert response.status_code == 302
    with app.app_context():
        live = db.session.scalars(
            sa.select(Session).where(Session.revoked_at.is_(None))
        ).all()
        assert live == []


def test_throttled_sign_in_is_audited_in_the_workspace(app, overrides):
    from idp.models import AuditEvent

    ws = make_workspace(app, "Throttle Co")
    make_user(app, ws, "ann@example.com")
    client = app.test_client()
    limit = app.extensions["idp"].settings["signin"]["account_failure_limit"]
    for _ in range(limit):
        login(client, "ann@example.com", "wrong wrong wrong")
    assert login(client, "ann@example.com", "wrong wrong wrong").status_code == 429
    with app.app_context():
        reasons = db.session.scalars(
            sa.select(AuditEvent.reason).where(
                AuditEvent.workspace_id == ws.id, AuditEvent.action == "signin.failure"
            )
        )
        assert "account_throttled" in list(reasons)

"""Faults we survive (SECURITY.md): the database, Redis or SMTP down, a burst
of sign-ins, secrets kept out of the logs, and no half-written action."""

from __future__ import annotations

import copy
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from idp.app import create_app
from idp.db import db
from idp.settings import load_settings
from tests.conftest import (
    DB_KIND,
    FAST_HASH,
    PASSWORD,
    csrf_from,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    table_rows,
)

REDIS_URL = "redis://127.0.0.1:6379/15"
UNAVAILABLE = "Temporarily unavailable"


@pytest.fixture
def build(database_url: str, keys_dir: Path, tmp_path: Path, clock) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """Apps of our own, with the real mailer chosen by the settings (the
    `app` fixture records mail instead)."""
    made = []

    def _build(overrides: dict[str, Any] | None = None, *, mailer=None):  # type: ignore[no-untyped-def]
        values: dict[str, Any] = {
            "database_url": database_url,
            "keys_dir": str(keys_dir),
            "instance_dir": str(tmp_path / f"instance{len(made)}"),
            "public_url": "http://localhost",
            "passwords": dict(FAST_HASH),
            "signin": {"ip_limits": "1000 per minute"},
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict):
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
        application = create_app(
            load_settings(environ={}, overrides=values), clock=clock, mailer=mailer
        )
        application.config["TESTING"] = True
        made.append(application)
        return application

    yield _build
    for application in made:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


def unreachable_database_url() -> str:
    if DB_KIND == "sqlite":
        return "sqlite:////nonexistent-portcullis-folder/portcullis.sqlite3"
    return "postgresql+psycopg://postgres@127.0.0.1:1/portcullis?connect_timeout=2"


@contextmanager
def database_down(app) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Swap the app's engine for one whose server cannot be reached."""
    engines = db._app_engines[app]
    original = engines[None]
    dead = sa.create_engine(unreachable_database_url())
    engines[None] = dead
    try:
        yield
    finally:
        engines[None] = original
        dead.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def signed_in_cookie(app, user) -> str:  # type: ignore[no-untyped-def]
    """A session made by the sign-in routine's own helper, for when the
    sign-in form itself is what is broken."""
    from idp.services import sessions
    from idp.services.context import Client

    with app.app_context():
        token = sessions.issue(
            user,
            Client(ip="127.0.0.1"),
            amr=["pwd"],
            authenticated_at=app.extensions["idp"].clock(),
        )
        db.session.commit()
    return token


def password_step(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    post_form(client, "/login", {"email": email})
    token = csrf_from(client, "/login/password")
    return client.post(
        "/login/password", data={"password": password, "csrf_token": token}
    )


# --- the database ------------------------------------------------------------


def test_database_down_fails_closed_with_clear_pages(app, caplog):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    member = app.test_client()
    login(member, "ann@example.com")
    visitor = app.test_client()
    post_form(visitor, "/login", {"email": "ann@example.com"})
    token = csrf_from(visitor, "/login/password")
    caplog.set_level(logging.ERROR)

    with database_down(app):
        assert app.test_client().get("/healthz").status_code == 200
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json() == {"status": "unavailable", "database": "unreachable"}

        signin = visitor.post(
            "/login/password", data={"password": PASSWORD, "csrf_token": token}
        )
        assert signin.status_code == 503
        assert UNAVAILABLE in signin.get_data(as_text=True)
        assert "Traceback" not in signin.get_data(as_text=True)
        assert not visitor.get_cookie("portcullis_session")

        # An existing session is not waved through: its state cannot be read.
        page = member.get("/portal/profile")
        assert page.status_code == 503
        assert UNAVAILABLE in page.get_data(as_text=True)
        # ...nor thrown away: an outage must not sign everyone out.
        assert not any(
            "portcullis_session" in v for v in page.headers.getlist("Set-Cookie")
        )

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "readyz.database_unreachable" in errors
    assert any(m.startswith("store.unavailable") for m in errors)

    # Back up: the same people carry on.
    assert member.get("/portal/profile").status_code == 200
    assert app.test_client().get("/readyz").status_code == 200


def test_an_app_started_without_its_database_answers(build, caplog):
    application = build({"database_url": unreachable_database_url()})
    client = application.test_client()
    caplog.set_level(logging.ERROR)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert client.get("/login").status_code == 200
    # The email step already asks the database (which company IdP, if any,
    # the address belongs to).
    response = post_form(client, "/login", {"email": "ann@example.com"})
    assert response.status_code == 503
    assert UNAVAILABLE in response.get_data(as_text=True)
    assert any(r.levelno >= logging.ERROR for r in caplog.records)


# --- Redis -------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"redis_url": "redis://127.0.0.1:1/0"}])
def test_redis_down_closes_the_limited_forms_only(app, overrides):
    ws = make_workspace(app)
    ann = make_user(app, ws, "ann@example.com")
    visitor = app.test_client()
    assert visitor.get("/login").status_code == 200
    for path, form in (
        ("/login", {"email": "ann@example.com"}),
        ("/login/forgot", {"email": "ann@example.com"}),
    ):
        response = post_form(visitor, path, form, csrf_page="/login")
        assert response.status_code == 503, path
        assert UNAVAILABLE in response.get_data(as_text=True)

    member = app.test_client()
    member.set_cookie("portcullis_session", signed_in_cookie(app, ann))
    for page in (
        "/portal/profile",
        "/portal/users",
        "/portal/audit-logs",
        "/portal/privacy-security",
    ):
        assert member.get(page).status_code == 200, page
    saved = post_form(
        member,
        "/portal/profile",
        {"full_name": "Ann Again"},
        csrf_page="/portal/profile",
    )
    assert saved.status_code == 302


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
    yield client
    client.flushdb()
    client.close()


@pytest.mark.parametrize(
    "overrides", [{"redis_url": REDIS_URL, "signin": {"ip_limits": "3 per minute"}}]
)
def test_per_address_limit_is_shared_by_two_instances(
    app, build, shared_redis, overrides
):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    second = build(copy.deepcopy(app.extensions["idp"].settings.values))
    # An address of our own, so a parallel run cannot share the bucket.
    address = f"198.51.100.{random.randint(1, 254)}"
    first_client, second_client = app.test_client(), second.test_client()
    for c in (first_client, second_client):
        c.environ_base["REMOTE_ADDR"] = address

    answers = []
    for c in (first_client, second_client, first_client, second_client):
        answers.append(post_form(c, "/login", {"email": "ann@example.com"}))
    assert [r.status_code for r in answers] == [302, 302, 302, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert "Too many attempts" in answers[-1].get_data(as_text=True)

    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = (
        "198.51.100.255" if address != "198.51.100.255" else "192.0.2.1"
    )
    assert post_form(other, "/login", {"email": "ann@example.com"}).status_code == 302


# --- a burst of sign-ins -----------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "signin": {"hash_concurrency": 1, "hash_wait_seconds": 0.05},
            "passwords": {"argon2_memory_kib": 65536, "argon2_time_cost": 3},
        }
    ],
)
def test_hash_semaphore_sheds_a_burst(app, overrides):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    passwords = app.extensions["idp"].passwords
    hasher = passwords.hasher
    running, peak, lock = [0], [0], threading.Lock()

    class CountingHasher:
        """The real hasher, counting how many verifications run at once."""

        def verify(self, *args: Any) -> Any:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                return hasher.verify(*args)
            finally:
                with lock:
                    running[0] -= 1

        def __getattr__(self, name: str) -> Any:
            return getattr(hasher, name)

    passwords.hasher = CountingHasher()
    clients = []
    for n in range(6):
        c = app.test_client()
        post_form(c, "/login", {"email": "ann@example.com"})
        clients.append(
            (
                c,
                csrf_from(c, "/login/password"),
                PASSWORD if n % 2 else "wrong password",
            )
        )
    start = threading.Barrier(len(clients) + 1)
    answers: list[Any] = [None] * len(clients)

    def attempt(i: int) -> None:
        c, token, password = clients[i]
        start.wait()
        answers[i] = c.post(
            "/login/password", data={"password": password, "csrf_token": token}
        )

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    start.wait()
    deadline = time.monotonic() + 10
    while running[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    busy_meanwhile = running[0] == 1
    began = time.monotonic()
    health = app.test_client().get("/healthz")
    health_seconds = time.monotonic() - began
    for t in threads:
        t.join(timeout=60)

    statuses = [a.status_code for a in answers]
    assert health.status_code == 200 and health_seconds < 1.0
    assert busy_meanwhile
    assert all(s in (302, 401, 429) for s in statuses), statuses
    assert 429 in statuses, statuses
    assert any(s in (302, 401) for s in statuses), statuses
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) > 0
            assert "Too many sign-ins at once" in answer.get_data(as_text=True)
    # Memory stays bounded: never more than one 64 MiB hash at a time.
    assert peak[0] == 1


# --- a real SMTP server ------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def invite_through(application, email: str):  # type: ignore[no-untyped-def]
    ws = make_workspace(application)
    make_user(application, ws, "ann@example.com", role="admin")
    admin = application.test_client()
    login(admin, "ann@example.com")
    response = post_form(
        admin,
        "/portal/users/invite",
        {"email": email, "role": "read_only", "full_name": "Carol"},
    )
    assert response.status_code == 302
    return admin


def invitation_row(application, email: str):  # type: ignore[no-untyped-def]
    from idp.models import Invitation, User

    with application.app_context():
        return db.session.execute(
            sa.select(Invitation.send_status, Invitation.send_error)
            .join(User, User.id == Invitation.user_id)
            .where(User.email == email)
        ).one()


def test_invitation_arrives_through_smtp(build, smtp_server):
    port, inbox = smtp_server
    application = build({"smtp_url": f"smtp://127.0.0.1:{port}"})
    admin = invite_through(application, "carol@example.com")
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert "To: carol@example.com" in message
    link = re.search(r"http://localhost(/invite/[A-Za-z0-9_-]{43})", message)
    assert link, message
    assert invitation_row(application, "carol@example.com").send_status == "sent"
    invitee = application.test_client()
    assert invitee.get(link.group(1)).status_code == 302
    assert invitee.get("/invite").status_code == 200
    assert "send failed" not in admin.get("/portal/users").get_data(as_text=True)


@pytest.mark.parametrize("scheme", ["smtp+starttls", "closed"])
def test_invitation_send_failure_is_stored_and_shown(
    build, smtp_server, scheme, caplog
):
    port, inbox = smtp_server
    # A server without STARTTLS must not get the message in clear.
    url = (
        f"smtp+starttls://127.0.0.1:{port}"
        if scheme != "closed"
        else f"smtp://127.0.0.1:{free_port()}"
    )
    application = build({"smtp_url": url})
    caplog.set_level(logging.ERROR)
    admin = invite_through(application, "carol@example.com")
    assert inbox.messages == []
    row = invitation_row(application, "carol@example.com")
    assert row.send_status == "failed" and row.send_error
    users = admin.get("/portal/users").get_data(as_text=True)
    assert "carol@example.com" in users and "send failed" in users
    assert any("invitation.send_failed" in r.getMessage() for r in caplog.records)


# --- secrets never in logs (16.2.5) ------------------------------------------


def link_path(mail) -> str:  # type: ignore[no-untyped-def]
    return mail.link.removeprefix("http://localhost")


def link_token(mail) -> str:  # type: ignore[no-untyped-def]
    return mail.link.rsplit("/", 1)[1]


def wait_for_mail(mailer, address: str):  # type: ignore[no-untyped-def]
    for _ in range(500):  # reset mail leaves on its own thread
        if any(m.to == address for m in mailer.sent):
            return mailer.last_to(address)
        time.sleep(0.01)
    raise AssertionError(f"no mail to {address}")


def test_no_secret_reaches_the_logs(app, mailer, caplog):
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy keeps its own loggers at WARNING; an operator debugging
    # queries turns them up, and statements and parameters must hold no
    # secret either.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    secrets_seen: list[str] = []
    second, third = "carol's first passphrase", "carol's second passphrase"
    secrets_seen += [PASSWORD, second, third]

    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    admin = app.test_client()
    login(admin, "ann@example.com")
    secrets_seen.append(session_cookie(admin))
    post_form(
        admin,
        "/portal/users/invite",
        {"email": "carol@example.com", "role": "read_only", "full_name": "Carol"},
    )
    invitation = mailer.last_to("carol@example.com")
    secrets_seen.append(link_token(invitation))

    carol = app.test_client()
    carol.get(link_path(invitation))
    assert (
        post_form(
            carol,
            "/invite",
            {"full_name": "Carol C", "password": second, "password_confirm": second},
        ).status_code
        == 302
    )
    secrets_seen.append(session_cookie(carol))
    carol.post("/logout", data={"csrf_token": csrf_from(carol, "/portal/profile")})
    assert login(carol, "carol@example.com", "a wrong passphrase").status_code == 401
    assert login(carol, "carol@example.com", second).status_code == 302
    secrets_seen.append(session_cookie(carol))

    post_form(app.test_client(), "/login/forgot", {"email": "carol@example.com"})
    reset = wait_for_mail(mailer, "carol@example.com")
    assert "/reset/" in reset.link
    secrets_seen.append(link_token(reset))
    resetter = app.test_client()
    resetter.get(link_path(reset))
    assert (
        post_form(
            resetter, "/reset", {"password": third, "password_confirm": third}
        ).status_code
        == 302
    )
    assert login(carol, "carol@example.com", third).status_code == 302
    secrets_seen.append(session_cookie(carol))

    assert (
        post_form(
            carol,
            "/portal/profile/email",
            {"email": "carol.new@example.com", "password": third},
        ).status_code
        == 302
    )
    change = mailer.last_to("carol.new@example.com")
    secrets_seen.append(link_token(change))
    carol.get(link_path(change))
    assert (
        post_form(carol, "/email/confirm", {}, csrf_page="/email/confirm").status_code
        == 200
    )
    secrets_seen.append(carol.get_cookie("portcullis_flow").value)

    # A failed send is logged; its line names the user, never the link.
    mailer.fail_with = "connection refused"
    post_form(
        admin,
        "/portal/users/invite",
        {"email": "dave@example.com", "role": "read_only", "full_name": "Dave"},
    )
    mailer.fail_with = None

    assert all(secrets_seen) and len(set(secrets_seen)) == len(secrets_seen)
    loggers = {r.name for r in caplog.records}
    assert "idp.web.requests" in loggers and any(
        n.startswith("sqlalchemy.engine") for n in loggers
    )
    assert any("invitation.send_failed" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        texts = [record.getMessage(), record.exc_text or "", repr(record.args)]
        for secret in secrets_seen:
            for text in texts:
                assert secret not in text, (record.name, record.getMessage()[:200])
    for secret in secrets_seen:
        assert secret not in caplog.text


# --- one transaction per action ----------------------------------------------


def snapshot(app) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    from idp.models import AuditEvent, EmailToken, Invitation, Session, User

    return table_rows(app, User, Session, Invitation, EmailToken, AuditEvent)


@pytest.fixture
def team(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    mia = make_user(app, ws, "mia@example.com")
    make_user(app, ws, "ivy@example.com", status="invited", password=None)
    admin, member = app.test_client(), app.test_client()
    login(admin, "ann@example.com")
    login(member, "mia@example.com")
    return admin, member, mia


def admin_actions(mia) -> list[tuple[str, str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    return [
        ("user.disable", f"/portal/users/{mia.id}/disable", {}),
        ("user.change_role", f"/portal/users/{mia.id}/role", {"role": "admin"}),
        ("user.delete", f"/portal/users/{mia.id}/delete", {}),
        (
            "user.invite",
            "/portal/users/invite",
            {"email": "new@example.com", "role": "read_only", "full_name": "New"},
        ),
    ]


def test_an_audit_failure_undoes_the_action(app, team, monkeypatch, subtests):
    from idp.services import audit

    admin, member, mia = team
    record = audit.record
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for action, path, form in admin_actions(mia) + [
        ("profile.update", "/portal/profile", {"full_name": "Ann Changed"}),
        (
            "password.change",
            "/portal/privacy-security/password",
            {
                "current_password": PASSWORD,
                "new_password": "brand new passphrase",
                "new_password_confirm": "brand new passphrase",
            },
        ),
    ]:
        with subtests.test(msg=action):

            def failing(ctx, name, *, _action=action, **kwargs):  # type: ignore[no-untyped-def]
                event = record(ctx, name, **kwargs)
                if name == _action:
                    raise RuntimeError("audit store broke after the change")
                return event

            token = csrf_from(admin, "/portal/profile")
            before = snapshot(app)
            monkeypatch.setattr(audit, "record", failing)
            response = admin.post(path, data={**form, "csrf_token": token})
            monkeypatch.setattr(audit, "record", record)
            assert response.status_code == 500
            assert "Traceback" not in response.get_data(as_text=True)
            assert snapshot(app) == before
            assert member.get("/portal/profile").status_code == 200


def test_a_failed_commit_undoes_the_action(app, team, subtests):
    admin, member, mia = team
    armed = [False]

    def fail_commit(session) -> None:  # type: ignore[no-untyped-def]
        if armed[0]:
            armed[0] = False
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    sa.event.listen(sa.orm.Session, "before_commit", fail_commit)
    try:
        for action, path, form in admin_actions(mia):
            with subtests.test(msg=action):
                token = csrf_from(admin, "/portal/profile")
                before = snapshot(app)
                armed[0] = True
                response = admin.post(path, data={**form, "csrf_token": token})
                assert response.status_code == 503
                assert "Nothing was changed" in response.get_data(as_text=True)
                assert snapshot(app) == before
                assert member.get("/portal/profile").status_code == 200
    finally:
        sa.event.remove(sa.orm.Session, "before_commit", fail_commit)

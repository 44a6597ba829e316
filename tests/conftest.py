"""Shared fixtures: an application on SQLite or PostgreSQL, a clock that tests
move by hand, a mailer that records, and helpers to sign in.

PORTCULLIS_TEST_DB=postgresql runs everything on the PostgreSQL server named
by PORTCULLIS_TEST_PG (default: the local one, database `test`), in a fresh
database created for the run. When CI is set, an unreachable server fails
the run instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.mail import Mail
from idp.app import create_app
from idp.db import db
from idp.keys import ensure_keys
from idp.settings import load_settings

DB_KIND = os.environ.get("PORTCULLIS_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get(
    "PORTCULLIS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSWORD = "correct horse battery staple"
GENERIC_FAILURE = "The email or password is incorrect."
INVALID_LINK = "This link is invalid or has expired."
# A page with a form for every member, to take a CSRF token from.
CSRF_PAGE = "/portal/privacy-security"
# Cheap argon2 for speed; tests of the real cost set their own.
FAST_HASH = {"argon2_memory_kib": 64, "argon2_time_cost": 1}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class RecordingMailer:
    sent: list[Mail] = field(default_factory=list)
    fail_with: str | None = None

    def send(self, mail: Mail) -> None:
        from connectors.mail import MailError

        if self.fail_with:
            raise MailError(self.fail_with)
        self.sent.append(mail)

    def last_to(self, address: str) -> Mail:
        for mail in reversed(self.sent):
            if mail.to == address:
                return mail
        raise AssertionError(f"no mail to {address}; sent: {[m.to for m in self.sent]}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, launched once per run: the sync
    API allows one Playwright per thread, so every browser test shares it."""
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (./scripts/test installs Debian's)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    ensure_keys(folder)
    return folder


def _pg_fail_or_skip(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def empty_database(
    tmp_path_factory: pytest.TempPathFactory, label: str
) -> Iterator[str]:
    """The URL of an empty database of the run's kind, for a server process
    that migrates it: a SQLite file, or a PostgreSQL database dropped after."""
    if DB_KIND == "sqlite":
        folder = tmp_path_factory.mktemp(f"{label}-db")
        yield f"sqlite:///{folder / 'portcullis.sqlite3'}"
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"portcullis_{label}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _pg_fail_or_skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_template(
    tmp_path_factory: pytest.TempPathFactory, keys_dir: Path
) -> Iterator[str]:
    """A migrated database for the run: a SQLite file to copy per test, or a
    fresh PostgreSQL database that tests truncate."""
    if DB_KIND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.sqlite3"
        _migrate(f"sqlite:///{path}", keys_dir, path.parent)
        yield str(path)
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"portcullis_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        _pg_fail_or_skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    url = (
        sa.engine.make_url(PG_ADMIN_URL)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    try:
        _migrate(url, keys_dir, tmp_path_factory.mktemp("pg-instance"))
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _migrate(url: str, keys_dir: Path, instance: Path) -> None:
    from idp import migrate

    settings = load_settings(
        environ={},
        overrides={
            "database_url": url,
            "keys_dir": str(keys_dir),
            "instance_dir": str(instance),
        },
    )
    app = create_app(settings)
    with app.app_context():
        migrate.upgrade()
        db.engine.dispose()


_pg_engines: dict[str, sa.Engine] = {}


def _empty_all(url: str) -> None:
    """DELETE every row, children first: much faster than TRUNCATE on tables
    this small. Ids keep growing across tests, which no test relies on."""
    from idp.db import Base

    engine = _pg_engines.get(url)
    if engine is None:
        engine = _pg_engines[url] = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    if DB_KIND == "sqlite":
        path = tmp_path / "portcullis.sqlite3"
        shutil.copyfile(database_template, path)
        return f"sqlite:///{path}"
    _empty_all(database_template)
    return database_template


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mailer() -> RecordingMailer:
    return RecordingMailer()


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Tests change settings by updating this dict before `app` is built."""
    return {}


@pytest.fixture
def app(
    database_url: str,
    keys_dir: Path,
    tmp_path: Path,
    clock: FakeClock,
    mailer: RecordingMailer,
    overrides: dict[str, Any],
):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(tmp_path / "instance"),
        "public_url": "http://localhost",
        "passwords": dict(FAST_HASH),
        "signin": {"ip_limits": "1000 per minute"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    application = create_app(
        load_settings(environ={}, overrides=values), clock=clock, mailer=mailer
    )
    application.config["TESTING"] = True
    yield application
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def app_ctx(app):  # type: ignore[no-untyped-def]
    with app.app_context():
        yield app


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


# --- data helpers -----------------------------------------------------------


def make_workspace(app, name: str = "Acme"):  # type: ignore[no-untyped-def]
    from idp.services.context import Context
    from idp.services.workspaces import create_workspace

    with app.app_context():
        ws = create_workspace(Context.operator(), name)
        db.session.expunge(ws)
        return ws


def make_user(
    app,
    workspace,
    email: str,
    *,
    role: str = "read_only",  # type: ignore[no-untyped-def]
    password: str | None = PASSWORD,
    status: str = "active",
    name: str = "",
):
    from idp.models import User
    from idp.state import state

    with app.app_context():
        user = User(
            workspace_id=workspace.id,
            email=email,
            full_name=name or email.split("@")[0].title(),
            role=role,
            status=status,
            password_hash=state().passwords.hash(password) if password else None,
            joined_at=state().clock() if status != "invited" else None,
            created_at=state().clock(),
        )
        db.session.add(user)
        db.session.commit()
        db.session.refresh(user)
        db.session.expunge(user)
        return user


# A fixed authenticator-app secret (base32) for tests that need a member with
# MFA; compute its codes with pyotp.TOTP(TOTP_SECRET).at(moment).
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def give_authenticator(app, email: str, secret: str = TOTP_SECRET) -> str:  # type: ignore[no-untyped-def]
    """Give the member with this email a confirmed authenticator app, as
    set-up would leave it; returns the secret."""
    import sqlalchemy as sa

    from idp.models import TotpSecret, User

    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        assert user is not None, email
        sealed = app.extensions["idp_keys"].encryption.encrypt(secret.encode())
        db.session.add(
            TotpSecret(
                user_id=user.id,
                workspace_id=user.workspace_id,
                secret_encrypted=sealed.decode(),
                created_at=app.extensions["idp"].clock(),
                confirmed_at=app.extensions["idp"].clock(),
            )
        )
        db.session.commit()
    return secret


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(client, path: str = "/login") -> str:  # type: ignore[no-untyped-def]
    response = client.get(path)
    match = CSRF_RE.search(response.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({response.status_code})"
    return match.group(1)


def post_form(
    client, path: str, data: dict[str, str], *, csrf_page: str | None = None, **kw
):  # type: ignore[no-untyped-def]
    token = csrf_from(client, csrf_page or path)
    return client.post(path, data={**data, "csrf_token": token}, **kw)


def login(client, email: str, password: str = PASSWORD, *, follow: bool = False):  # type: ignore[no-untyped-def]
    """The sign-in flow: email, then password. Returns the password answer."""
    response = post_form(client, "/login", {"email": email})
    assert response.status_code == 302, response.status_code
    token = csrf_from(client, "/login/password")
    return client.post(
        "/login/password",
        data={"password": password, "csrf_token": token},
        follow_redirects=follow,
    )


def session_cookie(client) -> str | None:  # type: ignore[no-untyped-def]
    cookie = client.get_cookie("portcullis_session")
    return cookie.value if cookie else None


def signed_in(app, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    """A new browser signed in as ``email``."""
    client = app.test_client()
    response = login(client, email, password)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def table_rows(app, *models) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    """Every row of each model's table as plain tuples: compare before and
    after a refused action to show that nothing changed."""
    with app.app_context():
        result = {}
        for model in models:
            table = model.__table__
            rows = db.session.execute(
                sa.select(*table.columns).order_by(*table.primary_key)
            )
            result[table.name] = [tuple(str(v) for v in row) for row in rows]
        return result

"""What the benchmarks and the query-plan script share: a scratch migrated
database, bulk audit events and users, timing, and the printed report.

Bulk rows go in through the database driver, bypassing the ORM, so that a
million events load in about a minute; the schema (triggers and indexes
included) is the one the migrations made.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

from idp.app import create_app
from idp.keys import ensure_keys
from idp.settings import load_settings
from tests.conftest import DB_KIND, PG_ADMIN_URL, _migrate

EVENT_COLUMNS = (
    "workspace_id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "outcome",
    "reason",
    "client_ip",
    "peer_ip",
    "user_agent",
    "details",
)
START = datetime(2025, 1, 1, tzinfo=UTC)
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "curl/8.5.0",
)
# Roughly what a busy workspace's log holds: mostly sign-ins.
ACTION_WEIGHTS = {
    "signin.success": 50,
    "signin.failure": 18,
    "session.logout": 10,
    "profile.update": 6,
    "session.end": 4,
    "password.change": 3,
    "user.invite": 3,
    "invitation.accept": 2,
    "authz.denied": 2,
    "user.disable": 1,
    "user.change_role": 1,
}


@dataclass
class Scratch:
    kind: str
    url: str
    workdir: Path
    keys_dir: Path

    @property
    def sqlite_path(self) -> Path:
        return Path(sa.engine.make_url(self.url).database or "")

    def app(self, **overrides: Any) -> Flask:
        values: dict[str, Any] = {
            "database_url": self.url,
            "keys_dir": str(self.keys_dir),
            "instance_dir": str(self.workdir / "instance"),
        }
        values.update(overrides)
        return create_app(load_settings(environ={}, overrides=values))


@contextmanager
def scratch_database(kind: str = DB_KIND) -> Iterator[Scratch]:
    """A freshly migrated database (SQLite file or PostgreSQL database),
    removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    keys_dir = workdir / "keys"
    ensure_keys(keys_dir)
    admin = None
    name = f"portcullis_bench_{uuid.uuid4().hex[:10]}"
    try:
        if kind == "sqlite":
            url = f"sqlite:///{workdir / 'bench.sqlite3'}"
        else:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            url = (
                sa.engine.make_url(PG_ADMIN_URL)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        _migrate(url, keys_dir, workdir / "instance")
        yield Scratch(kind, url, workdir, keys_dir)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def create_workspaces(scratch: Scratch, count: int) -> list[uuid.UUID]:
    """Workspaces through the service, as the CLI makes them."""
    from idp.db import db
    from idp.services.context import Context
    from idp.services.workspaces import create_workspace

    app = scratch.app()
    with app.app_context():
        ids = [
            create_workspace(Context.operator(), f"Bench {n}").id for n in range(count)
        ]
        db.engine.dispose()
    return ids


USERS = tuple(f"user{n:04d}@example.com" for n in range(5000))
ADMINS = tuple(f"admin{n:02d}@example.com" for n in range(20))
ADDRESSES = tuple(f"10.{n >> 8}.{n & 255}.{(n * 7) % 254 + 1}" for n in range(4096))
# One entry per percent, so a random number picks an action by weight.
ACTION_TABLE = tuple(a for a, weight in ACTION_WEIGHTS.items() for _ in range(weight))


def event_rows(
    workspaces: list[uuid.UUID], count: int, *, main_share: float = 0.9, seed: int = 7
) -> Iterator[tuple[Any, ...]]:
    """``count`` plausible events, oldest first, 1 to 59 s apart; the first
    workspace gets ``main_share`` of them, the others the rest."""
    rng = random.Random(seed)
    others = workspaces[1:] or workspaces
    main_cut = int(main_share * 1000)
    moment = START
    second = timedelta(seconds=1)
    for n in range(count):
        bits = rng.getrandbits(64)
        moment += second * (1 + (bits >> 58) % 59)
        workspace = (
            workspaces[0]
            if bits % 1000 < main_cut
            else others[(bits >> 10) % len(others)]
        )
        action = ACTION_TABLE[(bits >> 16) % len(ACTION_TABLE)]
        user = USERS[(bits >> 24) % len(USERS)]
        actor_type, actor_label, outcome, reason = "user", user, "success", None
        if action == "signin.failure":
            actor_type, actor_label, outcome = "anonymous", "anonymous", "failure"
            reason = (
                "account_throttled" if (bits >> 40) % 10 == 0 else "bad_credentials"
            )
        elif action == "authz.denied":
            outcome, reason = "denied", "admin_required"
        elif action in ("user.invite", "user.disable", "user.change_role"):
            actor_label = ADMINS[(bits >> 44) % len(ADMINS)]
        yield (
            workspace,
            moment,
            actor_type,
            None,
            actor_label,
            action,
            "user",
            None,
            user,
            outcome,
            reason,
            ADDRESSES[(bits >> 46) % len(ADDRESSES)],
            "127.0.0.1",
            AGENTS[n % len(AGENTS)],
            {"n": n} if n % 10 == 0 else {},
        )


def insert_events(
    scratch: Scratch, rows: Iterator[tuple[Any, ...]], *, batch: int = 50_000
) -> int:
    """Load rows as fast as each driver allows: executemany in big
    transactions on SQLite (the FTS trigger fires per row), COPY on
    PostgreSQL. Returns the number of rows."""
    if scratch.kind == "sqlite":
        return _insert_sqlite(scratch.sqlite_path, rows, batch)
    return _copy_postgresql(scratch.url, rows)


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value.hex  # sa.Uuid keeps 32 hex digits on SQLite
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _insert_sqlite(path: Path, rows: Iterator[tuple[Any, ...]], batch: int) -> int:
    sql = (
        f"INSERT INTO audit_events ({', '.join(EVENT_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    )
    total = 0
    con = sqlite3.connect(path)
    try:
        # Loading only: no journal on disk, no fsync. The database goes back
        # to WAL, the mode the application runs in, at the end.
        con.execute("PRAGMA journal_mode=MEMORY")
        con.execute("PRAGMA synchronous=OFF")
        chunk: list[tuple[Any, ...]] = []
        for row in rows:
            chunk.append(tuple(_sqlite_value(v) for v in row))
            if len(chunk) >= batch:
                with con:
                    con.executemany(sql, chunk)
                total += len(chunk)
                chunk = []
        if chunk:
            with con:
                con.executemany(sql, chunk)
            total += len(chunk)
        con.execute("ANALYZE")
        con.commit()
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    return total


def _pg_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    plain = (
        sa.engine.make_url(url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    return psycopg.connect(plain)


def _copy_postgresql(url: str, rows: Iterator[tuple[Any, ...]]) -> int:
    from psycopg.types.json import Jsonb

    total = 0
    with _pg_connect(url) as conn:
        # The trigram index is built once after the load rather than grown
        # row by row: the same index at the end, minutes sooner.
        search = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_audit_events_search'"
        ).fetchone()
        if search:
            conn.execute("DROP INDEX ix_audit_events_search")
        columns = ", ".join(EVENT_COLUMNS)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY audit_events ({columns}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row[:-1] + (Jsonb(row[-1]),))
                total += 1
        if search:
            conn.execute("SET maintenance_work_mem = '256MB'")
            conn.execute(search[0])
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE audit_events")
    return total


def raw_sql(
    scratch: Scratch, statement: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Run one statement on a plain driver connection."""
    if scratch.kind == "sqlite":
        con = sqlite3.connect(scratch.sqlite_path)
        try:
            return con.execute(statement, params).fetchall()
        finally:
            con.close()
    with _pg_connect(scratch.url) as conn:
        cur = conn.execute(statement.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def timed(work: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeat`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def report(title: str, lines: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in lines)
    print(f"\n== {title}")
    for label, value in lines:
        print(f"   {label.ljust(width)}  {value}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def make_member(
    app: Flask,
    workspace_id: uuid.UUID,
    email: str,
    password: str,
    *,
    role: str = "admin",
) -> None:
    """One active member with a password, hashed with the app's own cost."""
    from idp.db import db
    from idp.models import User
    from idp.state import state

    with app.app_context():
        moment = datetime.now(UTC)
        db.session.add(
            User(
                workspace_id=workspace_id,
                email=email,
                full_name=email.split("@")[0],
                role=role,
                status="active",
                created_at=moment,
                joined_at=moment,
                password_hash=state().passwords.hash(password),
            )
        )
        db.session.commit()
        db.session.remove()


def sign_in(client: Any, email: str, password: str) -> None:
    """The Flask test client through the two-step sign-in form."""
    import re

    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    page = client.get("/login").get_data(as_text=True)
    client.post(
        "/login", data={"email": email, "csrf_token": token.search(page).group(1)}
    )
    page = client.get("/login/password").get_data(as_text=True)
    answer = client.post(
        "/login/password",
        data={"password": password, "csrf_token": token.search(page).group(1)},
    )
    assert answer.status_code == 302, answer.status_code


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of one process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


USER_COLUMNS = (
    "id",
    "workspace_id",
    "email",
    "full_name",
    "username",
    "username_key",
    "phone",
    "job_title",
    "role",
    "status",
    "created_at",
    "joined_at",
)
FIRST = (
    "Ann",
    "Bob",
    "Carol",
    "Dan",
    "Eve",
    "Femi",
    "Grace",
    "Hiro",
    "Ines",
    "Jan",
    "Kofi",
    "Lena",
)
LAST = (
    "Smith",
    "Okafor",
    "Tanaka",
    "Müller",
    "García",
    "Novak",
    "Larsen",
    "Chen",
    "Dubois",
    "Rossi",
)
TITLES = (
    "Engineer",
    "Designer",
    "Accountant",
    "Sales Lead",
    "Support Agent",
    "Product Manager",
    "Recruiter",
    "Analyst",
)


def user_rows(workspace_id: uuid.UUID, count: int) -> Iterator[tuple[Any, ...]]:
    """``count`` joined members with every searchable field filled."""
    moment = START
    for n in range(count):
        first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
        username = f"{first.lower()}{n:06d}"
        yield (
            uuid.uuid4(),
            workspace_id,
            f"{username}@example.com",
            f"{first} {last} {n}",
            username,
            username,
            f"+4420{n:08d}",
            TITLES[n % len(TITLES)],
            "read_only",
            "active",
            moment,
            moment,
        )


def insert_users(scratch: Scratch, rows: Iterator[tuple[Any, ...]]) -> int:
    if scratch.kind == "postgresql":
        total = 0
        with _pg_connect(scratch.url) as conn:
            columns = ", ".join(USER_COLUMNS)
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY users ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
                    total += 1
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE users")
        return total
    values = [tuple(_sqlite_value(v) for v in row) for row in rows]
    con = sqlite3.connect(scratch.sqlite_path)
    try:
        with con:
            con.executemany(
                f"INSERT INTO users ({', '.join(USER_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(USER_COLUMNS))})",
                values,
            )
        con.execute("ANALYZE")
    finally:
        con.close()
    return len(values)

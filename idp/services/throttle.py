"""Per-email failure counts for sign-in, shared by every worker and instance
through the database."""

from __future__ import annotations

import math
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from idp.clock import now
from idp.db import UTCDateTime, db
from idp.models import LoginThrottle
from idp.state import settings


def seconds_locked(email_key: str) -> int:
    """How long this email must still wait; 0 when it may try."""
    locked_until = db.session.scalar(
        sa.select(LoginThrottle.locked_until).where(LoginThrottle.email == email_key)
    )
    if locked_until is None:
        return 0
    remaining = (locked_until - now()).total_seconds()
    return max(0, math.ceil(remaining))


def reserve_attempt(
    email_key: str, *, limit: int | None = None, lockout_seconds: int | None = None
) -> int:
    """Count this attempt as a failure *before* any hashing, unless the email
    is locked, and commit at once. Returns 0 when the attempt may go ahead (a
    success then clears the count, see ``clear``), else the seconds to wait.
    ``limit`` and ``lockout_seconds`` default to the sign-in settings.

    One atomic statement: a check before hashing and a count after it let a
    burst of parallel guesses all pass the check, each then hashed, so the
    limit bounded nothing (SECURITY.md 6.3.1)."""
    table = LoginThrottle.__table__
    moment = now()
    rule = _rule(limit, lockout_seconds)
    statement = _count_failure(email_key, moment, rule).on_conflict_do_update(
        index_elements=[table.c.email],
        set_=_failure_update(moment, rule),
        where=sa.or_(
            table.c.locked_until.is_(None),
            table.c.locked_until <= sa.literal(moment, UTCDateTime),
        ),
    )
    # RETURNING, not rowcount: psycopg reports -1 for an upsert.
    taken = db.session.execute(statement.returning(table.c.failures)).first()
    db.session.commit()
    if taken is not None:
        return 0
    return max(1, seconds_locked(email_key))


def release_attempt(email_key: str) -> None:
    """Give back a reserved attempt that never reached a hash (the hash
    slot was busy): only wrong passwords count."""
    db.session.execute(
        sa.update(LoginThrottle)
        .where(LoginThrottle.email == email_key, LoginThrottle.failures > 0)
        .values(failures=LoginThrottle.failures - 1)
    )
    db.session.commit()


def _rule(limit: int | None, lockout_seconds: int | None) -> tuple[int, int]:
    """(failure limit, lockout seconds), the sign-in settings unless given."""
    cfg = settings()["signin"]
    return (
        cfg["account_failure_limit"] if limit is None else limit,
        cfg["account_lockout_seconds"] if lockout_seconds is None else lockout_seconds,
    )


def _count_failure(email_key: str, moment, rule: tuple[int, int]):  # type: ignore[no-untyped-def]
    limit, lockout_seconds = rule
    lock = moment + timedelta(seconds=lockout_seconds)
    table = LoginThrottle.__table__
    dialect = db.session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return insert.values(
        email=email_key,
        failures=1,
        last_failure_at=moment,
        locked_until=lock if limit <= 1 else None,
    )


def _failure_update(moment, rule: tuple[int, int]) -> dict:  # type: ignore[no-untyped-def]
    limit, lockout_seconds = rule
    lock = moment + timedelta(seconds=lockout_seconds)
    table = LoginThrottle.__table__
    failures = table.c.failures + 1
    return {
        "failures": failures,
        "last_failure_at": moment,
        "locked_until": sa.case(
            (failures >= limit, sa.literal(lock, UTCDateTime)),
            else_=table.c.locked_until,
        ),
    }


def record_failure(
    email_key: str, *, limit: int | None = None, lockout_seconds: int | None = None
) -> None:
    """Count one failure in the caller's transaction, atomically: two workers
    failing at once both count."""
    table = LoginThrottle.__table__
    moment = now()
    rule = _rule(limit, lockout_seconds)
    db.session.execute(
        _count_failure(email_key, moment, rule).on_conflict_do_update(
            index_elements=[table.c.email], set_=_failure_update(moment, rule)
        )
    )


def clear(email_key: str) -> None:
    db.session.execute(sa.delete(LoginThrottle).where(LoginThrottle.email == email_key))

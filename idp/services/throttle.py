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


def record_failure(email_key: str) -> None:
    """Count one failure in the caller's transaction, atomically: two workers
    failing at once both count."""
    cfg = settings()["signin"]
    moment = now()
    lock = moment + timedelta(seconds=cfg["account_lockout_seconds"])
    limit = cfg["account_failure_limit"]
    table = LoginThrottle.__table__
    dialect = db.session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    failures = table.c.failures + 1
    statement = insert.values(
        email=email_key,
        failures=1,
        last_failure_at=moment,
        locked_until=lock if limit <= 1 else None,
    ).on_conflict_do_update(
        index_elements=[table.c.email],
        set_={
            "failures": failures,
            "last_failure_at": moment,
            "locked_until": sa.case(
                (failures >= limit, sa.literal(lock, UTCDateTime)),
                else_=table.c.locked_until,
            ),
        },
    )
    db.session.execute(statement)


def clear(email_key: str) -> None:
    db.session.execute(sa.delete(LoginThrottle).where(LoginThrottle.email == email_key))

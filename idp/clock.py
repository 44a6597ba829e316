"""The current time, replaceable in tests. Services never call datetime.now."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from flask import current_app, has_app_context

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def now() -> datetime:
    if has_app_context():
        clock: Clock = current_app.extensions["idp"].clock
        return clock()
    return system_clock()

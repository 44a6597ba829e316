"""Idle timeout, forced re-login and the operator's absolute session
lifetime. Each limit is reached at the exact second it names: a session idle
for the whole timeout has expired."""

from __future__ import annotations

from datetime import datetime, timedelta

from policies.context import PolicyContext, SessionFacts
from policies.decision import Decision


def idle_timeout(ctx: PolicyContext) -> Decision | None:
    """*Idle session timeout*, counted from the session's last-seen time."""
    limit = ctx.policy.idle_timeout_seconds
    if ctx.stage != "check" or ctx.session is None or not limit:
        return None
    if ctx.now - ctx.session.last_seen_at >= timedelta(seconds=limit):
        return Decision.reauthenticate("idle_timeout")
    return None


def forced_relogin(ctx: PolicyContext) -> Decision | None:
    """*Force re-login*, counted from the last time the person proved who
    they are, not from when the session was issued."""
    days = ctx.policy.relogin_days
    if ctx.stage != "check" or ctx.session is None or not days:
        return None
    if ctx.now - ctx.session.authenticated_at >= timedelta(days=days):
        return Decision.reauthenticate("relogin_required")
    return None


def past_lifetime(session: SessionFacts, now: datetime, lifetime: timedelta) -> bool:
    """Whether the session has outlived the operator's absolute lifetime,
    which no workspace setting can lengthen (ASVS 7.3.2)."""
    return now - session.authenticated_at >= lifetime

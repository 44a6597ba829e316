"""Idle timeout and forced re-login. Each limit is reached at the exact
second it names: a session idle for the whole timeout has expired."""

from __future__ import annotations

from datetime import timedelta

from policies.context import PolicyContext
from policies.decision import Decision


def idle_timeout(ctx: PolicyContext) -> Decision | None:
    limit = ctx.policy.idle_timeout_seconds
    if ctx.stage != "check" or ctx.session is None or not limit:
        return None
    if ctx.now - ctx.session.last_seen_at >= timedelta(seconds=limit):
        return Decision.reauthenticate("idle_timeout")
    return None


def forced_relogin(ctx: PolicyContext) -> Decision | None:
    days = ctx.policy.relogin_days
    if ctx.stage != "check" or ctx.session is None or not days:
        return None
    if ctx.now - ctx.session.authenticated_at >= timedelta(days=days):
        return Decision.reauthenticate("relogin_required")
    return None

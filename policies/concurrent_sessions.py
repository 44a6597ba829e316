"""*Max concurrent sessions*, applied at sign-in. A new sign-in is never
refused for it: the member's oldest sessions end so the new one fits, and
the person is told."""

from __future__ import annotations

from policies.context import PolicyContext


def sessions_to_end(ctx: PolicyContext) -> tuple[str, ...]:
    """Ids of the open sessions (oldest first) that the new one displaces."""
    limit = ctx.policy.max_sessions
    if not limit or ctx.stage != "sign_in":
        return ()
    excess = len(ctx.open_sessions) + 1 - limit
    return ctx.open_sessions[:excess] if excess > 0 else ()

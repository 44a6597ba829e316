"""First policy: only an active account may sign in or pass a check."""

from __future__ import annotations

from policies.context import PolicyContext
from policies.decision import Decision


def account_state(ctx: PolicyContext) -> Decision | None:
    """Deny a deleted, disabled or not yet joined account."""
    if ctx.user is None:
        return Decision.deny("account_deleted")
    if ctx.user.status == "disabled":
        return Decision.deny("account_disabled")
    if ctx.user.status != "active":
        return Decision.deny("account_not_active")
    return None

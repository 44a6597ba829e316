"""The ordered runner: the first policy with an objection decides. The same
list serves sign-in and every checked request; a policy that applies to one
stage only looks at ``ctx.stage``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.account_state import account_state
from policies.context import PolicyContext
from policies.decision import Decision
from policies.ip_allowlist import ip_allowlist
from policies.mfa import mfa_enforcement
from policies.time_limits import forced_relogin, idle_timeout

Policy = Callable[[PolicyContext], Decision | None]

# Time limits come before MFA, so a stale session is sent to sign in again
# rather than to enrol a factor. The concurrent-session limit is not a
# refusal; see policies.concurrent_sessions.
PIPELINE: Sequence[Policy] = (
    account_state,
    ip_allowlist,
    idle_timeout,
    forced_relogin,
    mfa_enforcement,
)

# What makes a session stale whoever holds it, wherever they are.
TIME_LIMITS: Sequence[Policy] = (idle_timeout, forced_relogin)


def evaluate(
    ctx: PolicyContext, policies: Sequence[Policy] = PIPELINE
) -> Decision | None:
    for policy in policies:
        decision = policy(ctx)
        if decision is not None:
            return decision
    return None

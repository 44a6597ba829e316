"""The ordered runner: the first policy with an objection decides."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.account_state import account_state
from policies.context import PolicyContext
from policies.decision import Decision

Policy = Callable[[PolicyContext], Decision | None]

# At sign-in (after the first factor) and at every checked request. The
# gateway's policies (IP allow-list, idle timeout, forced re-login, MFA,
# concurrent sessions) join these lists in their order.
SIGN_IN: Sequence[Policy] = (account_state,)
CHECK: Sequence[Policy] = (account_state,)


def evaluate(ctx: PolicyContext, policies: Sequence[Policy]) -> Decision | None:
    for policy in policies:
        decision = policy(ctx)
        if decision is not None:
            return decision
    return None

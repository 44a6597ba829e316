"""MFA enforcement: *Don't force*, *Force*, *Force except enterprise SSO*.

At sign-in, a member who has a factor is asked for it, and one who has none
is taken through setting one up. At a check, a session that never did MFA is
sent to sign in again (and so, through the same two steps); it is never
upgraded in place.
"""

from __future__ import annotations

from policies.context import PolicyContext
from policies.decision import Decision

# RFC 8176 methods that prove a second factor by themselves: a passkey used
# with user verification is something you have plus something you are/know.
MULTI_FACTOR_AMR = frozenset({"mfa", "otp", "hwk", "swk"})


def session_has_mfa(ctx: PolicyContext) -> bool:
    session = ctx.session
    if session is None:
        return False
    if session.mfa_at is not None or MULTI_FACTOR_AMR.intersection(session.amr):
        return True
    return ctx.policy.mfa_mode == "force_except_sso" and session.via_sso


def mfa_enforcement(ctx: PolicyContext) -> Decision | None:
    if ctx.policy.mfa_mode == "off" or session_has_mfa(ctx):
        return None
    if ctx.stage == "check":
        return Decision.reauthenticate("mfa_required")
    if ctx.user is not None and ctx.user.has_mfa:
        return Decision.require_mfa("mfa_required")
    return Decision.enroll_mfa("mfa_enrollment_required")

"""MFA enforcement: *Don't force*, *Force*, *Force except enterprise SSO*.

At sign-in, a member who has a factor is asked for it, and one who has none
is taken through setting one up. At a check, a session that never did MFA is
sent to sign in again (and so, through the same two steps); it is never
upgraded in place.
"""

from __future__ import annotations

from policies.context import PolicyContext
from policies.decision import Decision


def session_has_mfa(ctx: PolicyContext) -> bool:
    """Whether the session proved a second factor: its MFA time, which the
    sign-in sets after an MFA step or a passkey used with user
    verification, and nothing else. The methods (amr) only describe the
    sign-in: a session that lists a key or a code but has no MFA time was
    never checked for a second factor, so it does not count."""
    session = ctx.session
    if session is None:
        return False
    if session.mfa_at is not None:
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

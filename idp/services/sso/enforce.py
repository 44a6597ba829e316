"""*Require SSO*: a connection that requires it refuses password sign-in to
the members whose address is in one of its verified domains.

Admins keep password sign-in, so a broken IdP (expired certificate, lost
tenant) cannot lock the workspace out: that is the break-glass path, and
each use of it is audited. The rule is applied after the password has been
checked, so an unknown address, a wrong password and a refused member all
look the same to someone who does not hold the password.
"""

from __future__ import annotations

from idp.db import db
from idp.models import User
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Forbidden
from idp.services.reasons import MESSAGES
from idp.services.sso.domains import sso_required_for

REASON = "sso_required"
EMAIL_MANAGED = (
    "Your email address comes from your company's single sign-on, so it cannot "
    "be changed here. Ask an admin of the workspace."
)


class SsoRequired(Forbidden):
    default_code = REASON

    def __init__(self, accounts: list[User]) -> None:
        super().__init__(MESSAGES[REASON], code=REASON, audited=True)
        # Whose sign-in was refused: the page offers their IdP.
        self.accounts = accounts


def refuses_password(user: User) -> bool:
    """Whether *Require SSO* refuses this account a password sign-in."""
    return user.role != "admin" and sso_required_for(user.email, user.workspace_id)


def screen(ctx: Context, accounts: list[User]) -> list[User]:
    """The accounts a password that opened ``accounts`` may sign in to;
    SsoRequired (each refusal audited) when it is none of them."""
    allowed = [u for u in accounts if not refuses_password(u)]
    if allowed:
        return allowed
    raise _refuse(ctx, accounts)


def admit_password(ctx: Context, user: User, *, method: str = "password") -> None:
    """Just before a sign-in to ``user`` without the IdP goes on (a password,
    or a passkey: ``method``): SsoRequired for a member under *Require
    SSO*; for an admin, the break-glass is recorded."""
    if not sso_required_for(user.email, user.workspace_id):
        return
    if user.role != "admin":
        raise _refuse(ctx, [user], method=method)
    audit.record_now(
        ctx,
        "signin.break_glass",
        workspace_id=user.workspace_id,
        target=user,
        reason=REASON,
        details={"method": method, "break_glass": True},
    )


def admit_email_change(ctx: Context, user: User, *, action: str) -> None:
    """Before a member's address changes (``action``: the request or its
    confirmation): under *Require SSO* the address is the company's, since a
    member who moved out of its domain would have password sign-in back and
    keep access after leaving the IdP. Admins keep the choice."""
    if not refuses_password(user):
        return
    audit.record_now(
        ctx,
        action,
        workspace_id=user.workspace_id,
        outcome="denied",
        reason=REASON,
        target=user,
    )
    raise Forbidden(EMAIL_MANAGED, code=REASON, audited=True)


def _refuse(
    ctx: Context, accounts: list[User], *, method: str = "password"
) -> SsoRequired:
    for user in accounts:
        audit.record(
            ctx,
            "signin.failure",
            workspace_id=user.workspace_id,
            outcome="denied",
            reason=REASON,
            target=user,
            details={"method": method},
        )
    db.session.commit()
    return SsoRequired(accounts)

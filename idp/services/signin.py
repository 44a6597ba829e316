"""Password sign-in and the one routine that turns a proven identity into a
session."""

from __future__ import annotations

import math
import uuid

import sqlalchemy as sa

import policies
from idp.clock import now
from idp.db import db
from idp.models import Session, User, Workspace
from idp.security import normalize_email
from idp.services import audit, sessions, throttle
from idp.services.context import Context
from idp.services.errors import Forbidden, InvalidInput, ServiceError, Throttled
from idp.state import state

GENERIC_FAILURE = "The email or password is incorrect."

# What a person is told when a policy refuses their sign-in.
REFUSALS = {
    "account_disabled": "This account is disabled. Ask an admin of the workspace to enable it.",
    "account_not_active": "This account has not been set up yet. Use the link in your invitation.",
    "account_deleted": GENERIC_FAILURE,
}


class SignInFailed(ServiceError):
    status = 401
    default_code = "bad_credentials"

    def __init__(self, code: str = "bad_credentials") -> None:
        # Raised only after the failure is recorded.
        super().__init__(GENERIC_FAILURE, code=code, audited=True)


def accounts_for_email(email_key: str) -> list[User]:
    """Every account with this email that could sign in with a password."""
    return list(
        db.session.scalars(
            sa.select(User)
            .join(Workspace, Workspace.id == User.workspace_id)
            .where(User.email == email_key, User.password_hash.is_not(None))
            .order_by(Workspace.name)
        )
    )


def check_password(ctx: Context, typed_email: str, password: str) -> list[User]:
    """The accounts that this email and password open, or SignInFailed.

    Unknown and known emails cost the same: one hash each way. Failures are
    counted per email as typed, whether or not it exists, and an email over
    its limit is refused before any hashing.
    """
    pw = state().passwords
    if len(password) > pw.max_length:
        raise InvalidInput(f"Passwords are at most {pw.max_length} characters.", code="password_too_long")
    key = normalize_email(typed_email)
    if not key:
        raise InvalidInput("Enter your email address.")

    wait = throttle.seconds_locked(key)
    if wait:
        audit.record_now(
            ctx, "signin.failure", workspace_id=None, outcome="failure",
            reason="account_throttled", target_label=key,
        )
        minutes = max(1, math.ceil(wait / 60))
        raise Throttled(
            f"Too many failed attempts for this email. Try again in {minutes} "
            f"minute{'s' if minutes != 1 else ''}, or reset your password.",
            retry_after=wait,
            code="account_throttled",
            audited=True,
        )

    accounts = accounts_for_email(key)
    matched: list[User] = []
    if not accounts:
        pw.verify(None, password)
    for account in accounts:
        ok, needs_rehash = pw.verify(account.password_hash, password)
        if ok:
            if needs_rehash:
                account.password_hash = pw.hash(password)
            matched.append(account)

    if not matched:
        db.session.rollback()
        throttle.record_failure(key)
        for workspace_id in {a.workspace_id for a in accounts} or {None}:
            audit.record(
                ctx, "signin.failure", workspace_id=workspace_id, outcome="failure",
                reason="bad_credentials", target_label=key,
            )
        db.session.commit()
        raise SignInFailed()

    throttle.clear(key)
    db.session.commit()
    return matched


def complete_sign_in(ctx: Context, user: User, *, amr: list[str]) -> str:
    """The one place a session is created: policy check, new token, the old
    session (if any) ended, audit. Returns the new session token."""
    moment = now()
    decision = policies.evaluate(
        policies.PolicyContext(
            now=moment, user=sessions.user_facts(user), client_ip=ctx.client.ip
        ),
        policies.SIGN_IN,
    )
    if decision is not None:
        audit.record_now(
            ctx, "signin.failure", workspace_id=user.workspace_id, outcome="denied",
            reason=decision.reason, target=user,
        )
        raise Forbidden(
            REFUSALS.get(decision.reason, GENERIC_FAILURE), code=decision.reason, audited=True
        )

    if ctx.session is not None:
        sessions.revoke_where(Session.id == ctx.session.id, reason="replaced")
    token = sessions.issue(user, ctx.client, amr=amr, authenticated_at=moment)
    user.last_signin_at = moment
    user.last_seen_at = moment
    audit.record(
        Context.for_user(user, ctx.client),
        "signin.success",
        workspace_id=user.workspace_id,
        target=user,
        details={"amr": amr},
    )
    db.session.commit()
    return token


def account_in(user_ids: list[str], chosen: str) -> User | None:
    """The chosen account among those the password opened (workspace choice)."""
    if chosen not in user_ids:
        return None
    try:
        return db.session.get(User, uuid.UUID(chosen))
    except ValueError:
        return None

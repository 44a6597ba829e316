"""Password sign-in and the one routine that turns a proven identity into a
session."""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import sqlalchemy as sa

import policies
from idp.clock import now
from idp.db import db
from idp.models import Session, User, Workspace
from idp.security import normalize_email, secrets_equal
from idp.services import audit, sessions, throttle
from idp.services.context import Context
from idp.services.errors import Busy, Forbidden, InvalidInput, ServiceError, Throttled
from idp.services.policy import load_policy, user_facts
from idp.services.reasons import GENERIC_FAILURE, MESSAGES
from idp.state import state


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
        raise InvalidInput(
            f"Passwords are at most {pw.max_length} characters.",
            code="password_too_long",
        )
    key = normalize_email(typed_email)
    if not key:
        raise InvalidInput("Enter your email address.")

    # The attempt is counted before any hashing (and uncounted on success),
    # so parallel guesses cannot all slip past the limit.
    wait = throttle.reserve_attempt(key)
    if wait:
        # Recorded in each workspace the email belongs to, so its admins see
        # the attack; the answer is the same whether or not it belongs to any.
        _record_failure(ctx, key, "account_throttled")
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
    try:
        if not accounts:
            pw.verify(None, password)
        for account in accounts:
            ok, needs_rehash = pw.verify(account.password_hash, password)
            if ok:
                if needs_rehash:
                    account.password_hash = pw.hash(password)
                matched.append(account)
    except Busy:
        # No hash was tried: the reserved attempt is given back.
        db.session.rollback()
        throttle.release_attempt(key)
        raise

    if not matched:
        # Already counted by reserve_attempt.
        _record_failure(ctx, key, "bad_credentials", accounts)
        raise SignInFailed()

    throttle.clear(key)
    db.session.commit()
    return matched


def _record_failure(
    ctx: Context, key: str, reason: str, accounts: list[User] | None = None
) -> None:
    db.session.rollback()
    if accounts is None:
        accounts = accounts_for_email(key)
    for workspace_id in {a.workspace_id for a in accounts} or {None}:
        audit.record(
            ctx,
            "signin.failure",
            workspace_id=workspace_id,
            outcome="failure",
            reason=reason,
            target_label=key,
        )
    db.session.commit()


@dataclass(frozen=True)
class SignedIn:
    token: str
    # Older sessions ended to respect *Max concurrent sessions*.
    sessions_ended: int = 0


def complete_sign_in(
    ctx: Context,
    user: User,
    *,
    amr: list[str],
    mfa_at: datetime | None = None,
    sso_connection_id: uuid.UUID | None = None,
) -> SignedIn:
    """The one place a session is created: policy check, new token, the old
    session (if any) ended, the concurrent-session limit applied, audit."""
    moment = now()
    # The account as it is now, not as it was read before the slow hash: an
    # admin may have disabled or deleted it meanwhile. Locked (PostgreSQL)
    # until the session is committed, so a disable waits and then ends it.
    current = db.session.execute(
        sa.select(User)
        .where(User.id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    policy = load_policy(user.workspace_id)
    replaced = ctx.session.id if ctx.session is not None else None
    # Sessions the policy has already timed out do not count against the
    # limit; they end at their next request anyway.
    open_ids = tuple(
        str(s.id)
        for s in sessions.oldest_first(user.id)
        if s.id != replaced
        and policies.evaluate(
            policies.PolicyContext(
                now=moment,
                user=None,
                session=sessions.session_facts(s),
                policy=policy,
            ),
            policies.TIME_LIMITS,
        )
        is None
    )
    pctx = _sign_in_context(
        ctx,
        current,
        policy,
        moment,
        mfa_at=mfa_at,
        amr=amr,
        via_sso=sso_connection_id is not None,
        open_sessions=open_ids,
    )
    decision = policies.evaluate(pctx)
    if decision is not None:
        _refuse(ctx, user, decision.reason)

    if replaced is not None:
        sessions.revoke_where(Session.id == replaced, reason="replaced")
    displaced = policies.sessions_to_end(pctx)
    ended = 0
    if displaced:
        ended = sessions.revoke_where(
            Session.id.in_([uuid.UUID(i) for i in displaced]),
            Session.user_id == user.id,
            reason="session_limit",
        )
    token = sessions.issue(
        user,
        ctx.client,
        amr=amr,
        authenticated_at=moment,
        mfa_at=mfa_at,
        sso_connection_id=sso_connection_id,
    )
    user.last_signin_at = moment
    user.last_seen_at = moment
    member = Context.for_user(user, ctx.client)
    if ended:
        audit.record(
            member,
            "session.limit_reached",
            workspace_id=user.workspace_id,
            target=user,
            reason="session_limit",
            details={"sessions_ended": ended, "limit": policy.max_sessions},
        )
    audit.record(
        member,
        "signin.success",
        workspace_id=user.workspace_id,
        target=user,
        details={"amr": amr},
    )
    try:
        db.session.commit()
    except (sa.exc.IntegrityError, sa.orm.exc.StaleDataError):
        # Deleted after the check (SQLite takes no row lock).
        _refuse(ctx, user, "account_deleted")
    return SignedIn(token, ended)


def _sign_in_context(
    ctx: Context,
    user: User | None,
    policy: policies.WorkspacePolicy,
    moment: datetime,
    *,
    mfa_at: datetime | None,
    amr: list[str],
    via_sso: bool = False,
    open_sessions: tuple[str, ...] = (),
) -> policies.PolicyContext:
    """The pipeline's view of the session a sign-in is about to create."""
    return policies.PolicyContext(
        now=moment,
        user=user_facts(user, with_mfa=True),
        stage="sign_in",
        session=policies.SessionFacts(
            created_at=moment,
            authenticated_at=moment,
            last_seen_at=moment,
            mfa_at=mfa_at,
            amr=tuple(amr),
            via_sso=via_sso,
        ),
        client_ip=ctx.client.ip,
        policy=policy,
        open_sessions=open_sessions,
    )


def second_step(
    ctx: Context, user: User, *, amr: list[str] | None = None, via_sso: bool = False
) -> str | None:
    """What the sign-in needs after the first step (a password, or the
    company IdP when ``via_sso``): None (issue the session), "mfa" (ask for
    a factor) or "enroll" (MFA is forced and the member has none: set one up
    first). A refusal of the account or the address (Forbidden, audited)
    comes before any factor is asked for. With *Force except enterprise
    SSO*, a sign-in through the IdP counts as MFA."""
    from idp.services import mfa

    pctx = _sign_in_context(
        ctx,
        user,
        load_policy(user.workspace_id),
        now(),
        mfa_at=None,
        amr=amr or ["pwd"],
        via_sso=via_sso,
    )
    decision = policies.evaluate(pctx)
    if decision is None:
        if via_sso:
            # The company IdP did the authentication; a member's own factors
            # are asked for only when the workspace forces MFA on it.
            return None
        return "mfa" if mfa.user_has_mfa(user) else None
    if decision.outcome == "require_mfa":
        return "mfa"
    if decision.outcome == "enroll_mfa":
        return "enroll"
    _refuse(ctx, user, decision.reason)


def _refuse(ctx: Context, user: User, reason: str) -> NoReturn:
    workspace_id, label = user.workspace_id, user.email
    gone = reason == "account_deleted"
    audit.record_now(
        ctx,
        "signin.failure",
        workspace_id=workspace_id,
        outcome="denied",
        reason=reason,
        target=None if gone else user,
        target_label=label,
    )
    raise Forbidden(MESSAGES.get(reason, GENERIC_FAILURE), code=reason, audited=True)


def choice_fingerprint(accounts: list[User]) -> str:
    """What the workspace choice is bound to: the accounts the password
    opened, their password hashes and last sign-ins. The choice lives in the
    browser's signed flow cookie, so without this a copy of that cookie
    could sign in again after the choice was made (and the person signed
    out), or after the password changed. Any sign-in to one of the accounts,
    or any password change, ends the choice: it works once."""
    digest = hashlib.sha256()
    for user in sorted(accounts, key=lambda u: str(u.id)):
        signed_in = user.last_signin_at.isoformat() if user.last_signin_at else ""
        digest.update(f"{user.id}|{user.password_hash}|{signed_in}\n".encode())
    return digest.hexdigest()


class StaleChoice(ServiceError):
    status = 400
    default_code = "choice_expired"


def account_in(
    user_ids: list[str], chosen: str, fingerprint: str | None
) -> User | None:
    """The chosen account among those the password opened (workspace choice);
    None for an account it did not open; StaleChoice when the choice was
    already used or the accounts changed since the password was checked."""
    if chosen not in user_ids:
        return None
    try:
        ids = [uuid.UUID(i) for i in user_ids]
    except ValueError:
        return None
    accounts = list(db.session.scalars(sa.select(User).where(User.id.in_(ids))))
    if (
        len(accounts) != len(ids)
        or fingerprint is None
        or not secrets_equal(choice_fingerprint(accounts), fingerprint)
    ):
        raise StaleChoice("This sign-in has expired. Sign in again.")
    return next(u for u in accounts if str(u.id) == chosen)

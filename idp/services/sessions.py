"""Server-side sessions: issue, load on every request, revoke."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

import policies
from idp.clock import now
from idp.db import db
from idp.models import SecurityPolicy, Session, User, Workspace
from idp.security import new_token, token_digest
from idp.services import audit
from idp.services.context import Client, Context
from idp.services.errors import NotFound
from idp.services.policy import (
    allow_entries_of,
    policy_facts,
    policy_from_values,
    user_facts,
)
from idp.state import settings

# Longest token we will even hash: ours are 43 characters.
MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class Loaded:
    session: Session
    user: User
    workspace: Workspace


@dataclass(frozen=True)
class Refused:
    """A live session that the workspace policy does not let through now.
    ``ended`` when the refusal ended it (idle, re-login, MFA now forced, the
    account no longer active); an IP refusal leaves the session alive for
    when the member is back on an allowed network."""

    session: Session
    user: User
    workspace: Workspace
    decision: policies.Decision
    ended: bool


@dataclass(frozen=True)
class Target:
    """What a checked request asks for (the gateway's original request)."""

    host: str | None = None
    path: str | None = None
    method: str | None = None


def session_facts(session: Session) -> policies.SessionFacts:
    return policies.SessionFacts(
        created_at=session.created_at,
        authenticated_at=session.authenticated_at,
        last_seen_at=session.last_seen_at,
        mfa_at=session.mfa_at,
        amr=tuple(session.amr or ()),
        via_sso=session.sso_connection_id is not None,
    )


def issue(
    user: User,
    client: Client,
    *,
    amr: list[str],
    authenticated_at: datetime,
    mfa_at: datetime | None = None,
    sso_connection_id: uuid.UUID | None = None,
) -> str:
    """Add a new session to the current transaction; return its token."""
    token = new_token()
    moment = now()
    db.session.add(
        Session(
            workspace_id=user.workspace_id,
            user_id=user.id,
            token_hash=token_digest(token),
            created_at=moment,
            authenticated_at=authenticated_at,
            last_seen_at=moment,
            amr=amr,
            mfa_at=mfa_at,
            sso_connection_id=sso_connection_id,
            ip=client.ip,
            user_agent=(client.user_agent or "")[:512] or None,
        )
    )
    return token


def load(
    token: str | None, client: Client, target: Target | None = None
) -> Loaded | Refused | None:
    """The session for a cookie value, checked against the workspace policy.

    Read from the database on every call (one query, plus the IP allow-list
    when the workspace has one), so that revocation, disabling, role and
    policy changes apply at once on every instance. None: no live session.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = db.session.execute(
        sa.select(Session, User, Workspace, SecurityPolicy)
        .join(User, User.id == Session.user_id)
        .join(Workspace, Workspace.id == Session.workspace_id)
        .outerjoin(SecurityPolicy, SecurityPolicy.workspace_id == Session.workspace_id)
        .where(Session.token_hash == token_digest(token), Session.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    session, user, workspace, policy_row = row
    moment = now()
    facts = session_facts(session)
    if _past_lifetime(facts, moment):
        return None
    policy = policy_facts(policy_row)
    decision = _judge(moment, user_facts(user), facts, policy, client, target)
    if decision is not None:
        return _refuse(session, user, workspace, decision, client)
    _touch(session.id, user.id, session.last_seen_at, moment, policy)
    return Loaded(session, user, workspace)


@dataclass(frozen=True)
class Checked:
    """A live session that passed every policy, as the gateway's allowed
    answer needs it: plain values, no ORM objects."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    full_name: str
    role: str
    workspace_slug: str
    amr: tuple[str, ...]
    authenticated_at: datetime


# The gateway's one query, built once: columns only, through the
# connection, so no ORM identity map or statement building on the hot path.
_CHECK = (
    sa.select(
        Session.id,
        Session.user_id,
        Session.workspace_id,
        Session.created_at,
        Session.authenticated_at,
        Session.last_seen_at,
        Session.mfa_at,
        Session.amr,
        Session.sso_connection_id,
        User.email,
        User.full_name,
        User.role,
        User.status,
        Workspace.slug,
        SecurityPolicy.mfa_mode,
        SecurityPolicy.idle_timeout_seconds,
        SecurityPolicy.max_sessions,
        SecurityPolicy.relogin_days,
        SecurityPolicy.ip_restriction_enabled,
        allow_entries_of(Session.workspace_id).label("allow_entries"),
    )
    .join(User, User.id == Session.user_id)
    .join(Workspace, Workspace.id == Session.workspace_id)
    .outerjoin(SecurityPolicy, SecurityPolicy.workspace_id == Session.workspace_id)
    .where(Session.token_hash == sa.bindparam("digest"), Session.revoked_at.is_(None))
)


@functools.lru_cache(maxsize=8)
def _lone_reads(engine: sa.Engine) -> sa.Engine:
    """The same pool, for a single SELECT that needs no transaction: no
    BEGIN and no ROLLBACK, two round trips fewer on PostgreSQL. The one
    statement still reads one consistent snapshot."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def check(
    token: str | None, client: Client, target: Target
) -> Checked | Refused | None:
    """``load`` for the gateway: the same rows, policies and writes, read
    without the ORM. A refusal, which is rare, loads the objects to record
    it exactly as ``load`` does."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    with _lone_reads(db.engine).connect() as connection:
        row = connection.execute(_CHECK, {"digest": token_digest(token)}).first()
    if row is None:
        return None
    moment = now()
    facts = policies.SessionFacts(
        created_at=row.created_at,
        authenticated_at=row.authenticated_at,
        last_seen_at=row.last_seen_at,
        mfa_at=row.mfa_at,
        amr=tuple(row.amr or ()),
        via_sso=row.sso_connection_id is not None,
    )
    if _past_lifetime(facts, moment):
        return None
    policy = policy_from_values(
        row.workspace_id,
        mfa_mode=row.mfa_mode,
        idle_timeout_seconds=row.idle_timeout_seconds,
        max_sessions=row.max_sessions,
        relogin_days=row.relogin_days,
        ip_restriction_enabled=row.ip_restriction_enabled,
        allow_entries=row.allow_entries,
    )
    user = policies.UserFacts(id=str(row.user_id), role=row.role, status=row.status)
    decision = _judge(moment, user, facts, policy, client, target)
    if decision is not None:
        session = db.session.get(Session, row.id)
        member = db.session.get(User, row.user_id)
        workspace = db.session.get(Workspace, row.workspace_id)
        if session is None or member is None or workspace is None:
            # Deleted since the read above: no session is left to refuse.
            return None
        return _refuse(session, member, workspace, decision, client)
    _touch(row.id, row.user_id, row.last_seen_at, moment, policy)
    return Checked(
        session_id=row.id,
        user_id=row.user_id,
        email=row.email,
        full_name=row.full_name,
        role=row.role,
        workspace_slug=row.slug,
        amr=facts.amr,
        authenticated_at=row.authenticated_at,
    )


def _past_lifetime(facts: policies.SessionFacts, moment: datetime) -> bool:
    lifetime = timedelta(days=settings()["sessions"]["absolute_lifetime_days"])
    return policies.past_lifetime(facts, moment, lifetime)


def _judge(
    moment: datetime,
    user: policies.UserFacts | None,
    facts: policies.SessionFacts,
    policy: policies.WorkspacePolicy,
    client: Client,
    target: Target | None,
) -> policies.Decision | None:
    target = target or Target()
    return policies.evaluate(
        policies.PolicyContext(
            now=moment,
            user=user,
            stage="check",
            session=facts,
            client_ip=client.ip,
            host=target.host,
            path=target.path,
            method=target.method,
            policy=policy,
        )
    )


def _touch(
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    last_seen_at: datetime,
    moment: datetime,
    policy: policies.WorkspacePolicy,
) -> None:
    """Move last-seen forward when it is an interval old."""
    if (moment - last_seen_at).total_seconds() < last_seen_interval(policy):
        return
    # Conditional, so two parallel requests write once and a revocation
    # committed meanwhile is never undone.
    db.session.execute(
        sa.update(Session)
        .where(Session.id == session_id, Session.last_seen_at == last_seen_at)
        .values(last_seen_at=moment)
    )
    db.session.execute(
        sa.update(User).where(User.id == user_id).values(last_seen_at=moment)
    )
    db.session.commit()


def last_seen_interval(policy: policies.WorkspacePolicy) -> int:
    """Seconds between two last-seen writes for one session.

    The idle timeout counts from last-seen, which lags the latest request by
    up to this interval, so a session may end up to one interval before the
    member has really been idle for the whole timeout (never after it). The
    operator's interval (a minute by default) keeps the hot path from
    writing on every request; a short idle timeout shrinks it to a tenth of
    the timeout, so that a member active every 30 s is not signed out by a
    1-minute timeout.
    """
    interval = int(settings()["sessions"]["last_seen_interval_seconds"])
    idle = policy.idle_timeout_seconds
    if idle:
        interval = min(interval, max(1, idle // 10))
    return interval


# Refusals that depend on where the member is, not on the session or the
# account: the session stays for when they are back on an allowed network.
# Every other refusal ends it, so that an account disabled or reset to
# invited by any path, even one that forgot to revoke, never gets its old
# sessions back when it is enabled again (ACC-1).
KEEPS_SESSION = frozenset({"ip_not_allowed", "ip_unknown"})


def _refuse(
    session: Session,
    user: User,
    workspace: Workspace,
    decision: policies.Decision,
    client: Client,
) -> Refused:
    """Record a policy refusal. A refusal that ends the session does so
    once: the audit event is written by whichever request ended it, and a
    request that lost that race is still told the session is over."""
    ctx = Context.for_user(user, client, session)
    ended = decision.reason not in KEEPS_SESSION
    if ended:
        if revoke_where(Session.id == session.id, reason=decision.reason) > 0:
            audit.record(
                ctx,
                "session.ended",
                workspace_id=workspace.id,
                outcome="denied",
                reason=decision.reason,
                target=user,
                details={"session": str(session.id)},
            )
    else:
        audit.record(
            ctx,
            "access.denied",
            workspace_id=workspace.id,
            outcome="denied",
            reason=decision.reason,
            target=user,
        )
    db.session.commit()
    return Refused(session, user, workspace, decision, ended)


def ended_reason(token: str | None) -> str | None:
    """Why the session behind a cookie was revoked, for the sign-in page to
    tell its holder (an idle timeout, a sign-in elsewhere past the session
    limit); None for a token that was never issued or is still live."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return db.session.scalar(
        sa.select(Session.revoked_reason).where(
            Session.token_hash == token_digest(token), Session.revoked_at.is_not(None)
        )
    )


def active_sessions(user: User) -> list[Session]:
    lifetime = timedelta(days=settings()["sessions"]["absolute_lifetime_days"])
    return list(
        db.session.scalars(
            sa.select(Session)
            .where(
                Session.user_id == user.id,
                Session.revoked_at.is_(None),
                Session.authenticated_at > now() - lifetime,
            )
            .order_by(Session.last_seen_at.desc())
        )
    )


def oldest_first(user_id: uuid.UUID) -> list[Session]:
    """The member's live sessions, oldest first (for the session limit)."""
    lifetime = timedelta(days=settings()["sessions"]["absolute_lifetime_days"])
    return list(
        db.session.scalars(
            sa.select(Session)
            .where(
                Session.user_id == user_id,
                Session.revoked_at.is_(None),
                Session.authenticated_at > now() - lifetime,
            )
            .order_by(Session.created_at, Session.id)
        )
    )


def revoke_where(*conditions: sa.ColumnElement[bool], reason: str) -> int:
    """Revoke every live session matching ``conditions``; part of the caller's
    transaction."""
    result = db.session.execute(
        sa.update(Session)
        .where(Session.revoked_at.is_(None), *conditions)
        .values(revoked_at=now(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def revoke_user_sessions(
    user_id: uuid.UUID, reason: str, *, keep: uuid.UUID | None = None
) -> int:
    conditions = [Session.user_id == user_id]
    if keep is not None:
        conditions.append(Session.id != keep)
    return revoke_where(*conditions, reason=reason)


def sign_out(ctx: Context) -> None:
    """End the caller's own session."""
    if ctx.session is None or ctx.user is None:
        return
    revoke_where(Session.id == ctx.session.id, reason="logout")
    audit.record(
        ctx, "session.logout", workspace_id=ctx.user.workspace_id, target=ctx.user
    )
    db.session.commit()


def sign_out_others(ctx: Context) -> int:
    """*Log out all other sessions*: every session of the caller but this one."""
    assert ctx.user is not None and ctx.session is not None
    count = revoke_user_sessions(ctx.user.id, "logout_others", keep=ctx.session.id)
    audit.record(
        ctx,
        "session.logout_others",
        workspace_id=ctx.user.workspace_id,
        target=ctx.user,
        details={"sessions_ended": count},
    )
    db.session.commit()
    return count


def end_own_session(ctx: Context, session_id: uuid.UUID) -> None:
    """End one of the caller's other sessions from the session list."""
    assert ctx.user is not None
    count = revoke_where(
        Session.id == session_id, Session.user_id == ctx.user.id, reason="ended_by_user"
    )
    if count == 0:
        raise NotFound("That session does not exist or has already ended.")
    audit.record(
        ctx,
        "session.end",
        workspace_id=ctx.user.workspace_id,
        target=ctx.user,
        details={"session": str(session_id)},
    )
    db.session.commit()

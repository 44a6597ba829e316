"""The Security tab's check-up: live counts of what the workspace's settings
leave exposed, and the warnings above them.

Every count is one SQL aggregate, so the page costs the same for ten
members as for a hundred thousand. The session counts restate the
pipeline's time limits and MFA rule as SQL; a test holds them equal to
``policies.evaluate`` on the same sessions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

import policies
from idp.clock import now
from idp.db import db
from idp.models import (
    DomainAllowEntry,
    IpAllowEntry,
    SecurityPolicy,
    Session,
    User,
    Workspace,
)
from idp.services import mfa
from idp.services.context import Context
from idp.services.permissions import require_admin
from idp.services.security_policy import current_policy
from idp.services.sessions import session_facts
from idp.state import settings

INACTIVE_AFTER = timedelta(days=90)
STALE_INVITATION_AFTER = timedelta(days=30)
SUMMARY_LIMIT = 500


@dataclass(frozen=True)
class Vulnerability:
    """One vulnerability; ``section`` is the id of the setting that fixes
    it, or "users" for the Users tab."""

    code: str
    message: str
    section: str


@dataclass(frozen=True)
class SessionCounts:
    active: int = 0
    idle: int = 0
    relogin: int = 0
    without_mfa: int = 0
    # Ended at the next request by the settings as they are now.
    not_allowed: int = 0
    # Ended at the member's next sign-in by Max concurrent sessions.
    over_limit: int = 0


@dataclass(frozen=True)
class Checkup:
    active_members: int
    without_mfa: int
    admins_without_mfa: int
    sessions: SessionCounts
    settings_off: tuple[str, ...]
    inactive_members: int
    stale_invitations: int
    allowed_ips: int
    allowed_domains: int
    warnings: tuple[Vulnerability, ...]


@dataclass(frozen=True)
class MemberMfa:
    user: User
    # Labels of the member's second factors and passkeys; empty: none.
    factors: tuple[str, ...]


def run(ctx: Context, workspace: Workspace) -> Checkup:
    """The four quadrants and the warnings, as of now."""
    require_admin(ctx, workspace.id, "security.view")
    policy = current_policy(workspace)
    moment = now()
    without_mfa, admins_without_mfa, active = _mfa_counts(workspace.id)
    sessions = session_counts(workspace.id, policy, moment)
    inactive, stale = _inactivity_counts(workspace.id, moment)
    ips = _count(IpAllowEntry, workspace.id)
    domains = _count(DomainAllowEntry, workspace.id)
    off = tuple(
        label
        for label, value in (
            ("Idle session timeout", policy.idle_timeout_seconds),
            ("Max concurrent sessions", policy.max_sessions),
            ("Force re-login", policy.relogin_days),
        )
        if not value
    )
    return Checkup(
        active_members=active,
        without_mfa=without_mfa,
        admins_without_mfa=admins_without_mfa,
        sessions=sessions,
        settings_off=off,
        inactive_members=inactive,
        stale_invitations=stale,
        allowed_ips=ips,
        allowed_domains=domains,
        warnings=_warnings(policy, admins_without_mfa, inactive, stale),
    )


def members_without_mfa(workspace_id: uuid.UUID) -> int:
    """Active members who would be asked to set up MFA if it were forced."""
    return _mfa_counts(workspace_id)[0]


def mfa_summary(workspace: Workspace, limit: int = SUMMARY_LIMIT) -> list[MemberMfa]:
    """The Summary of Force MFA: active members with their factors, admins
    first; at most ``limit`` of them."""
    members = list(
        db.session.scalars(
            sa.select(User)
            .where(User.workspace_id == workspace.id, User.status == "active")
            .order_by(User.role, User.email)
            .limit(limit)
        )
    )
    factors = factors_for(members)
    return [MemberMfa(user, factors.get(user.id, ())) for user in members]


def factors_for(users: Sequence[User]) -> dict[uuid.UUID, tuple[str, ...]]:
    """Each member's factors by id, as labels such as "Authenticator app"."""
    return mfa.factors_for(users)


def has_mfa_clause() -> sa.ColumnElement[bool]:
    """policy.user_has_mfa as a SQL condition on User, for counting. A test
    holds the two equal for every member."""
    return mfa.has_mfa_clause()


def session_counts(
    workspace_id: uuid.UUID, policy: SecurityPolicy, moment: datetime
) -> SessionCounts:
    """Live sessions, and those the settings would end or evict."""
    lifetime = timedelta(days=settings()["sessions"]["absolute_lifetime_days"])
    live = (
        Session.workspace_id == workspace_id,
        Session.revoked_at.is_(None),
        Session.authenticated_at > moment - lifetime,
    )
    rules = _session_rules(policy, moment)
    refused = sa.or_(*rules.values()) if rules else sa.false()

    def tally(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    row = db.session.execute(
        sa.select(
            sa.func.count(),
            *(tally(rules.get(key, sa.false())) for key in ("idle", "relogin", "mfa")),
            tally(refused),
        ).where(*live)
    ).one()
    over = 0
    if policy.max_sessions:
        # Sign-in keeps the newest sessions up to the limit; sessions the
        # rules above already end do not count against it.
        per_user = (
            sa.select(sa.func.count().label("n"))
            .where(*live, sa.not_(refused))
            .group_by(Session.user_id)
            .having(sa.func.count() > policy.max_sessions)
            .subquery()
        )
        over = db.session.scalar(
            sa.select(
                sa.func.coalesce(sa.func.sum(per_user.c.n - policy.max_sessions), 0)
            )
        )
    return SessionCounts(
        active=row[0],
        idle=int(row[1]),
        relogin=int(row[2]),
        without_mfa=int(row[3]),
        not_allowed=int(row[4]),
        over_limit=int(over),
    )


def _session_rules(
    policy: SecurityPolicy, moment: datetime
) -> dict[str, sa.ColumnElement[bool]]:
    """The pipeline's idle timeout, forced re-login and MFA rule, as SQL.
    Each limit is reached at the exact second it names, as in policies/."""
    rules: dict[str, sa.ColumnElement[bool]] = {}
    if policy.idle_timeout_seconds:
        cutoff = moment - timedelta(seconds=policy.idle_timeout_seconds)
        rules["idle"] = Session.last_seen_at <= cutoff
    if policy.relogin_days:
        cutoff = moment - timedelta(days=policy.relogin_days)
        rules["relogin"] = Session.authenticated_at <= cutoff
    if policy.mfa_mode != "off":
        # As policies.mfa.session_has_mfa: the MFA time alone counts.
        conditions = [Session.mfa_at.is_(None)]
        if policy.mfa_mode == "force_except_sso":
            conditions.append(Session.sso_connection_id.is_(None))
        rules["mfa"] = sa.and_(*conditions)
    return rules


def _mfa_counts(workspace_id: uuid.UUID) -> tuple[int, int, int]:
    """(active members without MFA, admins among them, active members)."""
    lacking = sa.not_(has_mfa_clause())
    row = db.session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(sa.case((lacking, 1), else_=0)), 0),
            sa.func.coalesce(
                sa.func.sum(
                    sa.case((sa.and_(lacking, User.role == "admin"), 1), else_=0)
                ),
                0,
            ),
            sa.func.count(),
        ).where(User.workspace_id == workspace_id, User.status == "active")
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def _inactivity_counts(workspace_id: uuid.UUID, moment: datetime) -> tuple[int, int]:
    """(active members not seen for 90 days, invitations pending 30 days),
    each counted from the exact second the period is reached."""
    seen = sa.func.coalesce(User.last_seen_at, User.joined_at, User.created_at)
    inactive = sa.and_(User.status == "active", seen <= moment - INACTIVE_AFTER)
    stale = sa.and_(
        User.status == "invited", User.created_at <= moment - STALE_INVITATION_AFTER
    )
    row = db.session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(sa.case((inactive, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((stale, 1), else_=0)), 0),
        ).where(User.workspace_id == workspace_id)
    ).one()
    return int(row[0]), int(row[1])


def _count(
    model: type[IpAllowEntry | DomainAllowEntry], workspace_id: uuid.UUID
) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(model)
            .where(model.workspace_id == workspace_id)
        )
        or 0
    )


def _warnings(
    policy: SecurityPolicy, admins_without_mfa: int, inactive: int, stale: int
) -> tuple[Vulnerability, ...]:
    found: list[Vulnerability] = []
    if policy.mfa_mode == "off":
        found.append(
            Vulnerability(
                "mfa_not_forced",
                "MFA is not forced: members can sign in with a password alone.",
                "force-mfa",
            )
        )
    if admins_without_mfa:
        found.append(
            Vulnerability(
                "admins_without_mfa",
                f"{_count_of(admins_without_mfa, 'admin has', 'admins have')} no MFA.",
                "force-mfa",
            )
        )
    if not policy.ip_restriction_enabled:
        found.append(
            Vulnerability(
                "no_ip_restriction",
                "No IP restriction: members can sign in from any network.",
                "ip-restrictions",
            )
        )
    if not policy.idle_timeout_seconds:
        found.append(
            Vulnerability(
                "no_idle_timeout",
                "No idle session timeout: a forgotten session stays open.",
                "idle-timeout",
            )
        )
    if not policy.relogin_days:
        found.append(
            Vulnerability(
                "no_relogin",
                "No forced re-login: a session lasts until its "
                f"{settings()['sessions']['absolute_lifetime_days']}-day limit.",
                "force-relogin",
            )
        )
    if not policy.max_sessions:
        found.append(
            Vulnerability(
                "no_session_limit",
                "No limit on concurrent sessions per member.",
                "max-sessions",
            )
        )
    if not policy.domain_restriction_enabled:
        found.append(
            Vulnerability(
                "no_domain_restriction",
                "No domain restriction: anyone can be invited, whatever their "
                "email domain.",
                "domain-restrictions",
            )
        )
    if inactive:
        found.append(
            Vulnerability(
                "inactive_members",
                f"{_count_of(inactive, 'member has', 'members have')} not been "
                "seen for 90 days.",
                "users",
            )
        )
    if stale:
        found.append(
            Vulnerability(
                "stale_invitations",
                f"{_count_of(stale, 'invitation has', 'invitations have')} been "
                "pending for 30 days or more.",
                "users",
            )
        )
    return tuple(found)


def _count_of(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def session_loses_access(session: Session, mode: str) -> bool:
    """Whether forcing MFA in ``mode`` ends this session at its next request."""
    facts = policies.PolicyContext(
        now=now(),
        user=None,
        session=session_facts(session),
        policy=policies.WorkspacePolicy(mfa_mode=mode),  # type: ignore[arg-type]
    )
    return mode != "off" and not policies.session_has_mfa(facts)

"""The workspace's security policy as the pipeline sees it, and the facts
about a member that the pipeline needs."""

from __future__ import annotations

import ipaddress
import uuid

import sqlalchemy as sa

import policies
from idp.db import db
from idp.models import IpAllowEntry, SecurityPolicy, User


def policy_facts(row: SecurityPolicy | None) -> policies.WorkspacePolicy:
    """The pipeline's view of one workspace's settings. Reads the IP
    allow-list only when the restriction is on."""
    if row is None:
        return policies.WorkspacePolicy()
    allowlist = None
    if row.ip_restriction_enabled:
        allowlist = tuple(
            ipaddress.ip_network(network, strict=False)
            for network in db.session.scalars(
                sa.select(IpAllowEntry.network).where(
                    IpAllowEntry.workspace_id == row.workspace_id
                )
            )
        )
    return policies.WorkspacePolicy(
        mfa_mode=row.mfa_mode,  # type: ignore[arg-type]
        idle_timeout_seconds=row.idle_timeout_seconds,
        max_sessions=row.max_sessions,
        relogin_days=row.relogin_days,
        ip_allowlist=allowlist,
    )


def load_policy(workspace_id: uuid.UUID) -> policies.WorkspacePolicy:
    return policy_facts(db.session.get(SecurityPolicy, workspace_id))


def user_has_mfa(user: User) -> bool:
    """Whether the member has a second factor or a passkey. No factor can be
    enrolled before the MFA issue lands, so nobody has one yet."""
    return False


def user_facts(
    user: User | None, *, with_mfa: bool = False
) -> policies.UserFacts | None:
    if user is None:
        return None
    return policies.UserFacts(
        id=str(user.id),
        role=user.role,
        status=user.status,
        has_mfa=user_has_mfa(user) if with_mfa else False,
    )

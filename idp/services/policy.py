"""The workspace's security policy as the pipeline sees it, and the facts
about a member that the pipeline needs."""

from __future__ import annotations

import functools
import ipaddress
import logging
import uuid
from typing import Any

import sqlalchemy as sa

import policies
from idp.db import db
from idp.models import IpAllowEntry, SecurityPolicy, User

log = logging.getLogger(__name__)


def policy_facts(row: SecurityPolicy | None) -> policies.WorkspacePolicy:
    """The pipeline's view of one workspace's settings. Reads the IP
    allow-list only when the restriction is on."""
    if row is None:
        return policies.WorkspacePolicy()
    return policy_from_values(
        row.workspace_id,
        mfa_mode=row.mfa_mode,
        idle_timeout_seconds=row.idle_timeout_seconds,
        max_sessions=row.max_sessions,
        relogin_days=row.relogin_days,
        ip_restriction_enabled=row.ip_restriction_enabled,
    )


# Built once: the gateway runs it on every check of an allow-listed workspace.
_ALLOWLIST = sa.select(IpAllowEntry.network).where(
    IpAllowEntry.workspace_id == sa.bindparam("workspace_id")
)


def allow_entries_of(workspace_id: Any) -> sa.ScalarSelect[str]:
    """The workspace's allow-list as one column, entries joined by commas
    (an address or range never holds one), for a query that reads the
    policy with it. The separator is SQL text, not a parameter, so the
    cached statement is reused as it is on every execution."""
    return (
        sa.select(
            sa.func.coalesce(
                sa.func.aggregate_strings(
                    IpAllowEntry.network, sa.literal_column("','")
                ),
                "",
            )
        )
        .where(IpAllowEntry.workspace_id == workspace_id)
        .scalar_subquery()
    )


def policy_from_values(
    workspace_id: uuid.UUID,
    *,
    mfa_mode: str | None,
    idle_timeout_seconds: int | None,
    max_sessions: int | None,
    relogin_days: int | None,
    ip_restriction_enabled: bool | None,
    allow_entries: str | None = None,
) -> policies.WorkspacePolicy:
    """The same from the policy's columns (a workspace without a policy row
    has every column None: nothing is on). ``allow_entries``: the allow-list
    already read with them, as ``allow_entries_of`` gives it."""
    allowlist = None
    if ip_restriction_enabled:
        if allow_entries is not None:
            entries = allow_entries.split(",") if allow_entries else []
        else:
            entries = [
                entry
                for (entry,) in db.session.connection().execute(
                    _ALLOWLIST, {"workspace_id": workspace_id}
                )
            ]
        allowlist = _networks(tuple(sorted(entries)))
    return policies.WorkspacePolicy(
        mfa_mode=mfa_mode or "off",  # type: ignore[arg-type]
        idle_timeout_seconds=idle_timeout_seconds,
        max_sessions=max_sessions,
        relogin_days=relogin_days,
        ip_allowlist=allowlist,
    )


@functools.lru_cache(maxsize=1024)
def _networks(entries: tuple[str, ...]) -> tuple[policies.IPNetwork, ...]:
    """The stored entries as ranges. One that no longer parses (written by
    hand, or by an older version) is left out and logged: the list then
    allows less, never more, and no request fails with a 500 over it.
    Cached by the entries themselves, so an edited list is parsed afresh
    and only the parsing, never the list, is remembered."""
    networks: list[policies.IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.error("policy.bad_ip_entry entry=%r", entry[:64])
    return tuple(networks)


def load_policy(workspace_id: uuid.UUID) -> policies.WorkspacePolicy:
    return policy_facts(db.session.get(SecurityPolicy, workspace_id))


def user_has_mfa(user: User) -> bool:
    """Whether the member has a second factor or a passkey."""
    from idp.services import mfa

    return mfa.user_has_mfa(user)


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

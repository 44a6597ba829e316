from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# "sign_in": after the first factor, before a session exists.
# "check": a request that carries a session (portal page or gateway check).
Stage = Literal["sign_in", "check"]


@dataclass(frozen=True)
class UserFacts:
    id: str
    role: str
    # "invited" | "active" | "disabled"; a deleted user has no facts at all.
    status: str
    # At least one second factor, or a passkey.
    has_mfa: bool = False


@dataclass(frozen=True)
class SessionFacts:
    """The session being checked, or at sign-in the one about to be issued."""

    created_at: datetime
    authenticated_at: datetime
    last_seen_at: datetime
    mfa_at: datetime | None = None
    amr: tuple[str, ...] = ()
    # Signed in through the workspace's enterprise SSO connection.
    via_sso: bool = False


@dataclass(frozen=True)
class WorkspacePolicy:
    """The workspace's Security tab, as plain values; None means off."""

    mfa_mode: Literal["off", "force", "force_except_sso"] = "off"
    idle_timeout_seconds: int | None = None
    max_sessions: int | None = None
    relogin_days: int | None = None
    # None: no IP restriction. A tuple, even empty, is the whole allow-list.
    ip_allowlist: tuple[IPNetwork, ...] | None = None


@dataclass(frozen=True)
class PolicyContext:
    now: datetime
    user: UserFacts | None
    stage: Stage = "check"
    session: SessionFacts | None = None
    # Resolved client address in canonical form; None when it is unknown.
    client_ip: str | None = None
    host: str | None = None
    path: str | None = None
    method: str | None = None
    policy: WorkspacePolicy = field(default_factory=WorkspacePolicy)
    # At sign-in: the member's live sessions, oldest first, by id.
    open_sessions: tuple[str, ...] = ()

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class UserFacts:
    id: str
    role: str
    # "invited" | "active" | "disabled"; a deleted user has no facts at all.
    status: str
    has_mfa: bool = False


@dataclass(frozen=True)
class SessionFacts:
    created_at: datetime
    authenticated_at: datetime
    last_seen_at: datetime
    mfa_at: datetime | None = None
    amr: tuple[str, ...] = ()
    via_sso: bool = False


@dataclass(frozen=True)
class WorkspacePolicy:
    """The workspace's Security tab, as plain values."""

    mfa_mode: str = "off"
    idle_timeout_seconds: int | None = None
    max_sessions: int | None = None
    relogin_days: int | None = None


@dataclass(frozen=True)
class PolicyContext:
    now: datetime
    user: UserFacts | None
    session: SessionFacts | None = None
    client_ip: str | None = None
    host: str | None = None
    path: str | None = None
    method: str | None = None
    policy: WorkspacePolicy = field(default_factory=WorkspacePolicy)

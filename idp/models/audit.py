from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, BigIntId, UTCDateTime, utcnow


class AuditEvent(Base):
    """One thing that happened. Append-only; labels outlive what they name.

    ``workspace_id`` is empty only for installation-level events, such as a
    failed sign-in for an email that belongs to no workspace.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        # Keyset pagination, newest first, within a workspace.
        sa.Index("ix_audit_events_workspace_id_id", "workspace_id", "id"),
        sa.Index(
            "ix_audit_events_workspace_id_occurred_at", "workspace_id", "occurred_at"
        ),
        sa.Index(
            "ix_audit_events_workspace_id_action_id", "workspace_id", "action", "id"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # "user" | "system" | "anonymous" | "operator"
    actor_type: Mapped[str] = mapped_column(sa.String(20))
    actor_id: Mapped[str | None] = mapped_column(sa.String(64))
    actor_label: Mapped[str] = mapped_column(sa.String(320), default="")
    action: Mapped[str] = mapped_column(sa.String(64))
    target_type: Mapped[str | None] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(sa.String(64))
    target_label: Mapped[str] = mapped_column(sa.String(320), default="")
    # "success" | "failure" | "denied"
    outcome: Mapped[str] = mapped_column(sa.String(20))
    reason: Mapped[str | None] = mapped_column(sa.String(64))
    client_ip: Mapped[str | None] = mapped_column(sa.String(45))
    peer_ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)

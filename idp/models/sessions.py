from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, UTCDateTime, new_id, utcnow
from idp.models.users import User


class Session(Base):
    """A signed-in browser. The cookie carries a token; only its hash is kept."""

    __tablename__ = "sessions"
    __table_args__ = (sa.Index("ix_sessions_user_active", "user_id", "revoked_at"),)

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    authenticated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mfa_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the member last typed the password again to change a sign-in
    # method (a "recent sign-in" without signing in anew).
    reauthenticated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Authentication methods references (RFC 8176), such as ["pwd"].
    amr: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    sso_connection_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(sa.String(40))

    user: Mapped[User] = relationship()


class LoginThrottle(Base):
    """Consecutive failed sign-ins per email as typed, known or not."""

    __tablename__ = "login_throttle"

    email: Mapped[str] = mapped_column(sa.String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, UTCDateTime, new_id, utcnow

ROLES = ("admin", "read_only")
STATUSES = ("invited", "active", "disabled")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "email"),
        sa.UniqueConstraint("workspace_id", "username_key"),
        sa.UniqueConstraint("workspace_id", "scim_external_id"),
        sa.CheckConstraint("role IN ('admin', 'read_only')", name="role"),
        sa.CheckConstraint(
            "status IN ('invited', 'active', 'disabled')", name="status"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    # Normalised: trimmed, lower-cased, one trailing dot dropped from the domain.
    email: Mapped[str] = mapped_column(sa.String(320), index=True)
    full_name: Mapped[str] = mapped_column(sa.String(200), default="")
    username: Mapped[str | None] = mapped_column(sa.String(64))
    # Lower-cased username, so uniqueness ignores case.
    username_key: Mapped[str | None] = mapped_column(sa.String(64))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    job_title: Mapped[str | None] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(20), default="read_only")
    status: Mapped[str] = mapped_column(sa.String(20), default="invited")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_signin_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Filled by enterprise SSO and SCIM provisioning.
    sso_subject: Mapped[str | None] = mapped_column(sa.String(255))
    scim_external_id: Mapped[str | None] = mapped_column(sa.String(255))

    invitation: Mapped[Invitation | None] = relationship(
        back_populates="user",
        uselist=False,
        cascade="all, delete-orphan",
        passive_deletes=True,
        foreign_keys="Invitation.user_id",
    )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def display_name(self) -> str:
        return self.full_name or self.email


class Invitation(Base):
    """The pending invitation (or first-admin set-up link) of an invited user."""

    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    inviter_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    inviter_label: Mapped[str] = mapped_column(sa.String(320), default="")
    # "pending" | "sent" | "failed" | "outbox"
    send_status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    send_error: Mapped[str | None] = mapped_column(sa.String(500))

    user: Mapped[User] = relationship(
        back_populates="invitation", foreign_keys=[user_id]
    )


class EmailToken(Base):
    """A single-use link sent by mail: password reset or email change."""

    __tablename__ = "email_tokens"
    __table_args__ = (
        sa.CheckConstraint(
            "purpose IN ('password_reset', 'email_change')", name="purpose"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(sa.String(20))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    new_email: Mapped[str | None] = mapped_column(sa.String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

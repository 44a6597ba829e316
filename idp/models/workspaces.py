from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, UTCDateTime, new_id, utcnow


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(sa.String(63), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    policy: Mapped[SecurityPolicy] = relationship(
        back_populates="workspace", uselist=False, cascade="all, delete-orphan"
    )


class SecurityPolicy(Base):
    """The workspace-wide security settings of the Security tab."""

    __tablename__ = "security_policies"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    # "off" | "force" | "force_except_sso"
    mfa_mode: Mapped[str] = mapped_column(sa.String(20), default="off")
    idle_timeout_seconds: Mapped[int | None] = mapped_column(sa.Integer)
    max_sessions: Mapped[int | None] = mapped_column(sa.Integer)
    relogin_days: Mapped[int | None] = mapped_column(sa.Integer)
    ip_restriction_enabled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    domain_restriction_enabled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    workspace: Mapped[Workspace] = relationship(back_populates="policy")


class IpAllowEntry(Base):
    __tablename__ = "ip_allow_entries"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    network: Mapped[str] = mapped_column(sa.String(64))
    description: Mapped[str] = mapped_column(sa.String(200), default="")


class DomainAllowEntry(Base):
    __tablename__ = "domain_allow_entries"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "domain"),)

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    domain: Mapped[str] = mapped_column(sa.String(253))
    include_subdomains: Mapped[bool] = mapped_column(sa.Boolean, default=False)

"""Second factors and passkeys: an authenticator app (TOTP), WebAuthn
credentials, recovery codes, and the single-use WebAuthn challenges."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, UTCDateTime, new_id, utcnow

WEBAUTHN_KINDS = ("passkey", "security_key")


class TotpSecret(Base):
    """A member's authenticator app. One per member; a row without
    ``confirmed_at`` is a set-up waiting for its first code."""

    __tablename__ = "totp_secrets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    # The base32 secret, encrypted with the installation's encryption key.
    secret_encrypted: Mapped[str] = mapped_column(sa.String(512))
    # The time step of the last accepted code: a code for it or an earlier
    # step is refused, so each code works once (MFA-1).
    last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebAuthnCredential(Base):
    """A passkey (discoverable, user-verifying; signs in without a password)
    or a security key (a second factor after the password)."""

    __tablename__ = "webauthn_credentials"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('passkey', 'security_key')", name="kind"),
        sa.Index("ix_webauthn_credentials_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(sa.String(20))
    # Registered to one account across the whole installation.
    credential_id: Mapped[bytes] = mapped_column(sa.LargeBinary(1023), unique=True)
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary(2048))
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    aaguid: Mapped[str | None] = mapped_column(sa.String(36))
    backed_up: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    name: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    """One single-use recovery code, kept as an HMAC keyed with the
    installation's secret key (services.mfa.recovery.digests)."""

    __tablename__ = "recovery_codes"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebAuthnChallenge(Base):
    """A challenge handed to the browser for one ceremony. Kept on the
    server so that every instance can check it and it is used at most once:
    verifying deletes the row, and a second use finds nothing."""

    __tablename__ = "webauthn_challenges"
    __table_args__ = (
        sa.CheckConstraint(
            "purpose IN ('register_passkey', 'register_security_key', 'authenticate')",
            name="purpose",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    # None for a passkey sign-in, where the account is not known yet.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(sa.String(32))
    # Looked up by value when the browser answers.
    challenge: Mapped[bytes] = mapped_column(sa.LargeBinary(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

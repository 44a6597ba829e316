"""Enterprise SSO: a workspace's connection to its company IdP, the email
domains that route to it, the identities it vouches for, the sign-ins it
has outstanding, and the SAML assertions already used."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, UTCDateTime, new_id, utcnow
from idp.models.users import User

PROTOCOLS = ("saml", "oidc")


class SsoConnection(Base):
    """One per workspace: SAML 2.0 or OpenID Connect, with the rules that
    turn what the IdP says into an account."""

    __tablename__ = "sso_connections"
    __table_args__ = (
        sa.CheckConstraint("protocol IN ('saml', 'oidc')", name="protocol"),
        sa.CheckConstraint(
            "default_role IN ('admin', 'read_only')", name="default_role"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), unique=True
    )
    protocol: Mapped[str] = mapped_column(sa.String(8))
    # Off: the domains do not route to it and its endpoints refuse.
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    # Members in its verified domains cannot sign in with a password
    # (admins keep the break-glass path, see README).
    require_sso: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # Create the account at its first sign-in (in a verified domain).
    jit_enabled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    default_role: Mapped[str] = mapped_column(sa.String(20), default="read_only")
    # [{"group": "portcullis-admins", "role": "admin"}, ...]; empty: roles
    # are the admins' to set, the IdP's groups change nothing.
    group_roles: Mapped[list[dict[str, str]]] = mapped_column(sa.JSON, default=list)
    # Attribute (SAML) or claim (OIDC) names per field; a field left out
    # uses the usual names (see connectors.saml.DEFAULT_ATTRIBUTES).
    attribute_map: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # SAML: the IdP as its metadata (or the admin) describes it.
    saml_entity_id: Mapped[str | None] = mapped_column(sa.String(1024))
    saml_sso_url: Mapped[str | None] = mapped_column(sa.String(2048))
    # PEM certificates, at most two (a rollover in progress).
    saml_certificates: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    saml_metadata_url: Mapped[str | None] = mapped_column(sa.String(2048))
    saml_metadata_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    saml_idp_initiated: Mapped[bool] = mapped_column(sa.Boolean, default=False)

    # OIDC: discovery by issuer, the client we are at the IdP.
    oidc_issuer: Mapped[str | None] = mapped_column(sa.String(1024))
    oidc_client_id: Mapped[str | None] = mapped_column(sa.String(512))
    # Fernet token (keys/ encryption key); never shown again once saved.
    oidc_client_secret: Mapped[str | None] = mapped_column(sa.Text)
    oidc_scopes: Mapped[str] = mapped_column(
        sa.String(512), default="openid email profile"
    )
    # Entra ID multi-tenant issuers: the tenant ids the admin allowed.
    oidc_allowed_tenants: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # Cached discovery document and JWKS, with when they were fetched.
    oidc_discovery: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    oidc_jwks: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    oidc_jwks_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    domains: Mapped[list[SsoDomain]] = relationship(
        back_populates="connection",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="SsoDomain.domain",
    )


class SsoDomain(Base):
    """An email domain a workspace claims for its connection. The claim
    routes sign-ins only once verified (DNS TXT record, or the operator),
    and a domain is verified for one workspace in the whole installation."""

    __tablename__ = "sso_domains"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "domain"),
        sa.Index(
            "uq_sso_domains_verified_domain",
            "domain",
            unique=True,
            sqlite_where=sa.text("verified_at IS NOT NULL"),
            postgresql_where=sa.text("verified_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("sso_connections.id", ondelete="CASCADE"), index=True
    )
    # Lower-case, IDNA (punycode) form, no trailing dot.
    domain: Mapped[str] = mapped_column(sa.String(253), index=True)
    # The value of the TXT record we ask for at _portcullis.<domain>.
    verification_token: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "dns" | "operator"
    verified_by: Mapped[str | None] = mapped_column(sa.String(20))

    connection: Mapped[SsoConnection] = relationship(back_populates="domains")


class FederatedIdentity(Base):
    """Who the IdP says a member is: keyed by connection and subject, never
    by email, so one IdP cannot claim another's member."""

    __tablename__ = "federated_identities"
    __table_args__ = (sa.UniqueConstraint("connection_id", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("sso_connections.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    subject: Mapped[str] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_signin_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class SsoRequest(Base):
    """A sign-in (or a *Test connection*) sent to the IdP and not yet
    answered: the SAML AuthnRequest id or the OIDC state. Usable once, by
    the browser it was begun in (``binding_hash``: the hash of that
    browser's SSO cookie), until it expires."""

    __tablename__ = "sso_requests"

    # SAML: the AuthnRequest ID; OIDC: the state.
    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("sso_connections.id", ondelete="CASCADE")
    )
    protocol: Mapped[str] = mapped_column(sa.String(8))
    # "signin" | "test"
    purpose: Mapped[str] = mapped_column(sa.String(8), default="signin")
    binding_hash: Mapped[str] = mapped_column(sa.String(64))
    return_to: Mapped[str | None] = mapped_column(sa.String(2048))
    # OIDC: the nonce sent and the PKCE verifier (Fernet-encrypted).
    nonce: Mapped[str | None] = mapped_column(sa.String(128))
    code_verifier: Mapped[str | None] = mapped_column(sa.Text)
    # The admin who began a *Test connection*.
    requested_by: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Set when a *Test connection* was answered: what the IdP sent, kept
    # for the admin's result page until read or expired.
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class SamlAssertionSeen(Base):
    """Assertion ids already consumed, until they expire: the replay cache
    every instance shares."""

    __tablename__ = "saml_assertions_seen"

    # Per workspace, not per connection: a connection removed and added
    # again with the same IdP keeps its memory.
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    assertion_id: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

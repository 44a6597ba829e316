"""Enterprise SSO: connections, domains, federated identities, outstanding
requests and the SAML replay cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import idp.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saml_assertions_seen",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("assertion_id", sa.String(length=256), nullable=False),
        sa.Column("expires_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_saml_assertions_seen_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "workspace_id", "assertion_id", name=op.f("pk_saml_assertions_seen")
        ),
    )
    with op.batch_alter_table("saml_assertions_seen", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_saml_assertions_seen_expires_at"),
            ["expires_at"],
            unique=False,
        )

    op.create_table(
        "sso_connections",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("require_sso", sa.Boolean(), nullable=False),
        sa.Column("jit_enabled", sa.Boolean(), nullable=False),
        sa.Column("default_role", sa.String(length=20), nullable=False),
        sa.Column("group_roles", sa.JSON(), nullable=False),
        sa.Column("attribute_map", sa.JSON(), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("saml_entity_id", sa.String(length=1024), nullable=True),
        sa.Column("saml_sso_url", sa.String(length=2048), nullable=True),
        sa.Column("saml_certificates", sa.JSON(), nullable=False),
        sa.Column("saml_metadata_url", sa.String(length=2048), nullable=True),
        sa.Column(
            "saml_metadata_valid_until",
            idp.db.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("saml_idp_initiated", sa.Boolean(), nullable=False),
        sa.Column("oidc_issuer", sa.String(length=1024), nullable=True),
        sa.Column("oidc_client_id", sa.String(length=512), nullable=True),
        sa.Column("oidc_client_secret", sa.Text(), nullable=True),
        sa.Column("oidc_scopes", sa.String(length=512), nullable=False),
        sa.Column("oidc_allowed_tenants", sa.JSON(), nullable=False),
        sa.Column("oidc_discovery", sa.JSON(), nullable=True),
        sa.Column("oidc_jwks", sa.JSON(), nullable=True),
        sa.Column(
            "oidc_jwks_fetched_at", idp.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.CheckConstraint(
            "default_role IN ('admin', 'read_only')",
            name=op.f("ck_sso_connections_default_role"),
        ),
        sa.CheckConstraint(
            "protocol IN ('saml', 'oidc')", name=op.f("ck_sso_connections_protocol")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_sso_connections_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_connections")),
        sa.UniqueConstraint(
            "workspace_id", name=op.f("uq_sso_connections_workspace_id")
        ),
    )
    op.create_table(
        "federated_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_signin_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["sso_connections.id"],
            name=op.f("fk_federated_identities_connection_id_sso_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_federated_identities_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_federated_identities_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_identities")),
        sa.UniqueConstraint(
            "connection_id",
            "subject",
            name=op.f("uq_federated_identities_connection_id_subject"),
        ),
    )
    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federated_identities_user_id"), ["user_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_federated_identities_workspace_id"),
            ["workspace_id"],
            unique=False,
        )

    op.create_table(
        "sso_domains",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("verification_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("verified_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("verified_by", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["sso_connections.id"],
            name=op.f("fk_sso_domains_connection_id_sso_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_sso_domains_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_domains")),
        sa.UniqueConstraint(
            "workspace_id", "domain", name=op.f("uq_sso_domains_workspace_id_domain")
        ),
    )
    with op.batch_alter_table("sso_domains", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sso_domains_connection_id"), ["connection_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sso_domains_domain"), ["domain"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sso_domains_workspace_id"), ["workspace_id"], unique=False
        )
        batch_op.create_index(
            "uq_sso_domains_verified_domain",
            ["domain"],
            unique=True,
            sqlite_where=sa.text("verified_at IS NOT NULL"),
            postgresql_where=sa.text("verified_at IS NOT NULL"),
        )

    op.create_table(
        "sso_requests",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("binding_hash", sa.String(length=64), nullable=False),
        sa.Column("return_to", sa.String(length=2048), nullable=True),
        sa.Column("nonce", sa.String(length=128), nullable=True),
        sa.Column("code_verifier", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("answered_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["sso_connections.id"],
            name=op.f("fk_sso_requests_connection_id_sso_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_sso_requests_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_requests")),
    )
    with op.batch_alter_table("sso_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sso_requests_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sso_requests_workspace_id"), ["workspace_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sso_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sso_requests_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_sso_requests_expires_at"))

    op.drop_table("sso_requests")
    with op.batch_alter_table("sso_domains", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_sso_domains_verified_domain",
            sqlite_where=sa.text("verified_at IS NOT NULL"),
            postgresql_where=sa.text("verified_at IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_sso_domains_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_sso_domains_domain"))
        batch_op.drop_index(batch_op.f("ix_sso_domains_connection_id"))

    op.drop_table("sso_domains")
    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federated_identities_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_federated_identities_user_id"))

    op.drop_table("federated_identities")
    op.drop_table("sso_connections")
    with op.batch_alter_table("saml_assertions_seen", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_saml_assertions_seen_expires_at"))

    op.drop_table("saml_assertions_seen")

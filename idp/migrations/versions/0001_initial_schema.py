"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Also the full-text index of the audit log (FTS5 trigram table on SQLite,
pg_trgm GIN index on PostgreSQL) and the guard that keeps audit events
append-only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import idp.db

# Frozen copies of idp.services.audit_query's search expressions, as they
# stood when this revision was written (a test keeps them equal).
PG_SEARCH_SQL = (
    "lower(coalesce(actor_label, '') || ' ' || action || ' ' || "
    "coalesce(target_label, '') || ' ' || coalesce(reason, '') || ' ' || "
    "coalesce(client_ip, ''))"
)
SQLITE_FTS_COLUMNS = "actor_label, action, target_label, reason, client_ip"

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("locked_until", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_login_throttle")),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint("slug", name=op.f("uq_workspaces_slug")),
    )
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workspace_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(length=20), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=True),
        sa.Column("actor_label", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("target_label", sa.String(length=320), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("client_ip", sa.String(length=45), nullable=True),
        sa.Column("peer_ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_audit_events_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_workspace_id_action_id",
            ["workspace_id", "action", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_audit_events_workspace_id_id", ["workspace_id", "id"], unique=False
        )
        batch_op.create_index(
            "ix_audit_events_workspace_id_occurred_at",
            ["workspace_id", "occurred_at"],
            unique=False,
        )

    op.create_table(
        "domain_allow_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("include_subdomains", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_domain_allow_entries_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domain_allow_entries")),
        sa.UniqueConstraint(
            "workspace_id",
            "domain",
            name=op.f("uq_domain_allow_entries_workspace_id_domain"),
        ),
    )
    op.create_table(
        "ip_allow_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_ip_allow_entries_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_allow_entries")),
    )
    with op.batch_alter_table("ip_allow_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ip_allow_entries_workspace_id"),
            ["workspace_id"],
            unique=False,
        )

    op.create_table(
        "security_policies",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("mfa_mode", sa.String(length=20), nullable=False),
        sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("max_sessions", sa.Integer(), nullable=True),
        sa.Column("relogin_days", sa.Integer(), nullable=True),
        sa.Column("ip_restriction_enabled", sa.Boolean(), nullable=False),
        sa.Column("domain_restriction_enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_security_policies_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_security_policies")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("username_key", sa.String(length=64), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("job_title", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("joined_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_signin_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column(
            "password_changed_at", idp.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("sso_subject", sa.String(length=255), nullable=True),
        sa.Column("scim_external_id", sa.String(length=255), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'read_only')", name=op.f("ck_users_role")
        ),
        sa.CheckConstraint(
            "status IN ('invited', 'active', 'disabled')", name=op.f("ck_users_status")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_users_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint(
            "workspace_id", "email", name=op.f("uq_users_workspace_id_email")
        ),
        sa.UniqueConstraint(
            "workspace_id",
            "scim_external_id",
            name=op.f("uq_users_workspace_id_scim_external_id"),
        ),
        sa.UniqueConstraint(
            "workspace_id",
            "username_key",
            name=op.f("uq_users_workspace_id_username_key"),
        ),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_users_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "email_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=True),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "purpose IN ('password_reset', 'email_change')",
            name=op.f("ck_email_tokens_purpose"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_email_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_email_tokens_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_email_tokens_token_hash")),
    )
    with op.batch_alter_table("email_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_email_tokens_user_id"), ["user_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_email_tokens_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("inviter_id", sa.Uuid(), nullable=True),
        sa.Column("inviter_label", sa.String(length=320), nullable=False),
        sa.Column("send_status", sa.String(length=20), nullable=False),
        sa.Column("send_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["inviter_id"],
            ["users.id"],
            name=op.f("fk_invitations_inviter_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_invitations_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_invitations_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
        sa.UniqueConstraint("user_id", name=op.f("uq_invitations_user_id")),
    )
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invitations_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "authenticated_at", idp.db.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("mfa_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("amr", sa.JSON(), nullable=False),
        sa.Column("last_seen_at", idp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("sso_connection_id", sa.Uuid(), nullable=True),
        sa.Column("revoked_at", idp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_sessions_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sessions_token_hash")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sessions_user_active", ["user_id", "revoked_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sessions_workspace_id"), ["workspace_id"], unique=False
        )
    _audit_search_and_guard()


def _audit_search_and_guard() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE VIRTUAL TABLE audit_fts USING fts5({SQLITE_FTS_COLUMNS}, "
            "content='audit_events', content_rowid='id', tokenize='trigram')"
        )
        op.execute(
            "CREATE TRIGGER audit_events_fts AFTER INSERT ON audit_events BEGIN "
            f"INSERT INTO audit_fts(rowid, {SQLITE_FTS_COLUMNS}) VALUES (new.id, "
            "new.actor_label, new.action, new.target_label, new.reason, new.client_ip); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_fts_delete AFTER DELETE ON audit_events BEGIN "
            f"INSERT INTO audit_fts(audit_fts, rowid, {SQLITE_FTS_COLUMNS}) VALUES ('delete', "
            "old.id, old.actor_label, old.action, old.target_label, old.reason, old.client_ip); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events BEGIN "
            "SELECT RAISE(ABORT, 'audit events are append-only'); END"
        )
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX ix_audit_events_search ON audit_events "
            f"USING gin (({PG_SEARCH_SQL}) gin_trgm_ops)"
        )
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS audit_fts")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_workspace_id"))
        batch_op.drop_index("ix_sessions_user_active")

    op.drop_table("sessions")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invitations_workspace_id"))

    op.drop_table("invitations")
    with op.batch_alter_table("email_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_email_tokens_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_email_tokens_user_id"))

    op.drop_table("email_tokens")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_users_email"))

    op.drop_table("users")
    op.drop_table("security_policies")
    with op.batch_alter_table("ip_allow_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ip_allow_entries_workspace_id"))

    op.drop_table("ip_allow_entries")
    op.drop_table("domain_allow_entries")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_workspace_id_occurred_at")
        batch_op.drop_index("ix_audit_events_workspace_id_id")
        batch_op.drop_index("ix_audit_events_workspace_id_action_id")

    op.drop_table("audit_events")
    op.drop_table("workspaces")
    op.drop_table("login_throttle")

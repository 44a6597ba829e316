"""The SSO tab's configuration: one connection per workspace, its options,
and the addresses we give the company's IT team to copy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.fernet import InvalidToken
from flask import current_app

from connectors.fetch import FetchRules
from idp.clock import now
from idp.db import db
from idp.models import SsoConnection, Workspace
from idp.models.users import ROLES
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Conflict, InvalidInput, NotFound
from idp.state import settings

MAX_GROUP_RULES = 50
MAX_GROUP_NAME = 256
ATTRIBUTE_FIELDS = ("email", "first_name", "last_name", "display_name", "groups")


def for_workspace(workspace_id: uuid.UUID) -> SsoConnection | None:
    return db.session.scalar(
        sa.select(SsoConnection).where(SsoConnection.workspace_id == workspace_id)
    )


def by_slug(slug: str, protocol: str) -> tuple[Workspace, SsoConnection]:
    """The workspace named in an SSO URL and its enabled connection of that
    protocol, or NotFound (the same answer whatever is missing)."""
    workspace = db.session.scalar(
        sa.select(Workspace).where(Workspace.slug == slug[:63])
    )
    connection = for_workspace(workspace.id) if workspace is not None else None
    if connection is None or connection.protocol != protocol or not connection.enabled:
        raise NotFound("No single sign-on is set up here.", code="sso_not_configured")
    return workspace, connection


def ensure(
    ctx: Context, workspace: Workspace, protocol: str
) -> tuple[SsoConnection, bool]:
    """The workspace's connection, created (not yet committed) if it has
    none; True when new. A connection of the other protocol must be removed
    first, since the identities it vouched for are its own."""
    connection = for_workspace(workspace.id)
    if connection is not None:
        if connection.protocol != protocol:
            raise Conflict(
                "This workspace is connected by "
                f"{'SAML' if connection.protocol == 'saml' else 'OpenID Connect'}. "
                "Remove that connection first.",
                code="sso_other_protocol",
            )
        return connection, False
    connection = SsoConnection(workspace_id=workspace.id, protocol=protocol)
    db.session.add(connection)
    return connection, True


@dataclass(frozen=True)
class Options:
    enabled: bool
    require_sso: bool
    jit_enabled: bool
    default_role: str
    group_roles: list[dict[str, str]]
    saml_idp_initiated: bool = False
    attribute_map: dict[str, str] | None = None


def parse_group_roles(text: str) -> list[dict[str, str]]:
    """``group = role`` lines, as the tab's text area sends them."""
    rules: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        group, sep, role = line.rpartition("=")
        group, role = group.strip(), role.strip().lower().replace(" ", "_")
        if not sep or not group:
            raise InvalidInput(
                f"Group mapping line {number}: write it as group = role.",
                code="sso_group_mapping_invalid",
            )
        if role in ("readonly", "read-only"):
            role = "read_only"
        if role not in ROLES:
            raise InvalidInput(
                f"Group mapping line {number}: the role must be Admin or Read Only.",
                code="sso_group_mapping_invalid",
            )
        if len(group) > MAX_GROUP_NAME or not group.isprintable():
            raise InvalidInput(
                f"Group mapping line {number}: the group name is too long or "
                "holds control characters.",
                code="sso_group_mapping_invalid",
            )
        rules.append({"group": group, "role": role})
    if len(rules) > MAX_GROUP_RULES:
        raise InvalidInput(
            f"At most {MAX_GROUP_RULES} group mappings.",
            code="sso_group_mapping_invalid",
        )
    return rules


def update_options(
    ctx: Context, workspace: Workspace, options: Options
) -> SsoConnection:
    connection = for_workspace(workspace.id)
    if connection is None:
        raise NotFound("Connect an IdP first.", code="sso_not_configured")
    if options.default_role not in ROLES:
        raise InvalidInput("Choose Admin or Read Only.", code="invalid_role")
    before = _options_of(connection)
    connection.enabled = options.enabled
    connection.require_sso = options.require_sso
    connection.jit_enabled = options.jit_enabled
    connection.default_role = options.default_role
    connection.group_roles = list(options.group_roles)
    if connection.protocol == "saml":
        connection.saml_idp_initiated = options.saml_idp_initiated
    if options.attribute_map is not None:
        unknown = set(options.attribute_map) - set(ATTRIBUTE_FIELDS)
        if unknown:
            raise InvalidInput("Unknown attribute field.", code="invalid_input")
        connection.attribute_map = {
            k: v.strip()[:256] for k, v in options.attribute_map.items() if v.strip()
        }
    after = _options_of(connection)
    changed = {k: after[k] for k in after if after[k] != before[k]}
    if changed:
        connection.updated_at = now()
        audit.record(
            ctx,
            "sso.options_changed",
            workspace_id=workspace.id,
            details={"changed": changed},
        )
    db.session.commit()
    return connection


def _options_of(connection: SsoConnection) -> dict[str, object]:
    return {
        "enabled": connection.enabled,
        "require_sso": connection.require_sso,
        "jit_enabled": connection.jit_enabled,
        "default_role": connection.default_role,
        "group_roles": list(connection.group_roles or []),
        "saml_idp_initiated": connection.saml_idp_initiated,
        "attribute_map": dict(connection.attribute_map or {}),
    }


def remove(ctx: Context, workspace: Workspace) -> None:
    """Remove the connection with its domains and the identities it linked
    (the members stay; they sign in with a password, or an admin resends
    them an invitation). Open sessions begun through it end."""
    from idp.models import Session
    from idp.services import sessions

    connection = for_workspace(workspace.id)
    if connection is None:
        raise NotFound("No single sign-on is set up here.", code="sso_not_configured")
    sessions.revoke_where(
        Session.sso_connection_id == connection.id, reason="sso_removed"
    )
    audit.record(
        ctx,
        "sso.connection_removed",
        workspace_id=workspace.id,
        details={"protocol": connection.protocol},
    )
    db.session.delete(connection)
    db.session.commit()


# Secrets at rest (the OIDC client secret): Fernet with the keys folder's
# encryption keys, like TOTP secrets.
def encrypt(secret: str) -> str:
    return (
        current_app.extensions["idp_keys"].encryption.encrypt(secret.encode()).decode()
    )


def decrypt(token: str) -> str:
    try:
        return (
            current_app.extensions["idp_keys"]
            .encryption.decrypt(token.encode())
            .decode()
        )
    except InvalidToken as exc:
        raise InvalidInput(
            "The stored client secret cannot be read with the current keys. "
            "Enter it again.",
            code="sso_secret_unreadable",
        ) from exc


# The addresses the company's IT team copies into its IdP.
def _base() -> str:
    return settings().public_url.rstrip("/")


def saml_entity_id(workspace: Workspace) -> str:
    return f"{_base()}/sso/saml/{workspace.slug}/metadata"


def saml_acs_url(workspace: Workspace) -> str:
    return f"{_base()}/sso/saml/{workspace.slug}/acs"


def oidc_redirect_uri(workspace: Workspace) -> str:
    return f"{_base()}/sso/oidc/{workspace.slug}/callback"


def fetch_rules() -> FetchRules:
    """The URL rules for what an IdP publishes (SECURITY.md 1.3.6): https to
    a public address, unless the operator allowed private addresses (an IdP
    on their own network, or the test suite's), which also allows http."""
    config = settings()["sso"]
    return FetchRules(
        timeout_seconds=float(config["fetch_timeout_seconds"]),
        max_bytes=int(config["fetch_max_bytes"]),
        allow_private=bool(config["allow_private_urls"]),
        allow_http=bool(config["allow_private_urls"]),
    )

"""What the SSO tab shows: our addresses to copy, the IdP as stored, each
form's values, the domains with their TXT records, a test's answer, and
what removing the connection would end."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from idp.clock import now
from idp.db import db
from idp.models import (
    FederatedIdentity,
    Session,
    SsoConnection,
    SsoDomain,
    User,
    Workspace,
)
from idp.services.sso import connections, domains

# A certificate this close to its end is flagged, so the rollover is
# planned before sign-ins stop.
EXPIRY_WARNING = timedelta(days=30)
ATTRIBUTE_LABELS = {
    "email": "Email",
    "first_name": "First name",
    "last_name": "Last name",
    "display_name": "Display name",
    "groups": "Groups",
}
ROLE_LABELS = {"admin": "Admin", "read_only": "Read Only"}


@dataclass(frozen=True)
class Copyable:
    key: str
    label: str
    value: str
    hint: str = ""


def our_values(workspace: Workspace) -> dict[str, list[Copyable]]:
    """The addresses the company's IT team enters in its IdP."""
    entity_id = connections.saml_entity_id(workspace)
    return {
        "saml": [
            Copyable(
                "saml-entity-id",
                "Entity ID",
                entity_id,
                "Also called Audience URI or Identifier.",
            ),
            Copyable(
                "saml-acs-url",
                "ACS URL",
                connections.saml_acs_url(workspace),
                "Also called Reply URL or Single sign-on URL; HTTP-POST binding.",
            ),
            Copyable(
                "saml-metadata-url",
                "Metadata URL",
                entity_id,
                "Our SP metadata, with our signing certificate.",
            ),
        ],
        "oidc": [
            Copyable(
                "oidc-redirect-uri",
                "Redirect URI",
                connections.oidc_redirect_uri(workspace),
                "Also called Callback URL or Sign-in redirect URI.",
            )
        ],
    }


@dataclass(frozen=True)
class Certificate:
    subject: str
    issuer: str
    not_before: datetime | None
    not_after: datetime | None
    fingerprint: str
    expired: bool
    expiring: bool
    readable: bool = True


def certificate(pem: str) -> Certificate:
    moment = now()
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
        return Certificate("(unreadable)", "", None, None, digest, False, False, False)
    after = cert.not_valid_after_utc
    return Certificate(
        subject=cert.subject.rfc4514_string() or "(empty subject)",
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=after,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        expired=after <= moment,
        expiring=moment < after <= moment + EXPIRY_WARNING,
    )


def idp_facts(connection: SsoConnection) -> dict[str, Any]:
    if connection.protocol == "saml":
        valid_until = connection.saml_metadata_valid_until
        return {
            "entity_id": connection.saml_entity_id,
            "sso_url": connection.saml_sso_url,
            "certificates": [
                certificate(p) for p in connection.saml_certificates or []
            ],
            "metadata_url": connection.saml_metadata_url,
            "valid_until": valid_until,
            "valid_until_passed": valid_until is not None and valid_until <= now(),
        }
    return {
        "issuer": connection.oidc_issuer,
        "client_id": connection.oidc_client_id,
        "secret_stored": bool(connection.oidc_client_secret),
        "scopes": connection.oidc_scopes,
        "allowed_tenants": list(connection.oidc_allowed_tenants or []),
        "discovered": bool(connection.oidc_discovery),
    }


def group_roles_text(rules: list[dict[str, str]]) -> str:
    return "\n".join(
        f"{rule['group']} = {ROLE_LABELS.get(rule['role'], rule['role'])}"
        for rule in rules
    )


def forms(
    connection: SsoConnection | None,
    section: str | None,
    posted: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Each form's values: what is stored, or what was just posted to the
    form that was refused (never a secret or a file)."""
    values: dict[str, dict[str, Any]] = {
        "saml": _saml_form(connection if _is(connection, "saml") else None),
        "oidc": _oidc_form(connection if _is(connection, "oidc") else None),
        "options": _options(connection),
        "domains": {"domain": ""},
    }
    if posted:
        key = posted.get("protocol") or section or ""
        if key in values:
            attributes = posted.get("attributes")
            values[key].update({k: v for k, v in posted.items() if k != "attributes"})
            if attributes:
                values[key].setdefault("attributes", {}).update(attributes)
    return values


def _is(connection: SsoConnection | None, protocol: str) -> bool:
    return connection is not None and connection.protocol == protocol


def _saml_form(connection: SsoConnection | None) -> dict[str, Any]:
    if connection is None:
        return {"source": "url"}
    certs = list(connection.saml_certificates or [])
    return {
        "source": "url" if connection.saml_metadata_url else "manual",
        "metadata_url": connection.saml_metadata_url or "",
        "entity_id": connection.saml_entity_id or "",
        "sso_url": connection.saml_sso_url or "",
        "certificate": certs[0] if certs else "",
        "certificate_next": certs[1] if len(certs) > 1 else "",
    }


def _oidc_form(connection: SsoConnection | None) -> dict[str, Any]:
    if connection is None:
        return {"scopes": "openid email profile"}
    return {
        "issuer": connection.oidc_issuer or "",
        "client_id": connection.oidc_client_id or "",
        "scopes": connection.oidc_scopes,
        "allowed_tenants": "\n".join(connection.oidc_allowed_tenants or []),
    }


def _options(connection: SsoConnection | None) -> dict[str, Any]:
    if connection is None:
        return {"attributes": {}}
    mapped = dict(connection.attribute_map or {})
    return {
        "enabled": connection.enabled,
        "require_sso": connection.require_sso,
        "jit_enabled": connection.jit_enabled,
        "default_role": connection.default_role,
        "group_roles": group_roles_text(list(connection.group_roles or [])),
        "saml_idp_initiated": connection.saml_idp_initiated,
        "attributes": {
            name: mapped.get(name, "") for name in connections.ATTRIBUTE_FIELDS
        },
    }


@dataclass(frozen=True)
class DomainRow:
    entry: SsoDomain
    record_name: str
    record_value: str

    @property
    def status(self) -> str:
        if self.entry.verified_at is None:
            return "Pending"
        return (
            "Verified by DNS"
            if self.entry.verified_by == "dns"
            else "Verified by the operator"
        )


def domain_rows(connection: SsoConnection) -> list[DomainRow]:
    entries = db.session.scalars(
        sa.select(SsoDomain)
        .where(SsoDomain.connection_id == connection.id)
        .order_by(SsoDomain.domain)
    )
    return [
        DomainRow(e, domains.record_name(e), domains.record_value(e)) for e in entries
    ]


# ID-token claims that are Unix times (RFC 7519, OIDC Core 2).
TIME_CLAIMS = frozenset({"iat", "exp", "nbf", "auth_time", "updated_at"})


def received_rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The attributes a test received, as name and values, by name; a time
    claim also as the UTC time it stands for."""
    received = result.get("received") or {}
    if not isinstance(received, dict):
        return []
    return sorted(
        (
            str(name),
            [
                _readable(str(name), str(v))
                for v in (values if isinstance(values, list) else [values])
            ],
        )
        for name, values in received.items()
    )


def _readable(name: str, value: str) -> str:
    if name not in TIME_CLAIMS or not value.isdigit() or len(value) > 12:
        return value
    moment = datetime.fromtimestamp(int(value), UTC)
    return f"{value} ({moment:%Y-%m-%d %H:%M:%S} UTC)"


@dataclass(frozen=True)
class Impact:
    linked: int
    without_password: int
    sessions: int
    own_session: bool


def removal_impact(connection: SsoConnection, current: Session | None) -> Impact:
    linked = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(FederatedIdentity)
        .where(FederatedIdentity.connection_id == connection.id)
    )
    without_password = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(FederatedIdentity)
        .join(User, User.id == FederatedIdentity.user_id)
        .where(
            FederatedIdentity.connection_id == connection.id,
            User.password_hash.is_(None),
        )
    )
    open_sessions = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Session)
        .where(Session.sso_connection_id == connection.id, Session.revoked_at.is_(None))
    )
    return Impact(
        linked=linked or 0,
        without_password=without_password or 0,
        sessions=open_sessions or 0,
        own_session=current is not None and current.sso_connection_id == connection.id,
    )


def connection_label(connection: SsoConnection) -> str:
    return "SAML 2.0" if connection.protocol == "saml" else "OpenID Connect"

"""Helpers the SSO tab, home-realm discovery and `idp domain` tests share:
connections and domains written straight to the database, certificates
made on the spot, and a stub DNS resolver."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from idp.db import db
from idp.models import AuditEvent, SsoConnection, SsoDomain

# What an OIDC connection keeps of its IdP's discovery: enough to send a
# browser there without reaching it.
ISSUER = "https://login.idp.example"
DISCOVERY = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "jwks_uri": f"{ISSUER}/jwks",
    "response_types_supported": ["code"],
    "id_token_signing_alg_values_supported": ["RS256"],
}


def certificate_pem(
    common_name: str, *, not_before: datetime, not_after: datetime
) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fresh_certificate(common_name: str = "idp.example") -> str:
    moment = datetime.now(UTC)
    return certificate_pem(
        common_name,
        not_before=moment - timedelta(days=1),
        not_after=moment + timedelta(days=365),
    )


def add_connection(app, workspace, protocol: str = "saml", **fields: Any) -> uuid.UUID:  # type: ignore[no-untyped-def]
    """A connection as the tab would leave it, written directly."""
    values: dict[str, Any] = {"enabled": True}
    if protocol == "saml":
        values.update(
            saml_entity_id="https://idp.example/entity",
            saml_sso_url="https://idp.example/sso",
            saml_certificates=[fresh_certificate()],
        )
    else:
        values.update(
            oidc_issuer=ISSUER,
            oidc_client_id="portcullis-client",
            oidc_discovery=dict(DISCOVERY),
            oidc_jwks={"keys": []},
        )
    values.update(fields)
    with app.app_context():
        if protocol == "oidc" and "oidc_client_secret" not in fields:
            sealed = app.extensions["idp_keys"].encryption.encrypt(b"client secret")
            values["oidc_client_secret"] = sealed.decode()
        connection = SsoConnection(
            workspace_id=workspace.id, protocol=protocol, **values
        )
        db.session.add(connection)
        db.session.commit()
        return connection.id


def add_domain(app, workspace, domain: str, *, verified_by: str | None = None):  # type: ignore[no-untyped-def]
    with app.app_context():
        connection = db.session.scalar(
            sa.select(SsoConnection).where(SsoConnection.workspace_id == workspace.id)
        )
        entry = SsoDomain(
            workspace_id=workspace.id,
            connection_id=connection.id,
            domain=domain,
            verification_token=f"token-{uuid.uuid4().hex[:12]}",
            verified_at=datetime.now(UTC) if verified_by else None,
            verified_by=verified_by,
        )
        db.session.add(entry)
        db.session.commit()
        db.session.refresh(entry)
        db.session.expunge(entry)
        return entry


def set_connection(app, workspace, **fields: Any) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        connection = db.session.scalar(
            sa.select(SsoConnection).where(SsoConnection.workspace_id == workspace.id)
        )
        for key, value in fields.items():
            setattr(connection, key, value)
        db.session.commit()


def connection_of(app, workspace) -> SsoConnection | None:  # type: ignore[no-untyped-def]
    with app.app_context():
        connection = db.session.scalar(
            sa.select(SsoConnection).where(SsoConnection.workspace_id == workspace.id)
        )
        if connection is not None:
            db.session.expunge(connection)
        return connection


def domains_of(app, workspace) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.execute(
            sa.select(SsoDomain.domain, SsoDomain.verified_by)
            .where(SsoDomain.workspace_id == workspace.id)
            .order_by(SsoDomain.domain)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def events(app, action: str, **where: Any) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        conditions = [getattr(AuditEvent, k) == v for k, v in where.items()]
        rows = list(
            db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == action, *conditions)
                .order_by(AuditEvent.id)
            )
        )
        for row in rows:
            db.session.expunge(row)
        return rows


def stub_dns(
    app, answers: dict[str, list[str]] | Callable[[str], list[str]]
) -> list[str]:  # type: ignore[no-untyped-def]
    """Answer TXT lookups from ``answers``; returns the names asked for."""
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        if callable(answers):
            return answers(name)
        return list(answers.get(name, []))

    app.extensions["idp_txt_lookup"] = lookup
    return asked

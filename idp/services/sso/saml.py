"""SAML 2.0 sign-in through a workspace's company IdP: the SSO tab's
configuration (metadata URL, uploaded metadata, or typed in), our SP
metadata, the start of a sign-in, and the assertion consumer service.

A sign-in is an ``SsoRequest`` whose id is the AuthnRequest ID, bound to
the browser by its SSO cookie. At the ACS the Response is verified
(``connectors.saml``), its assertion id goes into the replay cache every
instance shares, and the request it answers is used up; both are
committed before the claims are returned, so a Response works once even
when what follows refuses the person (SAML-4).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from connectors import saml
from connectors.fetch import FetchError, check_url, get
from idp.clock import now
from idp.db import db
from idp.keys import KeyRing
from idp.models import (
    FederatedIdentity,
    SamlAssertionSeen,
    SsoConnection,
    SsoRequest,
    Workspace,
)
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import InvalidInput
from idp.services.permissions import require_admin
from idp.services.sso import Claims, SsoRefused, connections, federation
from idp.services.sso import requests as sso_requests
from idp.state import settings

# The IdP's current certificate and its successor, during a rollover.
MAX_CERTIFICATES = 2
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL
)

MESSAGES = {
    "saml_not_configured": "Single sign-on is not fully set up for this workspace. Ask an admin of the workspace.",
    "saml_replayed": "This sign-in answer was already used. Sign in again.",
    "saml_unsolicited": "Sign-ins started at your company's IdP are not accepted here. Start from the sign-in page of this workspace.",
    "saml_name_id_transient": "Your company's IdP sends a different name for you at every sign-in (a transient NameID). Ask your IT team to send a persistent NameID or your email address.",
}


def _keys() -> KeyRing:
    ring: KeyRing = current_app.extensions["idp_keys"]
    return ring


# --- configuration ------------------------------------------------------------


def configure(
    ctx: Context,
    workspace: Workspace,
    *,
    metadata_url: str | None = None,
    metadata_xml: str | bytes | None = None,
    entity_id: str | None = None,
    sso_url: str | None = None,
    certificates: Sequence[str] | str | None = None,
) -> tuple[SsoConnection, list[str]]:
    """Connect the workspace to a SAML IdP, described by its metadata URL,
    its metadata file, or entity id, sign-in URL and certificates typed
    in; the connection and warnings for the admin. Nothing changes when
    InvalidInput is raised."""
    require_admin(ctx, workspace.id, "sso.configure")
    typed = bool(entity_id or sso_url or certificates)
    if sum((bool(metadata_url), bool(metadata_xml), typed)) != 1:
        raise InvalidInput(
            "Give the IdP's metadata URL, its metadata file, or its entity id, "
            "sign-in URL and certificate: one of the three.",
            code="sso_saml_input",
        )
    moment = now()
    if metadata_url:
        how = "metadata_url"
        metadata_url = metadata_url.strip()
        parsed = _parse(_fetch(metadata_url), moment)
    elif metadata_xml:
        how = "metadata_xml"
        parsed = _parse(metadata_xml, moment)
    else:
        how = "typed"
        parsed = _typed(entity_id, sso_url, certificates, moment)
    _check_sso_url(parsed.sso_url)
    kept, dropped = _keep_newest(parsed.certificates)
    warnings = list(parsed.warnings)
    if dropped:
        warnings.append(
            f"The metadata lists {len(parsed.certificates)} signing certificates; "
            f"the {MAX_CERTIFICATES} valid the longest are kept."
        )

    connection, created = connections.ensure(ctx, workspace, "saml")
    unlinked = _unlink_if_other_idp(connection, parsed.entity_id)
    connection.saml_entity_id = parsed.entity_id
    connection.saml_sso_url = parsed.sso_url
    connection.saml_certificates = kept
    connection.saml_metadata_url = metadata_url if how == "metadata_url" else None
    connection.saml_metadata_valid_until = parsed.valid_until
    connection.updated_at = moment
    audit.record(
        ctx,
        "sso.connection_configured",
        workspace_id=workspace.id,
        details={
            "protocol": "saml",
            "entity_id": parsed.entity_id[:300],
            "how": how,
            "created": created,
            "certificates": [saml.certificate_fingerprint(pem) for pem in kept],
            "warnings": warnings,
            **({"identities_unlinked": unlinked} if unlinked else {}),
        },
    )
    db.session.commit()
    return connection, warnings


def refresh_metadata(ctx: Context, workspace: Workspace) -> list[str]:
    """Fetch the stored metadata URL again (the IdP rolled its certificate
    over, say); the warnings for the admin."""
    require_admin(ctx, workspace.id, "sso.configure")
    connection = connections.for_workspace(workspace.id)
    if connection is None or connection.protocol != "saml":
        raise InvalidInput("Connect a SAML IdP first.", code="sso_not_configured")
    if not connection.saml_metadata_url:
        raise InvalidInput(
            "This connection was not set up from a metadata URL.",
            code="sso_metadata_url_missing",
        )
    moment = now()
    parsed = _parse(_fetch(connection.saml_metadata_url), moment)
    if parsed.entity_id != connection.saml_entity_id:
        raise InvalidInput(
            f"The metadata now describes another IdP ({parsed.entity_id[:200]}). "
            "Configure the connection again if that is intended.",
            code="sso_metadata_entity_changed",
        )
    _check_sso_url(parsed.sso_url)
    kept, _dropped = _keep_newest(parsed.certificates)
    before = {
        "sso_url": connection.saml_sso_url,
        "certificates": [
            saml.certificate_fingerprint(p) for p in connection.saml_certificates or []
        ],
    }
    after = {
        "sso_url": parsed.sso_url,
        "certificates": [saml.certificate_fingerprint(p) for p in kept],
    }
    connection.saml_sso_url = parsed.sso_url
    connection.saml_certificates = kept
    connection.saml_metadata_valid_until = parsed.valid_until
    connection.updated_at = moment
    audit.record(
        ctx,
        "sso.metadata_refreshed",
        workspace_id=workspace.id,
        details={
            "protocol": "saml",
            "changed": {k: after[k] for k in after if after[k] != before[k]},
            "warnings": parsed.warnings,
        },
    )
    db.session.commit()
    return list(parsed.warnings)


def _fetch(url: str) -> bytes:
    rules = connections.fetch_rules()
    try:
        return get(url, rules)
    except FetchError as exc:
        raise InvalidInput(
            f"The metadata could not be fetched: {exc}",
            code="sso_metadata_fetch_failed",
        ) from exc


def _parse(data: str | bytes, moment: datetime) -> saml.IdpMetadata:
    try:
        return saml.parse_idp_metadata(data, moment)
    except saml.SamlError as exc:
        raise InvalidInput(f"The metadata was refused: {exc}", code=exc.code) from exc


def _typed(
    entity_id: str | None,
    sso_url: str | None,
    certificates: Sequence[str] | str | None,
    moment: datetime,
) -> saml.IdpMetadata:
    entity_id = (entity_id or "").strip()
    if (
        not entity_id
        or len(entity_id) > saml.MAX_ENTITY_ID
        or not entity_id.isprintable()
        or any(c.isspace() for c in entity_id)
    ):
        raise InvalidInput(
            "Enter the IdP's entity id (its issuer), without spaces.",
            code="sso_entity_id_invalid",
        )
    texts = _certificate_texts(certificates)
    if not texts:
        raise InvalidInput(
            "Enter the IdP's signing certificate.", code="sso_certificate_invalid"
        )
    if len(texts) > MAX_CERTIFICATES:
        raise InvalidInput(
            f"Enter at most {MAX_CERTIFICATES} certificates: the current one and, "
            "during a rollover, the next.",
            code="sso_certificate_invalid",
        )
    pems: list[str] = []
    warnings: list[str] = []
    for number, text in enumerate(texts, start=1):
        try:
            pem = saml.normalize_certificate(text)
        except saml.SamlError as exc:
            raise InvalidInput(
                f"Certificate {number}: {exc}", code="sso_certificate_invalid"
            ) from exc
        if pem not in pems:
            pems.append(pem)
            warnings.extend(saml.certificate_warnings(pem, moment))
    return saml.IdpMetadata(
        entity_id=entity_id,
        sso_url=(sso_url or "").strip(),
        certificates=pems,
        valid_until=None,
        warnings=warnings,
    )


def _certificate_texts(certificates: Sequence[str] | str | None) -> list[str]:
    """One text per certificate: a text area may hold several PEM blocks."""
    if not certificates:
        return []
    if isinstance(certificates, str):
        certificates = [certificates]
    texts: list[str] = []
    for text in certificates:
        blocks = _PEM_BLOCK.findall(text)
        texts.extend(blocks or ([text] if text.strip() else []))
    return texts


def _check_sso_url(url: str) -> None:
    """https, or http where the operator allowed private addresses (an IdP
    on their own network). The browser goes there, not this server."""
    try:
        if not url:
            raise FetchError("Enter the IdP's sign-in URL.")
        check_url(url, connections.fetch_rules())
    except FetchError as exc:
        raise InvalidInput(f"Sign-in URL: {exc}", code="sso_url_invalid") from exc


def _keep_newest(pems: list[str]) -> tuple[list[str], list[str]]:
    if len(pems) <= MAX_CERTIFICATES:
        return list(pems), []
    ranked = sorted(pems, key=saml.certificate_expiry, reverse=True)
    kept = ranked[:MAX_CERTIFICATES]
    return [p for p in pems if p in kept], ranked[MAX_CERTIFICATES:]


def _unlink_if_other_idp(connection: SsoConnection, entity_id: str) -> int:
    """NameIDs are only unique per IdP: another IdP's could be a stored
    one (SECURITY.md 6.8.1). Members link again by their email at their
    next sign-in."""
    previous = connection.saml_entity_id
    if previous is None or previous == entity_id:
        return 0
    return int(
        db.session.execute(
            sa.delete(FederatedIdentity).where(
                FederatedIdentity.connection_id == connection.id
            )
        ).rowcount
    )


def sp_metadata(workspace: Workspace) -> str:
    """Our SP metadata for the company's IT team to load into the IdP."""
    return saml.sp_metadata(
        entity_id=connections.saml_entity_id(workspace),
        acs_url=connections.saml_acs_url(workspace),
        certificates=[pair.certificate_pem for pair in _keys().saml],
    )


# --- sign-in ------------------------------------------------------------------


def _configured(connection: SsoConnection) -> bool:
    return bool(
        connection.saml_entity_id
        and connection.saml_sso_url
        and connection.saml_certificates
    )


def start(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    *,
    binding: str,
    purpose: str = "signin",
    return_to: str | None = None,
    requested_by: uuid.UUID | None = None,
) -> str:
    """Record a sign-in for this browser and return the IdP address that
    carries its signed AuthnRequest (HTTP-Redirect)."""
    if not _configured(connection):
        raise SsoRefused(MESSAGES["saml_not_configured"], code="saml_not_configured")
    request = sso_requests.begin(
        connection,
        binding=binding,
        purpose=purpose,
        return_to=return_to,
        requested_by=requested_by,
    )
    signing = _keys().saml[0]
    url = saml.authn_request_url(
        sso_url=str(connection.saml_sso_url),
        request_id=request.id,
        sp_entity_id=connections.saml_entity_id(workspace),
        acs_url=connections.saml_acs_url(workspace),
        issue_instant=now(),
        relay_state=request.id,
        key_pem=signing.key_file.read_bytes(),
    )
    db.session.commit()
    return url


def consume(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    *,
    saml_response: str,
    relay_state: str | None,
    binding: str | None,
) -> tuple[Claims, SsoRequest | None]:
    """The IdP's Response at our ACS: the verified claims and the request
    they answer (used up; None for an IdP-initiated sign-in), or SsoRefused
    (audited). ``relay_state`` is not trusted for anything: the request is
    found by the signed InResponseTo and this browser's binding."""
    del relay_state
    if not _configured(connection):
        raise federation.refuse(
            ctx,
            connection,
            "saml_not_configured",
            message=MESSAGES["saml_not_configured"],
        )
    moment = now()
    skew = timedelta(seconds=int(settings()["sso"]["clock_skew_seconds"]))
    try:
        assertion = saml.verify_response(
            saml_response,
            idp_entity_id=str(connection.saml_entity_id),
            idp_certificates=list(connection.saml_certificates),
            sp_entity_id=connections.saml_entity_id(workspace),
            acs_url=connections.saml_acs_url(workspace),
            now=moment,
            skew_seconds=skew.total_seconds(),
            decryption_keys=[pair.key_file for pair in _keys().saml],
        )
    except saml.SamlError as exc:
        raise federation.refuse(
            ctx,
            connection,
            exc.code,
            details=exc.details,
            message=exc.message,
            status=exc.status,
        ) from exc
    label = assertion.name_id[:200]
    if assertion.name_id_format == TRANSIENT:
        raise federation.refuse(
            ctx,
            connection,
            "saml_name_id_transient",
            label=label,
            message=MESSAGES["saml_name_id_transient"],
        )
    idp_initiated = assertion.in_response_to is None

    _remember(ctx, workspace, connection, assertion, moment, skew, label)
    request: SsoRequest | None = None
    if idp_initiated:
        if not connection.saml_idp_initiated:
            raise federation.refuse(
                ctx,
                connection,
                "saml_unsolicited",
                label=label,
                message=MESSAGES["saml_unsolicited"],
            )
    else:
        try:
            request = sso_requests.find(connection, assertion.in_response_to, binding)
            sso_requests.use(request)
        except SsoRefused as exc:
            raise federation.refuse(
                ctx, connection, exc.code, label=label, message=exc.message
            ) from exc
        db.session.expunge(request)
    # Used up for good, whatever follows: the assertion id and the request.
    db.session.commit()

    mapped = saml.map_attributes(assertion, connection.attribute_map)
    claims = Claims.of(
        assertion.issuer,
        assertion.name_id,
        mapped,
        # An IdP asserts the addresses of its own directory; linking also
        # needs the address in one of the connection's verified domains.
        email_verified=True,
        details={
            "assertion_id": assertion.assertion_id,
            "idp_initiated": idp_initiated,
            "name_id_format": assertion.name_id_format,
            "session_index": assertion.session_index,
        },
    )
    return claims, request


def _remember(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    assertion: saml.SamlAssertion,
    moment: datetime,
    skew: timedelta,
    label: str,
) -> None:
    """Put the assertion id in the replay cache; its primary key refuses a
    second insert, whichever instance makes it."""
    db.session.execute(
        sa.delete(SamlAssertionSeen).where(SamlAssertionSeen.expires_at < moment)
    )
    db.session.add(
        SamlAssertionSeen(
            workspace_id=workspace.id,
            assertion_id=assertion.assertion_id,
            expires_at=assertion.not_on_or_after + skew,
        )
    )
    try:
        db.session.flush()
    except sa.exc.IntegrityError as exc:
        db.session.rollback()
        raise federation.refuse(
            ctx,
            connection,
            "saml_replayed",
            label=label,
            details={"assertion_id": assertion.assertion_id[:256]},
            message=MESSAGES["saml_replayed"],
        ) from exc

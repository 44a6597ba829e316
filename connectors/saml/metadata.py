"""SAML metadata: the IdP's read (entity id, sign-in address, signing
certificates), ours written for the IdP to import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from xml.etree.ElementTree import Element

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, md
from saml2 import xmldsig as ds

from connectors.saml.certificates import (
    _body,
    _der,
    certificate_warnings,
    normalize_certificate,
)
from connectors.saml.xml import (
    NS,
    SAML2_PROTOCOL,
    SamlError,
    _is_url,
    _q,
    _text,
    _time,
    parse_xml,
)

MAX_METADATA_BYTES = 1024 * 1024

MAX_ENTITY_ID = 1024
MAX_URL = 2048


@dataclass(frozen=True)
class IdpMetadata:
    entity_id: str
    sso_url: str
    # PEM, deduplicated, in the metadata's order.
    certificates: list[str]
    valid_until: datetime | None
    warnings: list[str] = field(default_factory=list)


def parse_idp_metadata(xml: bytes | str, now: datetime) -> IdpMetadata:
    """The IdP an EntityDescriptor (or an EntitiesDescriptor holding one
    IdP) describes. Metadata past its validUntil is read, with a warning."""
    if len(xml) > MAX_METADATA_BYTES:
        raise SamlError("saml_metadata_invalid", "The metadata is larger than 1 MiB.")
    root = parse_xml(xml)
    if root.tag == _q("md", "EntityDescriptor"):
        entities = [root]
    elif root.tag == _q("md", "EntitiesDescriptor"):
        entities = list(root.iter(_q("md", "EntityDescriptor")))
    else:
        raise SamlError(
            "saml_metadata_invalid",
            "This is not SAML 2.0 metadata (no EntityDescriptor).",
        )
    idps = [e for e in entities if e.find(_q("md", "IDPSSODescriptor")) is not None]
    if not idps:
        raise SamlError(
            "saml_metadata_invalid",
            "The metadata describes no identity provider (no IDPSSODescriptor).",
        )
    if len(idps) > 1:
        names = ", ".join(e.get("entityID", "?") for e in idps[:5])
        raise SamlError(
            "saml_metadata_invalid",
            f"The metadata describes {len(idps)} identity providers ({names}); "
            "upload the metadata of the one to use.",
        )
    entity = idps[0]
    entity_id = (entity.get("entityID") or "").strip()
    if not entity_id or len(entity_id) > MAX_ENTITY_ID:
        raise SamlError("saml_metadata_invalid", "The metadata has no valid entityID.")
    descriptors = [
        d
        for d in entity.findall(_q("md", "IDPSSODescriptor"))
        if SAML2_PROTOCOL in (d.get("protocolSupportEnumeration") or "").split()
    ]
    if not descriptors:
        raise SamlError(
            "saml_metadata_invalid", "The identity provider does not speak SAML 2.0."
        )
    warnings: list[str] = []
    sso_url = _sso_url(descriptors, warnings)
    certificates = _signing_certificates(descriptors, warnings)
    valid_until = _valid_until(root, entity)
    if valid_until is not None and valid_until <= now:
        warnings.append(
            f"The metadata was valid until {valid_until:%Y-%m-%d %H:%M} UTC, which "
            "has passed. It was imported anyway; ask the IdP for fresh metadata."
        )
    for pem in certificates:
        warnings.extend(certificate_warnings(pem, now))
    return IdpMetadata(entity_id, sso_url, certificates, valid_until, warnings)


def _sso_url(descriptors: list[Element], warnings: list[str]) -> str:
    by_binding: dict[str, str] = {}
    for descriptor in descriptors:
        for service in descriptor.findall(_q("md", "SingleSignOnService")):
            binding = service.get("Binding", "")
            location = (service.get("Location") or "").strip()
            if _is_url(location) and len(location) <= MAX_URL:
                by_binding.setdefault(binding, location)
    if BINDING_HTTP_REDIRECT in by_binding:
        return by_binding[BINDING_HTTP_REDIRECT]
    if BINDING_HTTP_POST in by_binding:
        # Google Workspace lists only HTTP-POST yet takes HTTP-Redirect at
        # the same address; we send every AuthnRequest by redirect.
        warnings.append(
            "The IdP lists only the HTTP-POST binding for sign-in; requests "
            "are sent to the same address by HTTP-Redirect. If sign-in fails "
            "there, ask the IdP for its HTTP-Redirect address."
        )
        return by_binding[BINDING_HTTP_POST]
    raise SamlError(
        "saml_metadata_invalid",
        "The identity provider has no SAML 2.0 sign-in address for the "
        "HTTP-Redirect or HTTP-POST binding.",
    )


def _signing_certificates(descriptors: list[Element], warnings: list[str]) -> list[str]:
    found: dict[bytes, str] = {}
    refused: list[SamlError] = []
    for descriptor in descriptors:
        for key in descriptor.findall(_q("md", "KeyDescriptor")):
            if key.get("use") not in (None, "", "signing"):
                continue
            for node in key.iter(_q("ds", "X509Certificate")):
                try:
                    pem = normalize_certificate(_text(node))
                except SamlError as exc:
                    refused.append(exc)
                    continue
                found.setdefault(_der(pem), pem)
    if not found and refused:
        raise refused[0]
    if not found:
        raise SamlError(
            "saml_metadata_invalid", "The metadata holds no signing certificate."
        )
    warnings.extend(f"A certificate was left out: {exc}" for exc in refused)
    return list(found.values())


def _valid_until(root: Element, entity: Element) -> datetime | None:
    nodes = [root] if root is entity else [root, entity]
    stamps = [_time(n.get("validUntil"), "validUntil") for n in nodes]
    return min((s for s in stamps if s is not None), default=None)


def sp_metadata(*, entity_id: str, acs_url: str, certificates: Sequence[str]) -> str:
    """Our SP metadata: signed AuthnRequests, signed assertions wanted, the
    ACS by HTTP-POST, and each of our certificates (newest first) for
    signing and encryption, so an IdP can roll over to the next."""
    keys = [
        md.KeyDescriptor(
            use=use,
            key_info=ds.KeyInfo(
                x509_data=[
                    ds.X509Data(x509_certificate=ds.X509Certificate(text=_body(pem)))
                ]
            ),
        )
        for use in ("signing", "encryption")
        for pem in certificates
    ]
    descriptor = md.SPSSODescriptor(
        protocol_support_enumeration=SAML2_PROTOCOL,
        authn_requests_signed="true",
        want_assertions_signed="true",
        key_descriptor=keys,
        assertion_consumer_service=[
            md.AssertionConsumerService(
                binding=BINDING_HTTP_POST,
                location=acs_url,
                index="0",
                is_default="true",
            )
        ],
    )
    entity = md.EntityDescriptor(entity_id=entity_id, spsso_descriptor=[descriptor])
    text = entity.to_string({"md": NS["md"], "ds": NS["ds"]}).decode()
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'

"""An IdP's HTTP-POST Response checked, and the assertion it carries
read; the signature and decryption steps are in
``connectors.saml.signature``.

Every XML document is parsed with DTDs refused before pysaml2 or xmlsec1
sees it (SAML-3). A Response is accepted only when (SAML-2, SAML-5):

- it holds exactly one assertion (plain, or encrypted to our key), a
  direct child of the Response, and no signature other than the
  Response's own and the assertion's own, each referring to its parent by
  ID, with algorithms we accept;
- every signature present verifies with a configured IdP certificate
  (xmlsec1 through pysaml2, keys from KeyInfo ignored), and one of them
  covers the assertion consumed: the assertion's own, or the Response's
  with the assertion inside it;
- the status is Success, the issuer is the configured IdP, the audience is
  our entity id, a bearer confirmation names our ACS URL, and the times
  hold within the clock skew. Destination, when present, is our ACS URL;
  a signed Response must carry it (SAML bindings 3.5.5.2).

InResponseTo is read from signed parts only, so an unsolicited assertion
cannot be attached to another browser's request by editing an unsigned
Response. Text (the NameID above all) is read whole, comments included
(SAML-1): ``a@example.com<!---->.evil.example`` is
``a@example.com.evil.example``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from xml.etree.ElementTree import Element

from connectors.saml.signature import (
    _ASSERTION_NODE,
    _RESPONSE_NODE,
    _check_signatures_placed,
    _check_unique_ids,
    _decrypt,
    _ordered,
    _own_signature,
    _pem_files,
    _verify_or_refuse,
)
from connectors.saml.xml import NS, SamlError, _Document, _q, _text, _time

STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

# A SAMLResponse larger than this (base64) is refused unread: Entra caps
# groups at 150 per token, so real answers stay far below it.
MAX_RESPONSE_CHARS = 700_000

MAX_NAME_ID = 512
# The replay cache's key column.
MAX_ASSERTION_ID = 256
MAX_ATTRIBUTES = 200
MAX_VALUES = 1000
MAX_VALUE_CHARS = 4096


@dataclass(frozen=True)
class SamlAssertion:
    """What a verified assertion says, as the checks left it."""

    assertion_id: str
    # The earliest NotOnOrAfter (conditions, bearer confirmation): the
    # assertion is refused from this moment plus the skew.
    not_on_or_after: datetime
    name_id: str
    name_id_format: str | None
    issuer: str
    attributes: dict[str, list[str]]
    # From the signed parts only; None: unsolicited.
    in_response_to: str | None
    session_index: str | None
    authn_instant: datetime | None
    response_signed: bool
    assertion_signed: bool
    encrypted: bool = False


def decode_response(saml_response: str) -> bytes:
    """The XML of an HTTP-POST SAMLResponse."""
    if len(saml_response) > MAX_RESPONSE_CHARS:
        raise SamlError("saml_malformed", "The SAML answer is too large.")
    try:
        data = base64.b64decode("".join(saml_response.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SamlError("saml_malformed", "The SAML answer is not base64.") from exc
    if not data:
        raise SamlError("saml_malformed", "The SAML answer is empty.")
    return data


def verify_response(
    saml_response: str,
    *,
    idp_entity_id: str,
    idp_certificates: Sequence[str],
    sp_entity_id: str,
    acs_url: str,
    now: datetime,
    skew_seconds: float,
    decryption_keys: Sequence[str | os.PathLike[str]] = (),
    expected_in_response_to: str | None = None,
) -> SamlAssertion:
    """The assertion of an HTTP-POST SAMLResponse, every check of the module
    docstring passed; or SamlError. ``decryption_keys``: our PEM private
    key files, newest first, for an EncryptedAssertion."""
    if not idp_certificates:
        raise SamlError("saml_not_configured", "No IdP certificate is configured.")
    document = _Document.parse(decode_response(saml_response))
    response = document.root
    if response.tag != _q("samlp", "Response") or response.get("Version") != "2.0":
        raise SamlError("saml_malformed", "The SAML answer is not a SAML 2.0 Response.")
    _check_status(response)
    _check_unique_ids(document)
    if len(list(response.iter(_q("samlp", "Response")))) != 1:
        raise SamlError("saml_wrapping", "The Response holds another Response.")
    assertion = _single_assertion(document)
    encrypted = assertion.tag == _q("saml", "EncryptedAssertion")
    # xmlsec1 checks the first signature inside the element it is pointed
    # at: each must be the element's own, and no other may exist.
    response_signature = _own_signature(response)
    assertion_signature = None if encrypted else _own_signature(assertion)
    _check_signatures_placed(document, {response_signature, assertion_signature})

    with _pem_files(_ordered(idp_certificates, response)) as cert_files:
        response_signed = response_signature is not None and _verify_or_refuse(
            document, _RESPONSE_NODE, response, cert_files
        )
        if encrypted:
            document, assertion = _decrypt(document, decryption_keys)
            assertion_signature = _own_signature(assertion)
            _check_signatures_placed(
                document, {_own_signature(document.root), assertion_signature}
            )
        assertion_signed = assertion_signature is not None and _verify_or_refuse(
            document, _ASSERTION_NODE, assertion, cert_files
        )
    if not (response_signed or assertion_signed):
        raise SamlError(
            "saml_unsigned",
            "The assertion is not signed: the IdP must sign the assertion or "
            "the Response.",
        )
    return _read_assertion(
        response,
        assertion,
        response_signed=response_signed,
        assertion_signed=assertion_signed,
        encrypted=encrypted,
        idp_entity_id=idp_entity_id,
        sp_entity_id=sp_entity_id,
        acs_url=acs_url,
        now=now,
        skew=timedelta(seconds=skew_seconds),
        expected_in_response_to=expected_in_response_to,
    )


def _check_status(response: Element) -> None:
    status = response.find(_q("samlp", "Status"))
    code = status.find(_q("samlp", "StatusCode")) if status is not None else None
    if code is None or not code.get("Value"):
        raise SamlError("saml_malformed", "The Response has no status.")
    value = code.get("Value", "")
    if value == STATUS_SUCCESS:
        return
    inner = code.find(_q("samlp", "StatusCode"))
    detail = inner.get("Value", "") if inner is not None else ""
    message = _text(status.find(_q("samlp", "StatusMessage")))  # type: ignore[union-attr]
    short = (detail or value).rsplit(":", 1)[-1]
    raise SamlError(
        "saml_status",
        f"Your company's IdP did not sign you in (it answered {short[:64]}).",
        details={
            "status": value[:200],
            "substatus": detail[:200],
            "message": message[:200],
        },
    )


def _single_assertion(document: _Document) -> Element:
    """The one Assertion or EncryptedAssertion, a direct child of the
    Response; anything else is refused (SAML-2)."""
    root = document.root
    found = list(root.iter(_q("saml", "Assertion"))) + list(
        root.iter(_q("saml", "EncryptedAssertion"))
    )
    if len(found) != 1:
        raise SamlError(
            "saml_assertion_count",
            f"The Response holds {len(found)} assertions; exactly one is accepted.",
            details={"assertions": len(found)},
        )
    if document.parents.get(found[0]) is not root:
        raise SamlError(
            "saml_wrapping", "The assertion is not where a Response carries it."
        )
    return found[0]


def _read_assertion(
    response: Element,
    assertion: Element,
    *,
    response_signed: bool,
    assertion_signed: bool,
    encrypted: bool,
    idp_entity_id: str,
    sp_entity_id: str,
    acs_url: str,
    now: datetime,
    skew: timedelta,
    expected_in_response_to: str | None,
) -> SamlAssertion:
    if (
        assertion.get("Version") != "2.0"
        or not assertion.get("ID")
        or len(assertion.get("ID", "")) > MAX_ASSERTION_ID
    ):
        raise SamlError("saml_malformed", "The assertion is not a SAML 2.0 assertion.")
    _check_issuer(response, assertion, idp_entity_id)
    _check_destination(response, acs_url, response_signed)
    conditions = assertion.find(_q("saml", "Conditions"))
    _check_audience(conditions, sp_entity_id)
    name_id, name_id_format = _name_id(assertion)
    confirmation = _bearer_confirmation(assertion, acs_url)

    # InResponseTo from what a verified signature covers: the bearer
    # confirmation always (it is inside the assertion), the Response's
    # attribute only when the Response is signed.
    confirmed = confirmation.get("InResponseTo")
    stated = response.get("InResponseTo")
    if confirmed and stated and confirmed != stated:
        raise SamlError(
            "saml_in_response_to",
            "The Response and its assertion answer different requests.",
        )
    in_response_to = confirmed or (stated if response_signed else None) or None
    if (
        expected_in_response_to is not None
        and in_response_to != expected_in_response_to
    ):
        raise SamlError(
            "saml_in_response_to", "The Response does not answer the request we sent."
        )

    expiry = _check_times(conditions, confirmation, now, skew)
    authn = assertion.find(_q("saml", "AuthnStatement"))
    if authn is None:
        raise SamlError("saml_malformed", "The assertion has no AuthnStatement.")
    return SamlAssertion(
        assertion_id=assertion.get("ID", ""),
        not_on_or_after=expiry,
        name_id=name_id,
        name_id_format=name_id_format,
        issuer=idp_entity_id,
        attributes=_attributes(assertion),
        in_response_to=in_response_to,
        session_index=authn.get("SessionIndex"),
        authn_instant=_time(authn.get("AuthnInstant"), "AuthnInstant"),
        response_signed=response_signed,
        assertion_signed=assertion_signed,
        encrypted=encrypted,
    )


def _check_issuer(response: Element, assertion: Element, idp_entity_id: str) -> None:
    issuers = [_text(assertion.find(_q("saml", "Issuer")))]
    response_issuer = response.find(_q("saml", "Issuer"))
    if response_issuer is not None:
        issuers.append(_text(response_issuer))
    for issuer in issuers:
        if issuer != idp_entity_id:
            raise SamlError(
                "saml_issuer",
                "The answer comes from another IdP than the one configured.",
                details={"issuer": issuer[:200]},
            )


def _check_destination(response: Element, acs_url: str, response_signed: bool) -> None:
    destination = response.get("Destination")
    if destination is None and not response_signed:
        return
    if destination != acs_url:
        raise SamlError(
            "saml_destination",
            "The Response was sent to another address than ours.",
            details={"destination": (destination or "")[:200]},
        )


def _check_audience(conditions: Element | None, sp_entity_id: str) -> None:
    restrictions = (
        conditions.findall(_q("saml", "AudienceRestriction"))
        if conditions is not None
        else []
    )
    # Each restriction must name us (SAML core 2.5.1.4); none is refused.
    if not restrictions or any(
        sp_entity_id not in [_text(a) for a in r.findall(_q("saml", "Audience"))]
        for r in restrictions
    ):
        raise SamlError(
            "saml_audience", "The assertion is meant for another service, not us."
        )


def _name_id(assertion: Element) -> tuple[str, str | None]:
    subject = assertion.find(_q("saml", "Subject"))
    node = subject.find(_q("saml", "NameID")) if subject is not None else None
    value = _text(node)
    if node is None or not value:
        raise SamlError("saml_malformed", "The assertion names nobody (no NameID).")
    if len(value) > MAX_NAME_ID:
        raise SamlError("saml_malformed", "The NameID is too long.")
    return value, node.get("Format")


def _bearer_confirmation(assertion: Element, acs_url: str) -> Element:
    """The bearer SubjectConfirmationData addressed to our ACS."""
    subject = assertion.find(_q("saml", "Subject"))
    datas = []
    for confirmation in (
        subject.findall(_q("saml", "SubjectConfirmation"))
        if subject is not None
        else []
    ):
        data = confirmation.find(_q("saml", "SubjectConfirmationData"))
        if confirmation.get("Method") == BEARER and data is not None:
            datas.append(data)
    for data in datas:
        if data.get("Recipient") == acs_url:
            return data
    raise SamlError(
        "saml_recipient",
        "The assertion was issued for another address than ours.",
        details={"recipients": [(d.get("Recipient") or "")[:200] for d in datas[:3]]},
    )


def _check_times(
    conditions: Element | None, confirmation: Element, now: datetime, skew: timedelta
) -> datetime:
    """The assertion's end (the earliest NotOnOrAfter), once now is inside
    every window the assertion states, give or take the skew."""
    nodes = [n for n in (conditions, confirmation) if n is not None]
    starts = [_time(n.get("NotBefore"), "NotBefore") for n in nodes]
    ends = [_time(n.get("NotOnOrAfter"), "NotOnOrAfter") for n in nodes]
    if confirmation.get("NotOnOrAfter") is None:
        # Web SSO profile 4.1.4.2: a bearer confirmation carries its end.
        raise SamlError("saml_malformed", "The assertion does not say when it expires.")
    start = max((s for s in starts if s is not None), default=None)
    expiry = min(e for e in ends if e is not None)
    if start is not None and now + skew < start:
        raise SamlError(
            "saml_not_yet_valid",
            "The assertion is not valid yet: check the clocks of the IdP and "
            "of this server.",
            details={"not_before": start.isoformat()},
        )
    if now - skew >= expiry:
        raise SamlError(
            "saml_expired",
            "The assertion has expired. Sign in again.",
            details={"not_on_or_after": expiry.isoformat()},
        )
    return expiry


def _attributes(assertion: Element) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    nil = f"{{{NS['xsi']}}}nil"
    for statement in assertion.findall(_q("saml", "AttributeStatement")):
        for attribute in statement.findall(_q("saml", "Attribute")):
            name = (attribute.get("Name") or "").strip()
            if not name or (name not in found and len(found) >= MAX_ATTRIBUTES):
                continue
            values = found.setdefault(name[:512], [])
            for node in attribute.findall(_q("saml", "AttributeValue")):
                value = _text(node)
                if node.get(nil) in ("true", "1") or len(value) > MAX_VALUE_CHARS:
                    continue
                if len(values) < MAX_VALUES:
                    values.append(value)
    return found

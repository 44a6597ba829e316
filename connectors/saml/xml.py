"""Namespaces, SamlError and the XML readers the SAML modules share.

Every document is parsed here, with any DOCTYPE refused before pysaml2 or
xmlsec1 sees it (SAML-3). Text is read whole, comments and child elements
included (SAML-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

NS = {
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
SAML2_PROTOCOL = NS["samlp"]

# Codes of input that is not a SAML answer at all (HTTP 400); every other
# refusal is a 403.
BAD_REQUEST_CODES = frozenset({"saml_doctype", "saml_malformed"})


class SamlError(Exception):
    """Refused metadata, certificate or Response; ``code`` is the reason,
    ``str`` is fit to show, ``details`` go to the audit log."""

    def __init__(
        self, code: str, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @property
    def status(self) -> int:
        return 400 if self.code in BAD_REQUEST_CODES else 403


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def parse_xml(data: bytes | str) -> Element:
    """The document's root, with any DOCTYPE refused before anything else
    reads it: no DTD, no entity, nothing fetched (SAML-3)."""
    try:
        return _defused_fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as exc:
        raise SamlError(
            "saml_doctype",
            "The XML holds a DOCTYPE (a DTD or entities), which is refused.",
        ) from exc
    except (ParseError, ValueError) as exc:
        raise SamlError("saml_malformed", "The XML is not well-formed.") from exc


def _text(element: Element | None) -> str:
    """All the text inside ``element``, comments and child elements
    notwithstanding, trimmed (SAML-1)."""
    if element is None:
        return ""
    return "".join(element.itertext()).strip()


def _time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if "T" not in text:
            raise ValueError(text)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise SamlError(
            "saml_malformed", f"The {what} time is not a valid date and time."
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _is_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("https", "http") and bool(parts.hostname)


@dataclass
class _Document:
    data: bytes
    root: Element
    parents: dict[Element, Element]

    @classmethod
    def parse(cls, data: bytes) -> _Document:
        root = parse_xml(data)
        parents = {child: parent for parent in root.iter() for child in parent}
        return cls(data, root, parents)

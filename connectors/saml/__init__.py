"""SAML 2.0 service provider, with no Flask and no database
(``idp.services.sso.saml`` holds the state): the IdP's metadata read, our
metadata and AuthnRequest written, the IdP's Response checked, and its
attributes mapped.

One module per subject: ``xml`` (parsing with DTDs refused, SamlError),
``certificates``, ``metadata`` (the IdP's and ours), ``request`` (our
AuthnRequest), ``response`` (what a Response must say, SAML-1 to SAML-5),
``signature`` (its signatures and encryption, through xmlsec1) and
``attributes`` (from assertion attributes to a person's details). Their
public names are re-exported here.
"""

from __future__ import annotations

from connectors.saml.attributes import (
    DEFAULT_ATTRIBUTES,
    MAX_GROUPS,
    NAME_ID,
    NAMEID_EMAIL,
    Profile,
    looks_like_email,
    map_attributes,
)
from connectors.saml.certificates import (
    MIN_RSA_BITS,
    WEAK_RSA_BITS,
    certificate_expiry,
    certificate_fingerprint,
    certificate_warnings,
    normalize_certificate,
)
from connectors.saml.metadata import (
    MAX_ENTITY_ID,
    MAX_METADATA_BYTES,
    MAX_URL,
    IdpMetadata,
    parse_idp_metadata,
    sp_metadata,
)
from connectors.saml.request import authn_request_url, inflate_request
from connectors.saml.response import (
    BEARER,
    MAX_ASSERTION_ID,
    MAX_ATTRIBUTES,
    MAX_NAME_ID,
    MAX_RESPONSE_CHARS,
    MAX_VALUE_CHARS,
    MAX_VALUES,
    STATUS_SUCCESS,
    SamlAssertion,
    decode_response,
    verify_response,
)
from connectors.saml.signature import DIGEST_ALGORITHMS, SIGNATURE_ALGORITHMS
from connectors.saml.xml import (
    BAD_REQUEST_CODES,
    NS,
    SAML2_PROTOCOL,
    XML_ID,
    SamlError,
    parse_xml,
)

__all__ = [
    "BAD_REQUEST_CODES",
    "BEARER",
    "DEFAULT_ATTRIBUTES",
    "DIGEST_ALGORITHMS",
    "MAX_ASSERTION_ID",
    "MAX_ATTRIBUTES",
    "MAX_ENTITY_ID",
    "MAX_GROUPS",
    "MAX_METADATA_BYTES",
    "MAX_NAME_ID",
    "MAX_RESPONSE_CHARS",
    "MAX_URL",
    "MAX_VALUES",
    "MAX_VALUE_CHARS",
    "MIN_RSA_BITS",
    "NAMEID_EMAIL",
    "NAME_ID",
    "NS",
    "SAML2_PROTOCOL",
    "SIGNATURE_ALGORITHMS",
    "STATUS_SUCCESS",
    "WEAK_RSA_BITS",
    "XML_ID",
    "IdpMetadata",
    "Profile",
    "SamlAssertion",
    "SamlError",
    "authn_request_url",
    "certificate_expiry",
    "certificate_fingerprint",
    "certificate_warnings",
    "decode_response",
    "inflate_request",
    "looks_like_email",
    "map_attributes",
    "normalize_certificate",
    "parse_idp_metadata",
    "parse_xml",
    "sp_metadata",
    "verify_response",
]

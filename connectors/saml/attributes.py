"""From assertion attributes to a person's details: the connection's
attribute names where it gives them, the usual names of Entra ID, AD FS,
LDAP-based IdPs, Okta and Google otherwise."""

from __future__ import annotations

import re
from collections.abc import Mapping

from connectors.profile import Profile
from connectors.saml.response import SamlAssertion

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"

_ENTRA = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims"
# Attribute names recognised for each field when the connection names
# none, in order of preference: Entra ID and AD FS claim URIs, the LDAP
# OIDs (Shibboleth, SimpleSAMLphp), and the short names Okta, Google and
# most others use. Entra's ".../claims/name" is the user principal name,
# so it counts as an email, not as a display name.
DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "email": (
        f"{_ENTRA}/emailaddress",
        "urn:oid:0.9.2342.19200300.100.1.3",
        "email",
        "mail",
        "emailAddress",
        "Email",
        "EmailAddress",
        "http://schemas.xmlsoap.org/claims/EmailAddress",
        f"{_ENTRA}/name",
        f"{_ENTRA}/upn",
    ),
    "first_name": (
        f"{_ENTRA}/givenname",
        "urn:oid:2.5.4.42",
        "givenName",
        "firstName",
        "first_name",
        "FirstName",
    ),
    "last_name": (
        f"{_ENTRA}/surname",
        "urn:oid:2.5.4.4",
        "sn",
        "surname",
        "lastName",
        "last_name",
        "LastName",
    ),
    "display_name": (
        "http://schemas.microsoft.com/identity/claims/displayname",
        "urn:oid:2.16.840.1.113730.3.1.241",
        "displayName",
        "display_name",
        "DisplayName",
    ),
    "groups": (
        "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
        "http://schemas.xmlsoap.org/claims/Group",
        "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
        "groups",
        "memberOf",
        "Group",
        "Groups",
        "isMemberOf",
    ),
}
# The name a connection's attribute map may give to mean the NameID.
NAME_ID = "NameID"
MAX_GROUPS = 500
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def looks_like_email(value: str) -> bool:
    return _EMAIL.fullmatch(value) is not None


def map_attributes(
    assertion: SamlAssertion, attribute_map: Mapping[str, str] | None = None
) -> Profile:
    """The person's details from the assertion: the connection's attribute
    names where it gives them, the usual names otherwise. Email falls back
    to the NameID when it is an email address."""
    chosen = {k: v for k, v in (attribute_map or {}).items() if v}
    attributes = {**assertion.attributes, NAME_ID: [assertion.name_id]}

    def values(field_name: str) -> list[str]:
        if field_name in chosen:
            return [v for v in attributes.get(chosen[field_name], []) if v]
        for name in DEFAULT_ATTRIBUTES[field_name]:
            found = [v for v in attributes.get(name, []) if v]
            if field_name == "email":
                # A default name may carry a UPN or a login that is no
                # address (AD FS ".../upn"): only addresses count.
                found = [v for v in found if looks_like_email(v)]
            if found:
                return found
        return []

    emails = values("email")
    email = emails[0] if emails else None
    if email is None and (
        assertion.name_id_format == NAMEID_EMAIL or looks_like_email(assertion.name_id)
    ):
        email = assertion.name_id
    first = values("first_name")
    last = values("last_name")
    display = values("display_name")
    groups = tuple(dict.fromkeys(g[:256] for g in values("groups")))[:MAX_GROUPS]
    return Profile(
        email=email,
        first_name=first[0] if first else None,
        last_name=last[0] if last else None,
        display_name=display[0] if display else None,
        groups=groups,
        received=attributes,
    )

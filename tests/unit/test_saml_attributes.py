"""From assertion attributes to a person's details (connectors.saml.
map_attributes): the claim names Entra ID, AD FS, Okta, Google and LDAP
directories send by default, a connection's own names, and the NameID."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.saml import DEFAULT_ATTRIBUTES, SamlAssertion, map_attributes

CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims"
MS = "http://schemas.microsoft.com"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"


def assertion(
    attributes: dict[str, list[str]],
    *,
    name_id: str = "0a1b2c3d",
    name_id_format: str | None = PERSISTENT,
) -> SamlAssertion:
    return SamlAssertion(
        assertion_id="id-1",
        not_on_or_after=datetime(2030, 1, 1, tzinfo=UTC),
        name_id=name_id,
        name_id_format=name_id_format,
        issuer="https://idp.example",
        attributes=attributes,
        in_response_to="id-r",
        session_index=None,
        authn_instant=None,
        response_signed=False,
        assertion_signed=True,
    )


def test_entra_claims() -> None:
    profile = map_attributes(
        assertion(
            {
                f"{CLAIMS}/emailaddress": ["ann.lee@contoso.example"],
                f"{CLAIMS}/givenname": ["Ann"],
                f"{CLAIMS}/surname": ["Lee"],
                f"{CLAIMS}/name": ["ann.lee@contoso.onmicrosoft.example"],
                f"{MS}/identity/claims/displayname": ["Ann Lee (Sales)"],
                f"{MS}/ws/2008/06/identity/claims/groups": [
                    "5f1c2a77-0000-4000-8000-000000000001",
                    "5f1c2a77-0000-4000-8000-000000000002",
                ],
                f"{MS}/identity/claims/tenantid": ["72f988bf-0000"],
            }
        )
    )
    assert profile.email == "ann.lee@contoso.example"
    assert (profile.first_name, profile.last_name) == ("Ann", "Lee")
    assert profile.display_name == "Ann Lee (Sales)"
    assert profile.groups == (
        "5f1c2a77-0000-4000-8000-000000000001",
        "5f1c2a77-0000-4000-8000-000000000002",
    )
    assert profile.received["NameID"] == ["0a1b2c3d"]
    assert f"{MS}/identity/claims/tenantid" in profile.received


def test_entra_without_the_email_claim_uses_the_name_claim() -> None:
    profile = map_attributes(assertion({f"{CLAIMS}/name": ["bo@contoso.example"]}))
    assert profile.email == "bo@contoso.example"


def test_adfs_claims() -> None:
    profile = map_attributes(
        assertion(
            {
                f"{CLAIMS}/upn": ["cy@corp.example"],
                "http://schemas.xmlsoap.org/claims/Group": ["Domain Users", "Finance"],
                f"{CLAIMS}/givenname": ["Cy"],
            }
        )
    )
    assert profile.email == "cy@corp.example"
    assert profile.groups == ("Domain Users", "Finance")
    assert profile.first_name == "Cy"


def test_a_upn_that_is_no_address_is_not_an_email() -> None:
    profile = map_attributes(assertion({f"{CLAIMS}/upn": ["CORP\\cy"]}))
    assert profile.email is None


def test_okta_names() -> None:
    profile = map_attributes(
        assertion(
            {
                "email": ["dee@acme.example"],
                "firstName": ["Dee"],
                "lastName": ["Ray"],
                "groups": ["Everyone", "portcullis-admins"],
            },
            name_id="dee@acme.example",
            name_id_format=EMAIL_FORMAT,
        )
    )
    assert profile.email == "dee@acme.example"
    assert (profile.first_name, profile.last_name) == ("Dee", "Ray")
    assert profile.groups == ("Everyone", "portcullis-admins")


def test_ldap_oids() -> None:
    profile = map_attributes(
        assertion(
            {
                "urn:oid:0.9.2342.19200300.100.1.3": ["eve@uni.example"],
                "urn:oid:2.5.4.42": ["Eve"],
                "urn:oid:2.5.4.4": ["Moss"],
                "urn:oid:2.16.840.1.113730.3.1.241": ["Dr Eve Moss"],
                "urn:oid:1.3.6.1.4.1.5923.1.5.1.1": ["staff"],
            }
        )
    )
    assert profile.email == "eve@uni.example"
    assert (profile.first_name, profile.last_name) == ("Eve", "Moss")
    assert profile.display_name == "Dr Eve Moss"
    assert profile.groups == ("staff",)


@pytest.mark.parametrize(
    ("name_id", "name_id_format", "expected"),
    [
        ("fay@acme.example", EMAIL_FORMAT, "fay@acme.example"),
        ("fay@acme.example", PERSISTENT, "fay@acme.example"),
        ("fay@acme.example", None, "fay@acme.example"),
        ("S-1-5-21-4711", PERSISTENT, None),
    ],
    ids=["email-format", "looks-like-email", "no-format", "opaque"],
)
def test_the_name_id_stands_in_for_a_missing_email(
    name_id: str, name_id_format: str | None, expected: str | None
) -> None:
    profile = map_attributes(
        assertion({}, name_id=name_id, name_id_format=name_id_format)
    )
    assert profile.email == expected


def test_an_email_attribute_wins_over_the_name_id() -> None:
    profile = map_attributes(
        assertion(
            {"mail": ["gus@acme.example"]},
            name_id="gus.old@acme.example",
            name_id_format=EMAIL_FORMAT,
        )
    )
    assert profile.email == "gus@acme.example"


def test_the_connections_names_override_the_defaults() -> None:
    attributes = {
        "email": ["wrong@acme.example"],
        "corpMail": ["hal@acme.example"],
        "given": ["Hal"],
        "family": ["Ng"],
        "roles": ["a", "b", "a"],
        "groups": ["ignored"],
    }
    mapping = {
        "email": "corpMail",
        "first_name": "given",
        "last_name": "family",
        "groups": "roles",
    }
    profile = map_attributes(assertion(attributes), mapping)
    assert profile.email == "hal@acme.example"
    assert (profile.first_name, profile.last_name) == ("Hal", "Ng")
    assert profile.groups == ("a", "b")


def test_a_mapped_attribute_that_is_missing_is_missing() -> None:
    profile = map_attributes(
        assertion({"givenName": ["Ivy"]}), {"first_name": "firstname"}
    )
    assert profile.first_name is None


def test_the_name_id_can_be_mapped_by_name() -> None:
    profile = map_attributes(
        assertion({"mail": ["jo@acme.example"]}, name_id="jo.k@acme.example"),
        {"email": "NameID"},
    )
    assert profile.email == "jo.k@acme.example"


def test_every_field_has_defaults() -> None:
    assert set(DEFAULT_ATTRIBUTES) == {
        "email",
        "first_name",
        "last_name",
        "display_name",
        "groups",
    }
    assert f"{CLAIMS}/emailaddress" in DEFAULT_ATTRIBUTES["email"]
    assert "urn:oid:0.9.2342.19200300.100.1.3" in DEFAULT_ATTRIBUTES["email"]

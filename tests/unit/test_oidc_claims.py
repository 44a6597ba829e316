"""From ID token claims to profile fields."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.oidc_id_token import profile

GOOGLE = {
    "iss": "https://accounts.google.com",
    "sub": "110169484474386276334",
    "email": "ann@example.com",
    "email_verified": True,
    "given_name": "Ann",
    "family_name": "Lee",
    "name": "Ann Lee",
}


def test_google_claims():
    mapped = profile(GOOGLE)
    assert mapped.email == "ann@example.com"
    assert mapped.email_verified is True
    assert (mapped.first_name, mapped.last_name, mapped.display_name) == (
        "Ann",
        "Lee",
        "Ann Lee",
    )
    assert mapped.received["sub"] == ["110169484474386276334"]
    assert mapped.received["email_verified"] == ["true"]


@pytest.mark.parametrize(
    ("claims", "verified"),
    [
        ({}, False),
        ({"email_verified": False}, False),
        ({"email_verified": "false"}, False),
        ({"email_verified": "true"}, True),
        ({"email_verified": "TRUE"}, True),
        ({"email_verified": 1}, False),
        ({"xms_edov": True}, True),
        ({"xms_edov": False}, False),
        ({"email_verified": False, "xms_edov": True}, False),
    ],
    ids=[
        "absent",
        "false",
        "false-text",
        "true-text",
        "true-upper",
        "one",
        "entra-edov",
        "entra-edov-false",
        "explicit-false-wins",
    ],
)
def test_email_verified_only_when_the_idp_says_so(
    claims: dict[str, Any], verified: bool
):
    assert profile({"email": "ann@example.com", **claims}).email_verified is verified


def test_entra_preferred_username_is_never_the_email():
    mapped = profile(
        {"sub": "s", "preferred_username": "admin@victim.example", "name": "Mallory"}
    )
    assert mapped.email is None
    assert mapped.email_verified is False
    assert mapped.received["preferred_username"] == ["admin@victim.example"]


def test_no_email_is_never_verified():
    assert profile({"email_verified": True}).email_verified is False


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["admins", "staff", "admins"], ("admins", "staff")),
        ("admins", ("admins",)),
        ([1, "", None, "staff"], ("staff",)),
        ({"admins": True}, ()),
        (None, ()),
    ],
    ids=["list", "string", "mixed", "object", "absent"],
)
def test_groups(value: Any, groups: tuple[str, ...]):
    assert profile({"groups": value}).groups == groups


def test_attribute_map_names_other_claims():
    mapped = profile(
        {"upn_mail": "ann@example.com", "roles": ["Admins"], "email": "x@y.example"},
        {"email": "upn_mail", "groups": "roles"},
    )
    assert mapped.email == "ann@example.com"
    assert mapped.groups == ("Admins",)


def test_non_text_values_are_not_taken():
    mapped = profile({"email": ["a@example.com"], "name": {"x": 1}, "given_name": "  "})
    assert mapped.email is None
    assert mapped.display_name is None
    assert mapped.first_name is None
    assert mapped.received["name"] == ['{"x": 1}']

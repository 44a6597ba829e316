"""safe_return_url (GW-1): hostile spellings fall back, controls are kept
exactly. The browser's reading decides: backslash as slash, tabs and
newlines dropped, userinfo before the host."""

import pytest

from idp.services.returnurl import safe_return_url
from tests.gw1 import HOSTILE_RETURN_URLS as HOSTILE

CONTROLS = [
    "/dashboard?x=1",
    "https://app.example.com/x",
    "/",
    "/portal/users?q=a%20b#top",
    "https://app.example.com:8443/x?y=1",
    "http://app.example.com/x",
    "https://localhost/x",
    "http://localhost/portal/profile",
    "https://APP.example.com/x",
    "https://app.example.com./x",
    "/search?next=https%3A%2F%2Fevil.example",
    "/a/%2F/b",
]


@pytest.fixture
def overrides():
    return {
        "gateway": {
            "protected_hosts": ["app.example.com", "Other.Example.", "static.example"]
        }
    }


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_are_refused(app_ctx, value):
    assert safe_return_url(value) is None


@pytest.mark.parametrize("value", CONTROLS, ids=repr)
def test_controls_are_kept_exactly(app_ctx, value):
    assert safe_return_url(value) == value


def test_protected_hosts_are_matched_without_case_or_final_dot(app_ctx):
    assert safe_return_url("https://other.example/") == "https://other.example/"
    assert safe_return_url("https://OTHER.example./a") == "https://OTHER.example./a"
    assert safe_return_url("https://sub.other.example/") is None
    assert safe_return_url("https://static.example.evil/") is None


def test_only_the_public_host_without_protected_hosts(app):
    with app.app_context():
        app.extensions["idp"].settings["gateway"]["protected_hosts"] = []
        assert safe_return_url("https://app.example.com/x") is None
        assert safe_return_url("http://localhost/x") == "http://localhost/x"


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "public_url": "https://auth.example.com",
            "gateway": {"protected_hosts": ["app.example.com"]},
        }
    ],
)
def test_https_public_url_never_downgrades_to_http(app_ctx):
    assert safe_return_url("https://app.example.com/x") == "https://app.example.com/x"
    assert safe_return_url("http://app.example.com/x") is None

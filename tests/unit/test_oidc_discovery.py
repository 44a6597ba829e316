"""Discovery documents: real IdPs' samples, and the ones we refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from connectors import oidc
from connectors.fetch import FetchRules

DATA = Path(__file__).parent.parent / "data" / "oidc"
PUBLIC = FetchRules()
LOCAL = FetchRules(allow_private=True, allow_http=True)


def sample(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def test_google_discovery():
    provider = oidc.parse_discovery(
        sample("google_openid-configuration.json"),
        issuer="https://accounts.google.com",
        rules=PUBLIC,
    )
    assert provider.issuer == "https://accounts.google.com"
    assert provider.token_endpoint == "https://oauth2.googleapis.com/token"
    assert provider.jwks_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert provider.algorithms == ("RS256",)
    assert provider.token_auth_method == "client_secret_post"
    assert not provider.tenant_template


def test_okta_org_discovery():
    provider = oidc.parse_discovery(
        sample("okta_org_authorization_server_openid-configuration.json"),
        issuer="https://dev-000000.okta.com",
        rules=PUBLIC,
    )
    assert provider.authorization_endpoint == (
        "https://dev-000000.okta.com/oauth2/v1/authorize"
    )
    assert provider.algorithms == ("RS256",)


def test_okta_oauth_metadata_is_not_oidc_discovery():
    # RFC 8414 metadata publishes no ID token algorithms: it promises no
    # ID token, and is refused with a pointer to the OIDC issuer.
    with pytest.raises(oidc.OidcError, match="not an OpenID Connect") as info:
        oidc.parse_discovery(
            sample("okta_custom_authorization_server_oauth-authorization-server.json"),
            issuer="https://dev-000000.okta.com/oauth2/default",
            rules=PUBLIC,
        )
    assert info.value.code == "sso_discovery_invalid"


@pytest.mark.parametrize("alias", ["common", "organizations"])
def test_entra_multi_tenant_template(alias: str):
    provider = oidc.parse_discovery(
        sample("entra_common_v2.0_openid-configuration.json"),
        issuer=f"https://login.microsoftonline.com/{alias}/v2.0",
        rules=PUBLIC,
    )
    assert provider.tenant_template
    assert provider.issuer_for("72f988bf-86f1-41af-91ab-2d7cd011db47") == (
        "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
    )
    assert provider.token_auth_method == "client_secret_post"


@pytest.mark.parametrize(
    "configured",
    [
        "https://login.microsoftonline.com/consumers/v2.0",
        "https://login.microsoftonline.com/evil/v2.0",
        "https://evil.example/common/v2.0",
        "https://login.microsoftonline.com/common/v2.0/",
    ],
    ids=["consumers", "other-segment", "other-host", "trailing-slash"],
)
def test_entra_template_only_for_its_multi_tenant_aliases(configured: str):
    with pytest.raises(oidc.OidcError) as info:
        oidc.parse_discovery(
            sample("entra_common_v2.0_openid-configuration.json"),
            issuer=configured,
            rules=PUBLIC,
        )
    assert info.value.code == "sso_discovery_invalid"


@pytest.mark.parametrize(
    "configured",
    [
        "https://accounts.google.com/",
        "https://accounts.google.com.evil.example",
        "https://ACCOUNTS.google.com",
        "http://accounts.google.com",
    ],
    ids=["trailing-slash", "suffix", "case", "scheme"],
)
def test_issuer_must_match_exactly(configured: str):
    with pytest.raises(oidc.OidcError, match="enter exactly that"):
        oidc.parse_discovery(
            sample("google_openid-configuration.json"),
            issuer=configured,
            rules=PUBLIC,
        )


def document(**changes: Any) -> dict[str, Any]:
    base = {
        "issuer": "https://idp.example",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "jwks_uri": "https://idp.example/jwks",
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def parse(rules: FetchRules = PUBLIC, **changes: Any) -> oidc.Provider:
    return oidc.parse_discovery(
        document(**changes), issuer="https://idp.example", rules=rules
    )


@pytest.mark.parametrize(
    "published",
    [["none"], ["HS256"], ["HS256", "HS384", "HS512", "none"], []],
    ids=["none", "hs256", "hmac-and-none", "empty"],
)
def test_only_asymmetric_algorithms_count(published: list[str]):
    with pytest.raises(oidc.OidcError, match="algorithms we do not accept"):
        parse(id_token_signing_alg_values_supported=published)


def test_published_algorithms_are_intersected_with_ours():
    provider = parse(
        id_token_signing_alg_values_supported=["none", "HS256", "ES256", "RS256"]
    )
    assert provider.algorithms == ("ES256", "RS256")


@pytest.mark.parametrize(
    "name", ["authorization_endpoint", "token_endpoint", "jwks_uri"]
)
def test_endpoints_must_be_https(name: str):
    with pytest.raises(oidc.OidcError, match=name):
        parse(**{name: "http://idp.example/x"})
    with pytest.raises(oidc.OidcError, match=name):
        parse(**{name: None})
    # The operator's allow_private_urls also admits http (a test IdP).
    assert parse(LOCAL, **{name: "http://127.0.0.1:9/x"})


def test_the_code_flow_must_be_offered():
    with pytest.raises(oidc.OidcError, match="authorization code"):
        parse(response_types_supported=["id_token"])


@pytest.mark.parametrize(
    ("methods", "chosen"),
    [
        (None, "client_secret_basic"),
        (["client_secret_basic"], "client_secret_basic"),
        (
            ["private_key_jwt", "client_secret_basic", "client_secret_post"],
            "client_secret_post",
        ),
    ],
    ids=["absent", "basic-only", "both"],
)
def test_client_authentication_method(methods: list[str] | None, chosen: str):
    provider = parse(token_endpoint_auth_methods_supported=methods)
    assert provider.token_auth_method == chosen


def test_no_shared_secret_method_is_refused():
    with pytest.raises(oidc.OidcError, match="client_secret_post"):
        parse(token_endpoint_auth_methods_supported=["private_key_jwt", "none"])


def test_rfc_9207_support_is_recorded():
    assert not parse().sends_iss
    assert parse(authorization_response_iss_parameter_supported=True).sends_iss


def test_authorization_url_carries_state_nonce_and_pkce():
    verifier = oidc.new_code_verifier()
    url = oidc.authorization_url(
        parse(),
        client_id="client-1",
        redirect_uri="https://auth.example.com/sso/oidc/acme/callback",
        scope="openid email",
        state="state-1",
        nonce="nonce-1",
        code_verifier=verifier,
    )
    assert url.startswith("https://idp.example/authorize?")
    assert dict(parse_qsl(urlsplit(url).query)) == {
        "response_type": "code",
        "client_id": "client-1",
        "redirect_uri": "https://auth.example.com/sso/oidc/acme/callback",
        "scope": "openid email",
        "state": "state-1",
        "nonce": "nonce-1",
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    assert 43 <= len(verifier) <= 128
    assert verifier not in url

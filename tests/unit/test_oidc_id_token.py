"""ID token checks with crafted tokens: OIDC-1, nonce, issuer, audience,
times, keys, and Entra's multi-tenant issuer."""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from connectors import oidc
from connectors.oidc_id_token import IdToken, UnknownKey, verify_id_token
from tests.oidc_provider import (
    CLIENT_ID,
    OTHER_TENANT,
    TENANT,
    ec_key,
    ed_key,
    hmac_with_public_key,
    id_claims,
    public_jwks,
    rsa_key,
    sign,
    unsigned,
)

ISSUER = "https://idp.example"
NONCE = "nonce-sent-with-the-request"
ADMIN_SUBJECT = "admin-subject"
SKEW = 120
KEY = rsa_key("rsa-1")
JWKS = public_jwks(KEY)


def provider(**changes: Any) -> oidc.Provider:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "algorithms": ("RS256",),
        "token_auth_method": "client_secret_post",
    }
    values.update(changes)
    return oidc.Provider(**values)


def verify(token: str, *, jwks: dict[str, Any] = JWKS, **kw: Any) -> IdToken:
    options: dict[str, Any] = {
        "provider": provider(),
        "jwks": jwks,
        "client_id": CLIENT_ID,
        "nonce": NONCE,
        "now": time.time(),
        "skew_seconds": SKEW,
    }
    options.update(kw)
    return verify_id_token(token, **options)


def refused(token: str, code: str, **kw: Any) -> oidc.OidcError:
    with pytest.raises(oidc.OidcError) as info:
        verify(token, **kw)
    assert info.value.code == code, info.value
    return info.value


def claims(**extra: Any) -> dict[str, Any]:
    return id_claims(ISSUER, NONCE, **extra)


def test_a_good_token_passes():
    token = verify(sign(claims(email="ann@example.com"), KEY))
    assert token.issuer == ISSUER
    assert token.subject == "person-1"
    assert token.claims["email"] == "ann@example.com"
    assert token.tenant is None


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa_key("r"), "RS256"),
        (rsa_key("r"), "RS512"),
        (rsa_key("r"), "PS256"),
        (ec_key("e", "P-256"), "ES256"),
        (ec_key("e", "P-384"), "ES384"),
        (ed_key("d"), "EdDSA"),
    ],
    ids=["RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
)
def test_each_accepted_algorithm(key: Any, alg: str):
    token = sign(claims(), key, alg)
    assert verify(token, jwks=public_jwks(key), provider=provider(algorithms=(alg,)))


# OIDC-1: unsigned and algorithm-confused tokens, each claiming an admin.
FORGED = {
    "alg-none": lambda c: unsigned(c),
    "alg-none-with-signature": lambda c: unsigned(c) + "c2ln",
    "hs256-rsa-pem": lambda c: hmac_with_public_key(c, KEY),
}


@pytest.mark.parametrize("forge", FORGED.values(), ids=FORGED.keys())
@pytest.mark.parametrize(
    "published",
    [("RS256",), ("RS256", "HS256", "none")],
    ids=["published-rs256", "published-with-hs256-and-none"],
)
def test_oidc_1_unsigned_and_algorithm_confused_tokens(forge: Any, published: tuple):
    token = forge(claims(sub=ADMIN_SUBJECT))
    # Even a Provider that lists HS256 and none (discovery never builds
    # one) does not let them through.
    refused(token, "oidc_alg_refused", provider=provider(algorithms=published))


def test_oidc_1_alg_the_idp_does_not_publish():
    # RS384 is on our list but this IdP signs with RS256 only.
    refused(sign(claims(), KEY, "RS384"), "oidc_alg_refused")


def test_oidc_1_key_type_must_fit_the_algorithm():
    # ES256 under the RSA key's kid: no EC key by that id exists.
    attacker = ec_key(KEY.kid or "")
    token = sign(claims(sub=ADMIN_SUBJECT), attacker, "ES256")
    refused(
        token,
        "oidc_key_unknown",
        provider=provider(algorithms=("RS256", "ES256")),
    )


@pytest.mark.parametrize("source", ["jwk", "jku", "x5u"])
def test_key_sources_in_the_header_are_ignored(source: str):
    # EC keys: an embedded RSA jwk would overflow the header size limit
    # and be refused for that reason instead.
    idp_key, attacker = ec_key("ec-1"), ec_key("ec-1")
    header = {
        "jwk": attacker.as_dict(private=False),
        "jku": "https://evil.example/jwks",
        "x5u": "https://evil.example/cert.pem",
    }
    token = sign(
        claims(sub=ADMIN_SUBJECT), attacker, "ES256", header={source: header[source]}
    )
    refused(
        token,
        "oidc_signature_invalid",
        jwks=public_jwks(idp_key),
        provider=provider(algorithms=("ES256",)),
    )


def test_a_tampered_payload_fails_the_signature():
    head, _, signature = sign(claims(), KEY).split(".")
    other = sign(claims(sub=ADMIN_SUBJECT), rsa_key("x")).split(".")[1]
    refused(f"{head}.{other}.{signature}", "oidc_signature_invalid")


def test_unknown_kid_is_reported_as_such():
    error = refused(sign(claims(), rsa_key("rotated")), "oidc_key_unknown")
    assert isinstance(error, UnknownKey)


def test_no_kid_with_one_fitting_key():
    key = _without_kid(KEY)
    assert verify(sign(claims(), key), jwks=public_jwks(key))


def _without_kid(key: Any) -> Any:
    values = key.as_dict(private=True)
    values.pop("kid", None)
    return type(key).import_key(values)


@pytest.mark.parametrize(
    "entry",
    [{"use": "enc"}, {"alg": "RS512"}, {"kty": "oct"}],
    ids=["enc-key", "other-alg", "wrong-kty"],
)
def test_keys_not_meant_for_this_signature_are_skipped(entry: dict[str, Any]):
    published = dict(KEY.as_dict(private=False), **entry)
    refused(
        sign(claims(), KEY),
        "oidc_key_unknown",
        jwks={"keys": [published]},
    )


def test_small_rsa_keys_are_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = RSAKey.generate_key(1024, parameters={"kid": "small"}, private=True)
    refused(sign(claims(), small), "oidc_key_unknown", jwks=public_jwks(small))


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d.e", "!!!.e30.", "W10.e30.c2ln"],
    ids=[
        "empty",
        "one-part",
        "two-parts",
        "encrypted-shape",
        "bad-base64",
        "header-list",
    ],
)
def test_unreadable_tokens(token: str):
    refused(token, "oidc_id_token_invalid")


def test_access_tokens_are_not_id_tokens():
    refused(sign(claims(), KEY, header={"typ": "at+jwt"}), "oidc_id_token_invalid")


# --- OIDC-2: the nonce ------------------------------------------------------


@pytest.mark.parametrize(
    ("nonce", "seen"),
    [(None, "missing"), ("another-sign-in", "different"), ("", "different")],
    ids=["missing", "different", "empty"],
)
def test_oidc_2_nonce_must_be_the_one_sent(nonce: str | None, seen: str):
    token = sign(id_claims(ISSUER, nonce), KEY)
    assert refused(token, "oidc_nonce").details == {"nonce": seen}


def test_nonce_must_be_text():
    values = claims()
    values["nonce"] = 12
    refused(sign(values, KEY), "oidc_nonce")


# --- issuer, audience, times --------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    ["https://evil.example", ISSUER + "/", "https://IDP.example", None],
    ids=["other", "trailing-slash", "case", "missing"],
)
def test_issuer_must_be_exact(iss: str | None):
    refused(sign(dict(claims(), iss=iss) if iss else _drop("iss"), KEY), "oidc_issuer")


def _drop(name: str) -> dict[str, Any]:
    values = claims()
    values.pop(name)
    return values


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "another-client"},
        {"aud": ["another-client"]},
        {"aud": [CLIENT_ID, "another-client"]},
        {"aud": [CLIENT_ID, "another-client"], "azp": "another-client"},
        {"azp": "another-client"},
        {"aud": None},
    ],
    ids=[
        "other",
        "other-list",
        "several-no-azp",
        "several-other-azp",
        "other-azp",
        "missing",
    ],
)
def test_audience(changes: dict[str, Any]):
    values = {**claims(), **changes}
    refused(
        sign({k: v for k, v in values.items() if v is not None}, KEY), "oidc_audience"
    )


def test_several_audiences_with_our_azp_pass():
    values = claims(aud=[CLIENT_ID, "api"], azp=CLIENT_ID)
    assert verify(sign(values, KEY))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"exp": -SKEW - 1}, "oidc_expired"),
        ({"iat": SKEW + 30}, "oidc_not_yet_valid"),
        ({"nbf": SKEW + 30}, "oidc_not_yet_valid"),
    ],
    ids=["expired", "issued-in-the-future", "not-before"],
)
def test_times_beyond_the_skew(changes: dict[str, int], code: str):
    moment = int(time.time())
    values = claims(**{k: moment + v for k, v in changes.items()})
    refused(sign(values, KEY), code, now=moment)


def test_times_within_the_skew_pass():
    moment = int(time.time())
    values = claims(exp=moment - SKEW + 5, iat=moment + SKEW - 5, nbf=moment + SKEW - 5)
    assert verify(sign(values, KEY), now=moment)


@pytest.mark.parametrize(
    "changes",
    [{"exp": None}, {"iat": None}, {"exp": "tomorrow"}, {"iat": True}],
    ids=["no-exp", "no-iat", "text-exp", "bool-iat"],
)
def test_times_must_be_numbers(changes: dict[str, Any]):
    values = {k: v for k, v in {**claims(), **changes}.items() if v is not None}
    refused(sign(values, KEY), "oidc_id_token_invalid")


@pytest.mark.parametrize(
    "sub", [None, "", "x" * 256, 42], ids=["none", "empty", "long", "number"]
)
def test_subject_is_required(sub: Any):
    values = claims()
    values.pop("sub")
    if sub is not None:
        values["sub"] = sub
    refused(sign(values, KEY), "oidc_id_token_invalid")


# --- Entra ID multi-tenant --------------------------------------------------

TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"


def entra(tenant: str, **changes: Any) -> str:
    values = id_claims(TEMPLATE.replace("{tenantid}", tenant), NONCE, tid=tenant)
    values.update(changes)
    return sign({k: v for k, v in values.items() if v is not None}, KEY)


def verify_entra(token: str) -> IdToken:
    return verify(token, provider=provider(issuer=TEMPLATE), allowed_tenants=[TENANT])


def test_entra_allowed_tenant_passes():
    token = verify_entra(entra(TENANT))
    assert token.tenant == TENANT
    assert token.issuer == f"https://login.microsoftonline.com/{TENANT}/v2.0"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (lambda: entra(OTHER_TENANT), "oidc_tenant_not_allowed"),
        (
            lambda: entra(
                OTHER_TENANT, iss=f"https://login.microsoftonline.com/{TENANT}/v2.0"
            ),
            "oidc_issuer",
        ),
        (lambda: entra(TENANT, iss=TEMPLATE), "oidc_issuer"),
        (
            lambda: entra(TENANT, iss=f"https://evil.example/{TENANT}/v2.0"),
            "oidc_issuer",
        ),
        (
            lambda: entra(TENANT, iss=f"https://sts.windows.net/{TENANT}/"),
            "oidc_issuer",
        ),
        (lambda: entra(TENANT, tid=None), "oidc_issuer"),
        (lambda: entra(TENANT.upper(), tid=TENANT.upper()), "oidc_issuer"),
    ],
    ids=[
        "other-tenant",
        "tid-and-iss-disagree",
        "literal-template",
        "other-host",
        "v1-issuer",
        "no-tid",
        "upper-case-tid",
    ],
)
def test_entra_other_tenants_and_issuers_are_refused(token: Any, code: str):
    with pytest.raises(oidc.OidcError) as info:
        verify_entra(token())
    assert info.value.code == code

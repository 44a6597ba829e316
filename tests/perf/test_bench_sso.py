"""The cost of checking a federated sign-in, against the password check of a
password sign-in measured in the same run: one argon2 hash at the
installation's default cost is the baseline; a SAML answer verified as the
ACS does (xmlsec1 checks the signature in a process of its own) and an
OIDC ID token verified with joserfc are the ratios."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.perf._support import ms, report, timed

ROUNDS = 15
ISSUER = "https://idp.bench.test"


@pytest.mark.timeout(600)
def test_federated_checks_against_a_password_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from argon2 import PasswordHasher

    from connectors import saml as saml_connector
    from connectors.oidc import Provider
    from connectors.oidc_id_token import verify_id_token
    from idp.settings import load_settings
    from tests.oidc_provider import CLIENT_ID, id_claims, public_jwks, rsa_key, sign
    from tests.saml_idp import TestIdp, encode

    # The default cost of a fresh installation, not the tests' cheap one.
    cost = load_settings(environ={})["passwords"]
    hasher = PasswordHasher(
        time_cost=cost["argon2_time_cost"],
        memory_cost=cost["argon2_memory_kib"],
        parallelism=cost["argon2_parallelism"],
    )
    hashed = hasher.hash("a long bench passphrase")

    idp = TestIdp(tmp_path / "idp")
    entity_id = "http://localhost/sso/saml/bench/metadata"
    acs_url = "http://localhost/sso/saml/bench/acs"
    answers = [
        encode(
            idp.response_xml(
                now=datetime.now(UTC),
                audience=entity_id,
                recipient=acs_url,
                destination=acs_url,
                name_id=f"pat{n}@bench.test",
            )
        )
        for n in range(ROUNDS + 2)
    ]

    def verify_saml() -> None:
        saml_connector.verify_response(
            answers.pop(),
            idp_entity_id=idp.entity_id,
            idp_certificates=[idp.certificate_pem],
            sp_entity_id=entity_id,
            acs_url=acs_url,
            now=datetime.now(UTC),
            skew_seconds=120,
        )

    key = rsa_key()
    jwks = public_jwks(key)
    provider = Provider(
        issuer=ISSUER,
        authorization_endpoint=f"{ISSUER}/authorize",
        token_endpoint=f"{ISSUER}/token",
        jwks_uri=f"{ISSUER}/jwks",
        algorithms=("RS256",),
        token_auth_method="client_secret_post",
    )
    token = sign(id_claims(ISSUER, "n-1", email="pat@bench.test"), key)

    def verify_oidc() -> None:
        verify_id_token(
            token,
            provider=provider,
            jwks=jwks,
            client_id=CLIENT_ID,
            nonce="n-1",
            now=time.time(),
            skew_seconds=120,
        )

    baseline = timed(
        lambda: hasher.verify(hashed, "a long bench passphrase"), repeat=ROUNDS
    )
    saml_seconds = timed(verify_saml, repeat=ROUNDS)
    oidc_seconds = timed(verify_oidc, repeat=ROUNDS)
    report(
        "federated sign-in checks against a password check",
        [
            ("baseline: one password check (argon2, default cost)", ms(baseline)),
            (
                "SAML answer verified (xmlsec1, RSA-SHA256)",
                f"{ms(saml_seconds)}  ({saml_seconds / baseline:.2f}x)",
            ),
            (
                "OIDC ID token verified (joserfc, RS256)",
                f"{ms(oidc_seconds)}  ({oidc_seconds / baseline:.3f}x)",
            ),
        ],
    )

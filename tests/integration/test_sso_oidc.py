"""The OIDC relying party's service against providers on loopback: a real
one (oidc-provider-mock) for the honest flow, a stub for crafted tokens
(OIDC-1, OIDC-2, Entra multi-tenant, key rotation, an unreachable IdP)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import sqlalchemy as sa
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from idp.db import db
from idp.models import (
    AuditEvent,
    FederatedIdentity,
    Session,
    SsoConnection,
    SsoRequest,
    User,
)
from idp.services.context import Client, Context
from idp.services.errors import Conflict, Forbidden, InvalidInput
from idp.services.sso import Claims, SsoRefused, connections, oidc
from tests.conftest import make_user, make_workspace, table_rows
from tests.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_TENANT,
    TENANT,
    StubIdp,
    hmac_with_public_key,
    id_claims,
    rsa_key,
    running_mock,
    running_stub,
    sign,
    unsigned,
)

# oidc-provider-mock uses parts of authlib that authlib deprecates.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

BROWSER = "binding-of-the-browser-that-started"
ADMIN_SUBJECT = "admin-subject-at-the-idp"
CTX = Context.anonymous(Client(ip="203.0.113.7"))


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    overrides["sso"] = {"allow_private_urls": True}
    return overrides


@pytest.fixture
def workspace(app):  # type: ignore[no-untyped-def]
    return make_workspace(app)


@pytest.fixture
def stub() -> Iterator[StubIdp]:
    with running_stub() as running:
        yield running


def configure(app, workspace, issuer: str, **kw: Any) -> SsoConnection:  # type: ignore[no-untyped-def]
    options: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    options.update(kw)
    with app.app_context():
        connection = oidc.configure(
            Context.operator(), workspace, issuer=issuer, **options
        )
        db.session.expunge(connection)
        return connection


def start(app, workspace, binding: str = BROWSER, **kw: Any) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Begin a sign-in; the authorization URL's query, and ``url``."""
    with app.app_context():
        connection = connections.for_workspace(workspace.id)
        url = oidc.start(CTX, workspace, connection, binding=binding, **kw)
    return {**dict(parse_qsl(urlsplit(url).query)), "url": url}


def callback(app, workspace, args: dict[str, str], binding: str | None = BROWSER):  # type: ignore[no-untyped-def]
    with app.app_context():
        connection = connections.for_workspace(workspace.id)
        return oidc.callback(CTX, workspace, connection, args=args, binding=binding)


def failures(app) -> list[tuple[str | None, dict[str, Any]]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        events = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "sso.signin_failure")
            .order_by(AuditEvent.id)
        )
        return [(e.reason, e.details) for e in events]


def refused(
    app,  # type: ignore[no-untyped-def]
    workspace,
    args: dict[str, str],
    reason: str,
    binding: str | None = BROWSER,
) -> SsoRefused:
    """The callback is refused for ``reason``, audited once, and no member,
    identity or session came of it."""
    before = table_rows(app, User, FederatedIdentity, Session)
    seen = len(failures(app))
    with pytest.raises(SsoRefused) as info:
        callback(app, workspace, args, binding)
    assert info.value.code == reason, info.value.message
    assert info.value.audited
    events = failures(app)
    assert len(events) == seen + 1
    assert events[-1][0] == reason
    assert events[-1][1]["protocol"] == "oidc"
    assert table_rows(app, User, FederatedIdentity, Session) == before
    return info.value


def answer(stub: StubIdp, sent: dict[str, str], **claims: Any) -> dict[str, str]:
    """The stub's token endpoint will give an ID token for this sign-in;
    the callback query the IdP would send."""
    stub.id_token = sign(id_claims(stub.issuer, sent["nonce"], **claims), stub.key)
    return {"code": "code-1", "state": sent["state"]}


# --- configuration ----------------------------------------------------------


def test_configure_by_discovery_against_a_real_provider(app, workspace):
    with running_mock() as provider:
        connection = configure(app, workspace, provider.issuer)
    assert connection.oidc_issuer == provider.issuer
    assert connection.oidc_discovery["token_endpoint"] == (
        provider.issuer + "/oauth2/token"
    )
    assert connection.oidc_jwks["keys"]
    assert connection.oidc_scopes == "openid email profile"
    assert CLIENT_SECRET not in connection.oidc_client_secret
    with app.app_context():
        assert connections.decrypt(connection.oidc_client_secret) == CLIENT_SECRET
        event = db.session.scalar(
            sa.select(AuditEvent).where(
                AuditEvent.action == "sso.connection_configured"
            )
        )
        assert event.details["issuer"] == provider.issuer
        assert event.details["protocol"] == "oidc"
        assert CLIENT_SECRET not in json.dumps(event.details)


def test_an_empty_secret_keeps_the_stored_one(app, workspace, stub):
    configure(app, workspace, stub.issuer)
    connection = configure(
        app, workspace, stub.issuer, client_secret="", scopes="openid"
    )
    with app.app_context():
        assert connections.decrypt(connection.oidc_client_secret) == CLIENT_SECRET
    assert connection.oidc_scopes == "openid"
    connection = configure(app, workspace, stub.issuer, scopes=" ")
    assert connection.oidc_scopes == "openid email profile"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"client_secret": None}, "client_secret_required"),
        ({"client_secret": ""}, "client_secret_required"),
        ({"client_id": " "}, "invalid_client_id"),
        ({"scopes": "email profile"}, "invalid_scopes"),
        ({"scopes": 'openid "email"'}, "invalid_scopes"),
        ({"issuer": "ftp://idp.example"}, "invalid_issuer"),
        ({"issuer": "STUB?x=1"}, "invalid_issuer"),
    ],
    ids=[
        "no-secret",
        "empty-secret",
        "no-client-id",
        "no-openid",
        "bad-scope",
        "scheme",
        "query",
    ],
)
def test_configure_refuses_bad_input(app, workspace, stub, changes, code):
    options = {"issuer": stub.issuer, **changes}
    options["issuer"] = options["issuer"].replace("STUB", stub.issuer)
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, **options)
    assert info.value.code == code
    with app.app_context():
        assert connections.for_workspace(workspace.id) is None


def test_configure_an_unreachable_issuer(app, workspace, stub):
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, stub.issuer + "/nowhere")
    assert info.value.code == "sso_discovery_failed"
    assert "404" in info.value.message


def test_configure_refuses_a_document_for_another_issuer(app, workspace, stub):
    stub.published_issuer = "https://evil.example"
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, stub.issuer)
    assert info.value.code == "sso_discovery_invalid"
    assert "https://evil.example" in info.value.message


def test_configure_refuses_an_idp_with_only_hmac(app, workspace, stub):
    stub.algorithms = ["HS256", "none"]
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, stub.issuer)
    assert info.value.code == "sso_discovery_invalid"


def test_loopback_is_refused_unless_the_operator_allows_it(request, overrides, stub):
    overrides["sso"] = {"allow_private_urls": False}
    app = request.getfixturevalue("app")
    workspace = make_workspace(app)
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, stub.issuer)
    assert info.value.code == "invalid_issuer"
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, stub.issuer.replace("http:", "https:"))
    assert info.value.code == "sso_discovery_failed"
    assert "allow_private_urls" in info.value.message
    assert stub.hits == {}


def test_only_admins_configure(app, workspace, stub):
    member = make_user(app, workspace, "ro@example.com")
    with app.app_context():
        user = db.session.get(User, member.id)
        with pytest.raises(Forbidden):
            oidc.configure(
                Context.for_user(user, Client()),
                workspace,
                issuer=stub.issuer,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
            )


def test_a_saml_connection_must_be_removed_first(app, workspace, stub):
    with app.app_context():
        db.session.add(SsoConnection(workspace_id=workspace.id, protocol="saml"))
        db.session.commit()
    with pytest.raises(Conflict):
        configure(app, workspace, stub.issuer)


def test_another_issuer_unlinks_the_identities(app, workspace, stub):
    configure(app, workspace, stub.issuer)
    _link(app, workspace, "ann@example.com", "sub-at-first-idp")
    with running_stub() as other:
        configure(app, workspace, other.issuer)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(FederatedIdentity.id))) == 0
        event = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "sso.connection_configured")
            .order_by(AuditEvent.id.desc())
        ).first()
        assert event.details["identities_unlinked"] == 1


def _link(app, workspace, email: str, subject: str, role: str = "read_only") -> User:  # type: ignore[no-untyped-def]
    user = make_user(app, workspace, email, role=role)
    with app.app_context():
        connection = connections.for_workspace(workspace.id)
        db.session.add(
            FederatedIdentity(
                workspace_id=workspace.id,
                connection_id=connection.id,
                user_id=user.id,
                subject=subject,
            )
        )
        db.session.commit()
    return user


# --- the honest flow ----------------------------------------------------------


def test_sign_in_through_a_real_provider(app, workspace):
    with running_mock() as provider:
        configure(app, workspace, provider.issuer)
        provider.set_user(
            "ann-at-idp",
            {
                "email": "ann@example.com",
                "email_verified": True,
                "given_name": "Ann",
                "family_name": "Lee",
                "name": "Ann Lee",
                "groups": ["staff"],
            },
        )
        sent = start(app, workspace, return_to="/portal/profile")
        args = provider.authorize(sent["url"], "ann-at-idp")
        claims, request = callback(app, workspace, args)
    assert isinstance(claims, Claims)
    assert claims.issuer == provider.issuer
    assert claims.subject == "ann-at-idp"
    assert claims.email == "ann@example.com"
    assert claims.email_verified is True
    assert (claims.first_name, claims.last_name, claims.full_name) == (
        "Ann",
        "Lee",
        "Ann Lee",
    )
    assert claims.groups == ("staff",)
    assert request.return_to == "/portal/profile"
    assert failures(app) == []
    with app.app_context():
        assert db.session.get(SsoRequest, args["state"]) is None


def test_the_request_carries_state_nonce_and_pkce(app, workspace, stub):
    configure(app, workspace, stub.issuer)
    sent = start(app, workspace)
    assert sent["url"].startswith(stub.base + "/authorize?")
    assert sent["response_type"] == "code"
    assert sent["client_id"] == CLIENT_ID
    assert (
        sent["redirect_uri"] == f"http://localhost/sso/oidc/{workspace.slug}/callback"
    )
    assert sent["code_challenge_method"] == "S256"
    with app.app_context():
        row = db.session.get(SsoRequest, sent["state"])
        assert row.nonce == sent["nonce"]
        verifier = connections.decrypt(row.code_verifier)
    assert verifier not in row.code_verifier
    assert sent["code_challenge"] == create_s256_code_challenge(verifier)
    other = start(app, workspace)
    assert other["state"] != sent["state"]
    assert other["nonce"] != sent["nonce"]

    callback(app, workspace, answer(stub, sent))
    (sent_to_token,) = stub.token_requests
    assert sent_to_token["form"] == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": sent["redirect_uri"],
        "code_verifier": verifier,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert sent_to_token["authorization"] is None


def test_client_secret_basic_when_the_idp_offers_only_that(app, workspace, stub):
    stub.auth_methods = ["client_secret_basic", "private_key_jwt"]
    configure(app, workspace, stub.issuer)
    callback(app, workspace, answer(stub, start(app, workspace)))
    (sent,) = stub.token_requests
    assert "client_secret" not in sent["form"]
    scheme, _, value = sent["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == f"{CLIENT_ID}:{CLIENT_SECRET}"


def test_a_test_connection_is_kept_for_its_result(app, workspace, stub):
    configure(app, workspace, stub.issuer)
    sent = start(app, workspace, purpose="test")
    _, request = callback(app, workspace, answer(stub, sent))
    assert request.purpose == "test"
    refused(app, workspace, {"code": "c", "state": sent["state"]}, "oidc_state")


# --- OIDC-1 -----------------------------------------------------------------

FORGED = {
    "alg-none": lambda claims, stub: unsigned(claims),
    "hs256-with-the-rsa-pem": lambda claims, stub: hmac_with_public_key(
        claims, stub.key
    ),
    "attacker-key-with-the-idp-kid": lambda claims, stub: sign(
        claims, rsa_key(stub.key.kid)
    ),
}
FORGED_REASON = {
    "alg-none": "oidc_alg_refused",
    "hs256-with-the-rsa-pem": "oidc_alg_refused",
    "attacker-key-with-the-idp-kid": "oidc_signature_invalid",
}


@pytest.mark.parametrize("name", FORGED)
@pytest.mark.parametrize(
    "published",
    [["RS256"], ["RS256", "HS256", "none"]],
    ids=["rs256", "also-hmac-none"],
)
def test_oidc_1_unsigned_and_algorithm_confused_tokens(
    app, workspace, stub, name, published
):
    stub.algorithms = published
    configure(app, workspace, stub.issuer)
    _link(app, workspace, "boss@example.com", ADMIN_SUBJECT, role="admin")
    sent = start(app, workspace)
    claims = id_claims(stub.issuer, sent["nonce"], sub=ADMIN_SUBJECT)
    stub.id_token = FORGED[name](claims, stub)
    refused(app, workspace, {"code": "c", "state": sent["state"]}, FORGED_REASON[name])


# --- OIDC-2 -----------------------------------------------------------------


@pytest.fixture
def configured(app, workspace, stub) -> StubIdp:  # type: ignore[no-untyped-def]
    configure(app, workspace, stub.issuer)
    return stub


def test_oidc_2_a_state_this_browser_was_never_given(app, workspace, configured):
    start(app, workspace)
    error = refused(
        app, workspace, {"code": "c", "state": "never-issued"}, "oidc_state"
    )
    assert failures(app)[-1][1]["state"] == "request_unknown"
    assert "not started here" in error.message
    assert configured.token_requests == []


@pytest.mark.parametrize(
    "binding", ["another-browser", None], ids=["other", "no-cookie"]
)
def test_oidc_2_a_state_from_another_browser(app, workspace, configured, binding):
    sent = start(app, workspace)
    args = answer(configured, sent)
    refused(app, workspace, args, "oidc_state", binding=binding)
    assert failures(app)[-1][1]["state"] == "request_other_browser"
    assert configured.token_requests == []
    # The rightful browser may still finish.
    assert callback(app, workspace, args)[0].subject == "person-1"


def test_oidc_2_a_state_of_another_workspace(app, workspace, configured):
    other = make_workspace(app, "Other")
    configure(app, other, configured.issuer)
    sent = start(app, other)
    refused(app, workspace, answer(configured, sent), "oidc_state")


def test_oidc_2_an_expired_state(app, workspace, configured, clock):
    sent = start(app, workspace)
    clock.advance(seconds=601)
    refused(app, workspace, answer(configured, sent), "oidc_state")
    assert failures(app)[-1][1]["state"] == "request_expired"


@pytest.mark.parametrize(
    ("nonce", "seen"), [(None, "missing"), ("other-nonce", "different")]
)
def test_oidc_2_missing_or_different_nonce(app, workspace, configured, nonce, seen):
    sent = start(app, workspace)
    configured.id_token = sign(id_claims(configured.issuer, nonce), configured.key)
    refused(app, workspace, {"code": "c", "state": sent["state"]}, "oidc_nonce")
    assert failures(app)[-1][1]["nonce"] == seen


def test_oidc_2_a_nonce_of_another_sign_in(app, workspace, configured):
    first, second = start(app, workspace), start(app, workspace)
    configured.id_token = sign(
        id_claims(configured.issuer, first["nonce"]), configured.key
    )
    refused(app, workspace, {"code": "c", "state": second["state"]}, "oidc_nonce")


def test_oidc_2_the_same_callback_replayed(app, workspace, configured):
    args = answer(configured, start(app, workspace))
    callback(app, workspace, args)
    refused(app, workspace, args, "oidc_state")
    assert len(configured.token_requests) == 1


def test_oidc_2_a_state_works_once_even_when_the_sign_in_fails(
    app, workspace, configured
):
    sent = start(app, workspace)
    configured.token_status = 400
    configured.token_answer = {"error": "invalid_grant"}
    refused(
        app,
        workspace,
        {"code": "c", "state": sent["state"]},
        "oidc_token_exchange_failed",
    )
    assert failures(app)[-1][1]["error"] == "invalid_grant"
    configured.token_status = 200
    configured.token_answer = None
    refused(app, workspace, answer(configured, sent), "oidc_state")


def test_oidc_2_no_userinfo_fall_back(app, workspace, configured):
    # The ID token lacks the email; nothing asks the userinfo endpoint.
    claims, _ = callback(app, workspace, answer(configured, start(app, workspace)))
    assert claims.email is None
    assert set(configured.hits) == {
        "/.well-known/openid-configuration",
        "/jwks",
        "/token",
    }


def test_a_token_answer_without_an_id_token(app, workspace, configured):
    sent = start(app, workspace)
    configured.token_answer = {"access_token": "a", "token_type": "Bearer"}
    refused(
        app,
        workspace,
        {"code": "c", "state": sent["state"]},
        "oidc_token_exchange_failed",
    )


@pytest.mark.parametrize(
    ("args", "status"),
    [({"state": "s"}, 400), ({"code": "c"}, 400), ({}, 400)],
    ids=["no-code", "no-state", "nothing"],
)
def test_an_incomplete_answer(app, workspace, configured, args, status):
    error = refused(app, workspace, args, "oidc_malformed")
    assert error.status == status


def test_the_idp_reports_an_error(app, workspace, configured):
    sent = start(app, workspace)
    error = refused(
        app,
        workspace,
        {
            "error": "access_denied",
            "error_description": "<b>x</b>",
            "state": sent["state"],
        },
        "oidc_idp_error",
    )
    assert failures(app)[-1][1]["error"] == "access_denied"
    assert "<b>" not in error.message
    refused(app, workspace, {"error": "bad\r\nline"}, "oidc_idp_error")
    assert failures(app)[-1][1]["error"] == "unreadable"


# --- issuer of the answer (RFC 9207) ----------------------------------------


def test_the_iss_parameter_must_name_our_idp(app, workspace, configured):
    sent = start(app, workspace)
    args = {**answer(configured, sent), "iss": "https://evil.example"}
    refused(app, workspace, args, "oidc_issuer")
    assert configured.token_requests == []
    sent = start(app, workspace)
    args = {**answer(configured, sent), "iss": configured.issuer}
    assert callback(app, workspace, args)[0].issuer == configured.issuer


def test_the_iss_parameter_is_required_when_the_idp_promises_it(app, workspace, stub):
    stub.sends_iss = True
    configure(app, workspace, stub.issuer)
    refused(app, workspace, answer(stub, start(app, workspace)), "oidc_issuer")


# --- Entra ID multi-tenant --------------------------------------------------


@pytest.fixture
def entra() -> Iterator[StubIdp]:
    with running_stub(path="/common/v2.0") as stub:
        stub.published_issuer = stub.base + "/{tenantid}/v2.0"
        yield stub


def entra_answer(stub: StubIdp, sent: dict[str, str], tid: str, iss: str | None = None):  # type: ignore[no-untyped-def]
    claims = id_claims(
        iss or f"{stub.base}/{tid}/v2.0",
        sent["nonce"],
        tid=tid,
        email="ann@example.com",
        preferred_username="ann@example.com",
    )
    stub.id_token = sign(claims, stub.key)
    return {"code": "c", "state": sent["state"]}


def test_entra_needs_allowed_tenants(app, workspace, entra):
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, entra.issuer)
    assert info.value.code == "sso_tenants_required"
    with pytest.raises(InvalidInput) as info:
        configure(app, workspace, entra.issuer, allowed_tenants=["contoso.com"])
    assert info.value.code == "invalid_tenant"


def test_entra_allowed_tenant_signs_in(app, workspace, entra):
    connection = configure(
        app, workspace, entra.issuer, allowed_tenants=[TENANT.upper()]
    )
    assert connection.oidc_allowed_tenants == [TENANT]
    claims, _ = callback(
        app, workspace, entra_answer(entra, start(app, workspace), TENANT)
    )
    assert claims.issuer == f"{entra.base}/{TENANT}/v2.0"
    assert claims.details == {"tenant": TENANT}
    # Entra sends no email_verified: the address is not vouched for.
    assert claims.email_verified is False


def test_entra_other_tenant_is_refused(app, workspace, entra):
    configure(app, workspace, entra.issuer, allowed_tenants=[TENANT])
    args = entra_answer(entra, start(app, workspace), OTHER_TENANT)
    refused(app, workspace, args, "oidc_tenant_not_allowed")
    assert failures(app)[-1][1]["tenant"] == OTHER_TENANT


@pytest.mark.parametrize(
    "iss",
    [
        "https://login.microsoftonline.com/{t}/v2.0",
        "{base}/{other}/v2.0",
        "{base}/{{tenantid}}/v2.0",
        "{base}/common/v2.0",
    ],
    ids=["other-host", "other-tenant-iss", "literal-template", "alias"],
)
def test_entra_issuer_not_matching_the_template(app, workspace, entra, iss):
    configure(app, workspace, entra.issuer, allowed_tenants=[TENANT])
    iss = iss.format(base=entra.base, t=TENANT, other=OTHER_TENANT)
    args = entra_answer(entra, start(app, workspace), TENANT, iss=iss)
    refused(app, workspace, args, "oidc_issuer")


# --- keys: cache, rotation, an unreachable IdP ------------------------------


def test_the_jwks_is_cached(app, workspace, configured, clock):
    assert configured.hits["/jwks"] == 1
    for _ in range(2):
        callback(app, workspace, answer(configured, start(app, workspace)))
    assert configured.hits["/jwks"] == 1
    clock.advance(seconds=3601)
    at = clock.now.timestamp()
    callback(app, workspace, answer(configured, start(app, workspace), at=at))
    assert configured.hits["/jwks"] == 2


def test_unknown_kid_fetches_the_jwks_once_and_accepts(
    app, workspace, configured, clock
):
    clock.advance(seconds=120)
    configured.keys = [rsa_key("rotated"), *configured.keys]
    claims, _ = callback(app, workspace, answer(configured, start(app, workspace)))
    assert claims.subject == "person-1"
    assert configured.hits["/jwks"] == 2
    with app.app_context():
        connection = connections.for_workspace(workspace.id)
        assert connection.oidc_jwks["keys"][0]["kid"] == "rotated"


def test_unknown_kid_after_the_refetch_is_refused(app, workspace, configured, clock):
    clock.advance(seconds=120)
    sent = start(app, workspace)
    configured.id_token = sign(
        id_claims(configured.issuer, sent["nonce"]), rsa_key("nobody-publishes-me")
    )
    refused(app, workspace, {"code": "c", "state": sent["state"]}, "oidc_key_unknown")
    assert configured.hits["/jwks"] == 2


def test_unknown_kid_right_after_a_fetch_does_not_refetch(app, workspace, configured):
    configured.keys = [rsa_key("rotated")]
    refused(
        app, workspace, answer(configured, start(app, workspace)), "oidc_key_unknown"
    )
    assert configured.hits["/jwks"] == 1


def test_jwks_unreachable_fails_only_the_new_sign_in(app, workspace, configured, clock):
    clock.advance(seconds=3601)
    configured.jwks_status = 500
    error = refused(
        app,
        workspace,
        answer(configured, start(app, workspace), at=clock.now.timestamp()),
        "oidc_idp_unreachable",
    )
    assert error.status == 502
    assert failures(app)[-1][1]["endpoint"] == "jwks"
    assert "could not be reached" in error.message
    # Once it answers again, sign-in works.
    configured.jwks_status = 200
    assert callback(
        app,
        workspace,
        answer(configured, start(app, workspace), at=clock.now.timestamp()),
    )


def test_token_endpoint_unreachable(app, workspace):
    with running_stub() as stub:
        configure(app, workspace, stub.issuer)
        sent = start(app, workspace)
    refused(
        app, workspace, {"code": "c", "state": sent["state"]}, "oidc_idp_unreachable"
    )
    assert failures(app)[-1][1]["endpoint"] == "token"

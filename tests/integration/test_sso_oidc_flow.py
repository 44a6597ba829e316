"""OIDC sign-in end to end through the web endpoints: a browser (the test
client) starts at /sso/oidc/<slug>/start, signs in at a provider on
loopback and comes back to the callback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import AuditEvent, FederatedIdentity, Session, User
from idp.services.context import Context
from idp.services.sso import connections, oidc
from tests.conftest import (
    make_user,
    make_workspace,
    session_cookie,
    signed_in,
    table_rows,
)
from tests.integration.sso_helpers import add_domain
from tests.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    MockProvider,
    StubIdp,
    hmac_with_public_key,
    id_claims,
    running_mock,
    running_stub,
    sign,
    unsigned,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:oidc_provider_mock"),
]

ADMIN_SUBJECT = "boss-at-the-idp"


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    overrides["sso"] = {"allow_private_urls": True}
    return overrides


@pytest.fixture
def workspace(app):  # type: ignore[no-untyped-def]
    return make_workspace(app)


def configure(app, workspace, issuer: str) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        oidc.configure(
            Context.operator(),
            workspace,
            issuer=issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
    add_domain(app, workspace, "example.com", verified_by="operator")


@pytest.fixture
def mock(app, workspace) -> Iterator[MockProvider]:  # type: ignore[no-untyped-def]
    with running_mock() as provider:
        configure(app, workspace, provider.issuer)
        yield provider


@pytest.fixture
def stub(app, workspace) -> Iterator[StubIdp]:  # type: ignore[no-untyped-def]
    with running_stub() as running:
        configure(app, workspace, running.issuer)
        yield running


def go_to_idp(client, workspace, rd: str | None = None) -> str:  # type: ignore[no-untyped-def]
    query = f"?{urlencode({'rd': rd})}" if rd else ""
    response = client.get(f"/sso/oidc/{workspace.slug}/start{query}")
    assert response.status_code == 302, response.get_data(as_text=True)
    return response.headers["Location"]


def come_back(client, workspace, args: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.get(f"/sso/oidc/{workspace.slug}/callback?{urlencode(args)}")


def failure_reasons(app) -> list[str | None]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(AuditEvent.reason)
                .where(AuditEvent.action == "sso.signin_failure")
                .order_by(AuditEvent.id)
            )
        )


def test_sign_in_through_a_real_provider(app, client, workspace, mock):
    make_user(app, workspace, "ann@example.com")
    mock.set_user(
        "ann-at-idp",
        {"email": "ann@example.com", "email_verified": True, "name": "Ann Lee"},
    )
    url = go_to_idp(client, workspace, rd="/portal/profile")
    binding = _binding_of(client)
    args = mock.authorize(url, "ann-at-idp")
    response = come_back(client, workspace, args)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert session_cookie(client)
    assert client.get("/portal/profile").status_code == 200
    with app.app_context():
        identity = db.session.scalar(sa.select(FederatedIdentity))
        assert identity.subject == "ann-at-idp"
        assert db.session.scalar(
            sa.select(AuditEvent).where(AuditEvent.action == "sso.signin_success")
        )
    assert failure_reasons(app) == []
    # The same callback URL again, even with the binding cookie: refused.
    replay = app.test_client()
    replay.set_cookie(*binding)
    assert come_back(replay, workspace, args).status_code == 403
    assert failure_reasons(app) == ["oidc_state"]
    assert session_cookie(replay) is None


def _binding_of(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    for name in ("portcullis_sso", "__Host-portcullis_sso"):
        cookie = client.get_cookie(name)
        if cookie is not None:
            return name, cookie.value
    raise AssertionError("no SSO binding cookie")


def test_an_unverified_email_does_not_link(app, client, workspace, mock):
    # Entra-like: no email_verified claim at all.
    make_user(app, workspace, "ann@example.com")
    mock.set_user("mallory", {"email": "ann@example.com"})
    args = mock.authorize(go_to_idp(client, workspace), "mallory")
    assert come_back(client, workspace, args).status_code == 403
    assert failure_reasons(app) == ["sso_email_unverified"]
    assert session_cookie(client) is None


FORGED = {
    "alg-none": lambda claims, stub: unsigned(claims),
    "hs256-with-the-rsa-pem": lambda claims, stub: hmac_with_public_key(
        claims, stub.key
    ),
}


@pytest.mark.parametrize("name", FORGED)
def test_oidc_1_forged_tokens_sign_nobody_in(app, client, workspace, stub, name):
    boss = make_user(app, workspace, "boss@example.com", role="admin")
    with app.app_context():
        connection = connections.for_workspace(workspace.id)
        db.session.add(
            FederatedIdentity(
                workspace_id=workspace.id,
                connection_id=connection.id,
                user_id=boss.id,
                subject=ADMIN_SUBJECT,
            )
        )
        db.session.commit()
    before = table_rows(app, User, Session)
    sent = dict(parse_qsl(urlsplit(go_to_idp(client, workspace)).query))
    claims = id_claims(stub.issuer, sent["nonce"], sub=ADMIN_SUBJECT)
    stub.id_token = FORGED[name](claims, stub)
    response = come_back(client, workspace, {"code": "c", "state": sent["state"]})
    assert response.status_code == 403
    assert failure_reasons(app) == ["oidc_alg_refused"]
    assert session_cookie(client) is None
    assert table_rows(app, User, Session) == before


def test_oidc_2_login_csrf_a_callback_in_another_browser(app, client, workspace, stub):
    # The attacker starts a sign-in and sends the victim the callback URL.
    make_user(app, workspace, "mallory@example.com")
    sent = dict(parse_qsl(urlsplit(go_to_idp(client, workspace)).query))
    stub.id_token = sign(
        id_claims(
            stub.issuer,
            sent["nonce"],
            email="mallory@example.com",
            email_verified=True,
        ),
        stub.key,
    )
    victim = app.test_client()
    response = come_back(victim, workspace, {"code": "c", "state": sent["state"]})
    assert response.status_code == 403
    assert "another browser" in response.get_data(as_text=True)
    assert session_cookie(victim) is None
    assert failure_reasons(app) == ["oidc_state"]
    assert stub.token_requests == []


def test_an_unreachable_idp_fails_only_new_sign_ins(app, workspace):
    make_user(app, workspace, "ann@example.com")
    member = signed_in(app, "ann@example.com")
    browser = app.test_client()
    with running_stub() as stub:
        configure(app, workspace, stub.issuer)
        sent = dict(parse_qsl(urlsplit(go_to_idp(browser, workspace)).query))
    # The IdP is gone: the federated sign-in fails with a clear page ...
    response = come_back(browser, workspace, {"code": "c", "state": sent["state"]})
    assert response.status_code == 502
    assert "could not be reached" in response.get_data(as_text=True)
    assert failure_reasons(app) == ["oidc_idp_unreachable"]
    # ... and the member signed in with a password carries on.
    assert member.get("/portal/profile").status_code == 200


def test_no_sso_secret_reaches_the_logs(app, client, workspace, mock, caplog):
    """16.2.5: the client secret, the authorization code, the PKCE verifier
    and the cookies of a federated sign-in appear in no log line, at any
    level (SQL statements and parameters included). The state and nonce
    are not secrets: they travel in the redirect URL, and the state only
    works in the browser holding the binding cookie."""
    import logging

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    make_user(app, workspace, "ann@example.com")
    mock.set_user("ann-at-idp", {"email": "ann@example.com", "email_verified": True})
    url = go_to_idp(client, workspace)
    binding = _binding_of(client)[1]
    with app.app_context():
        from idp.models import SsoRequest

        stored = db.session.scalars(sa.select(SsoRequest)).one().code_verifier
        verifier = connections.decrypt(stored)
    args = mock.authorize(url, "ann-at-idp")
    assert come_back(client, workspace, args).status_code == 302
    secrets = [CLIENT_SECRET, args["code"], verifier, binding, session_cookie(client)]
    logged = caplog.text
    assert logged, "nothing was logged: the test would prove nothing"
    for secret in secrets:
        assert secret and secret not in logged

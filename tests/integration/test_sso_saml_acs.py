"""SAML sign-in end to end through the web endpoints: a browser (the test
client) starts at /sso/saml/<slug>/start, which sets the binding cookie
and sends it to the test IdP, and comes back by POSTing the IdP's Response
to the ACS. The attacks of cases/saml.md, at the ACS."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    FederatedIdentity,
    SamlAssertionSeen,
    Session,
    SsoRequest,
    User,
)
from idp.services.context import Context
from idp.services.sso import connections
from idp.services.sso import saml as service
from tests import saml_idp
from tests.conftest import (
    FakeClock,
    make_user,
    make_workspace,
    session_cookie,
    table_rows,
)
from tests.integration.sso_helpers import add_domain, events, set_connection
from tests.saml_idp import TestIdp, encode

TABLES = (SsoRequest, SamlAssertionSeen, FederatedIdentity, User, Session)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def workspace(app, idp: TestIdp):  # type: ignore[no-untyped-def]
    workspace = make_workspace(app, "Acme")
    with app.app_context():
        service.configure(
            Context.operator(),
            workspace,
            entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            certificates=[idp.certificate_pem],
        )
    add_domain(app, workspace, "acme.example", verified_by="operator")
    make_user(app, workspace, "ann@acme.example")
    return workspace


class Browser:
    """A test client going through the SAML sign-in."""

    def __init__(self, app, workspace, idp: TestIdp, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
        self.app, self.workspace, self.idp, self.clock = app, workspace, idp, clock
        self.client = app.test_client()
        with app.app_context():
            self.entity_id = connections.saml_entity_id(workspace)
            self.acs_url = connections.saml_acs_url(workspace)
            self.sp_cert = app.extensions["idp_keys"].saml[0].certificate_pem

    def start(self, rd: str | None = None) -> str:
        query = f"?rd={rd}" if rd else ""
        response = self.client.get(f"/sso/saml/{self.workspace.slug}/start{query}")
        assert response.status_code == 302, response.get_data(as_text=True)
        location = response.headers["Location"]
        assert location.startswith(self.idp.sso_url + "?")
        seen = self.idp.read_request(location, self.sp_cert)
        assert seen.signature_valid and seen.acs_url == self.acs_url
        return seen.id

    def xml(self, request_id: str | None, **options: Any) -> str:
        values: dict[str, Any] = {
            "now": self.clock.now,
            "audience": self.entity_id,
            "recipient": self.acs_url,
            "destination": self.acs_url,
            "in_response_to": request_id,
            "name_id": "ann@acme.example",
        }
        values.update(options)
        return self.idp.response_xml(**values)

    def post(self, saml_response: str, relay_state: str = ""):  # type: ignore[no-untyped-def]
        return self.client.post(
            f"/sso/saml/{self.workspace.slug}/acs",
            data={"SAMLResponse": saml_response, "RelayState": relay_state},
        )


@pytest.fixture
def browser(app, workspace, idp: TestIdp, clock: FakeClock) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(app, workspace, idp, clock)


def failure_reasons(app) -> list[str | None]:  # type: ignore[no-untyped-def]
    return [e.reason for e in events(app, "sso.signin_failure")]


def test_sign_in_through_the_test_idp(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    request_id = browser.start(rd="/portal/profile")
    response = browser.post(
        encode(browser.xml(request_id, attributes={"givenName": ["Ann"]})), request_id
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    assert session_cookie(browser.client)
    assert browser.client.get("/portal/profile").status_code == 200
    [success] = events(app, "sso.signin_success")
    assert success.details["idp_initiated"] is False
    assert success.details["assertion_id"]
    with app.app_context():
        identity = db.session.scalar(sa.select(FederatedIdentity))
        assert identity is not None and identity.subject == "ann@acme.example"


def test_the_same_response_posted_again_is_refused(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    saml_response = encode(browser.xml(browser.start()))
    assert browser.post(saml_response).status_code == 302
    thief = Browser(app, browser.workspace, browser.idp, browser.clock)
    before = table_rows(app, *TABLES)
    for client in (browser, thief):
        assert client.post(saml_response).status_code == 403
    assert failure_reasons(app) == ["saml_replayed", "saml_replayed"]
    assert table_rows(app, *TABLES) == before
    assert session_cookie(thief.client) is None


def test_an_answer_posted_from_another_browser_is_refused(
    app, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    """Login CSRF (SECURITY.md 7.6.2): the request is bound to the browser
    that started it."""
    saml_response = encode(browser.xml(browser.start()))
    attacker = Browser(app, browser.workspace, browser.idp, browser.clock)
    attacker.start()  # its own cookie, another request
    before = table_rows(app, *TABLES)
    assert attacker.post(saml_response).status_code == 403
    assert failure_reasons(app) == ["request_other_browser"]
    assert table_rows(app, *TABLES) == before
    assert session_cookie(attacker.client) is None
    assert browser.post(saml_response).status_code == 302


FORGED = "root@acme.example"
ACS_ATTACKS = [
    (
        "wrapped",
        lambda b, r: encode(saml_idp.wrap_in_extensions(b.xml(r), name_id=FORGED)),
        403,
        "saml_assertion_count",
    ),
    (
        "signature-removed",
        lambda b, r: encode(saml_idp.remove_signatures(b.xml(r))),
        403,
        "saml_unsigned",
    ),
    (
        "another-audience",
        lambda b, r: encode(b.xml(r, audience="https://other.example/metadata")),
        403,
        "saml_audience",
    ),
    (
        "another-destination",
        lambda b, r: encode(b.xml(r, destination="https://other.example/acs")),
        403,
        "saml_destination",
    ),
    (
        "unsolicited",
        lambda b, r: encode(b.xml(None)),
        403,
        "saml_unsolicited",
    ),
    (
        "doctype",
        lambda b, r: encode(
            saml_idp.with_doctype(b.xml(r), system_url="http://127.0.0.1:9/x")
        ),
        400,
        "saml_doctype",
    ),
    ("empty", lambda b, r: "", 400, "saml_malformed"),
]


@pytest.mark.parametrize(
    ("build", "status", "reason"),
    [pytest.param(b, s, r, id=i) for i, b, s, r in ACS_ATTACKS],
)
def test_attacks_at_the_acs(
    app, browser: Browser, build, status: int, reason: str
) -> None:  # type: ignore[no-untyped-def]
    request_id = browser.start()
    saml_response = build(browser, request_id)
    before = table_rows(app, *TABLES)
    response = browser.post(saml_response)
    assert response.status_code == status
    assert "Single sign-on refused" in response.get_data(as_text=True)
    assert failure_reasons(app) == [reason]
    assert table_rows(app, *TABLES) == before
    assert session_cookie(browser.client) is None


def test_an_expired_assertion_is_refused(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    saml_response = encode(browser.xml(browser.start()))
    browser.clock.advance(minutes=5, seconds=121)
    assert browser.post(saml_response).status_code == 403
    assert failure_reasons(app) == ["saml_expired"]


def test_a_comment_in_the_name_id_signs_nobody_in(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    """SAML-1: someone at the IdP as root@acme.example.evil.example gets no
    access to root@acme.example."""
    make_user(app, browser.workspace, FORGED, role="admin")
    real = f"{FORGED}.evil.example"
    xml = browser.xml(browser.start(), name_id=real)
    response = browser.post(encode(saml_idp.inject_comment(xml, real, len(FORGED))))
    assert response.status_code == 403
    assert failure_reasons(app) == ["sso_email_unverified"]
    assert session_cookie(browser.client) is None
    [refusal] = events(app, "sso.signin_failure")
    assert refusal.target_label == real


def test_idp_initiated_sign_in_when_allowed(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    set_connection(app, browser.workspace, saml_idp_initiated=True)
    saml_response = encode(browser.xml(None))
    assert browser.post(saml_response).status_code == 302
    assert session_cookie(browser.client)
    [success] = events(app, "sso.signin_success")
    assert success.details["idp_initiated"] is True
    again = Browser(app, browser.workspace, browser.idp, browser.clock)
    assert again.post(saml_response).status_code == 403
    assert failure_reasons(app) == ["saml_replayed"]


def test_our_metadata_is_published(app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    response = browser.client.get(f"/sso/saml/{browser.workspace.slug}/metadata")
    assert response.status_code == 200
    assert response.mimetype == "application/samlmetadata+xml"
    body = response.get_data(as_text=True)
    assert f'entityID="{browser.entity_id}"' in body
    assert browser.acs_url in body


def test_the_replay_cache_outlives_the_assertion_by_the_skew(
    app, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    browser.post(encode(browser.xml(browser.start())))
    with app.app_context():
        seen = db.session.scalars(sa.select(SamlAssertionSeen)).one()
        assert seen.expires_at == browser.clock.now + timedelta(minutes=5, seconds=120)


def _mfa_mode(app, workspace, mode: str) -> None:  # type: ignore[no-untyped-def]
    from idp.models import SecurityPolicy

    with app.app_context():
        policy = db.session.get(SecurityPolicy, workspace.id)
        if policy is None:
            policy = SecurityPolicy(workspace_id=workspace.id)
            db.session.add(policy)
        policy.mfa_mode = mode
        db.session.commit()


@pytest.mark.parametrize(
    "mode, lands_on",
    [
        # The company IdP's sign-in counts as multi-factor here.
        ("force_except_sso", "/portal/profile"),
        # Forced MFA asks for the member's own factor after the IdP: a
        # member without one sets one up first, with no session yet.
        ("force", "/login/mfa/setup"),
    ],
)
def test_forced_mfa_and_the_federated_sign_in(app, browser, workspace, mode, lands_on):  # type: ignore[no-untyped-def]
    _mfa_mode(app, workspace, mode)
    request_id = browser.start(rd="/portal/profile")
    response = browser.post(encode(browser.xml(request_id)), request_id)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == lands_on
    with app.app_context():
        sessions = db.session.scalars(sa.select(Session)).all()
        if mode == "force_except_sso":
            [session] = sessions
            assert session.amr[0] == "fed" and session.sso_connection_id is not None
        else:
            assert sessions == []

"""The SAML service (idp.services.sso.saml) with the database: configuring
the IdP three ways, starting a sign-in, and consuming Responses from the
test IdP, including every attack of cases/saml.md. Each refusal is
audited as sso.signin_failure with its reason and leaves every table as it
was; each acceptance is committed before the claims are returned."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.saml import normalize_certificate
from idp.db import db
from idp.models import (
    AuditEvent,
    FederatedIdentity,
    SamlAssertionSeen,
    SsoConnection,
    SsoDomain,
    SsoRequest,
    User,
)
from idp.services.context import Client, Context
from idp.services.errors import Forbidden, InvalidInput
from idp.services.sso import SsoRefused, connections, federation
from idp.services.sso import saml as service
from tests import saml_idp
from tests.conftest import FakeClock, make_user, make_workspace, table_rows
from tests.saml_idp import AUTHN_FAILED, Served, TestIdp, encode

DATA = Path(__file__).parent.parent / "data" / "saml"
CLIENT = Client(ip="203.0.113.7", peer_ip="203.0.113.7", user_agent="pytest")
VISITOR = Context.anonymous(CLIENT)
BROWSER = "binding-of-the-browser-that-started"
TABLES = (SsoRequest, SamlAssertionSeen, FederatedIdentity, User, SsoConnection)
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def successor(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp-next"), name="next")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp-other"), name="other")


@dataclass
class World:
    app: Any
    workspace: Any
    admin: Any
    idp: TestIdp
    clock: FakeClock
    entity_id: str
    acs_url: str

    @property
    def ctx(self) -> Context:
        return Context.for_user(self.admin, CLIENT)

    def connection(self) -> SsoConnection:
        found = connections.for_workspace(self.workspace.id)
        assert found is not None
        return found

    def begin(self, binding: str = BROWSER, **options: Any) -> str:
        """A sign-in started in ``binding``'s browser; the request id the
        IdP read from our signed redirect."""
        with self.app.app_context():
            url = service.start(
                VISITOR, self.workspace, self.connection(), binding=binding, **options
            )
            sp_cert = self.app.extensions["idp_keys"].saml[0].certificate_pem
        seen = self.idp.read_request(url, sp_cert)
        assert seen.signature_valid
        return seen.id

    def response(self, signer: TestIdp | None = None, **options: Any) -> str:
        return encode(self.xml(signer, **options))

    def xml(self, signer: TestIdp | None = None, **options: Any) -> str:
        values: dict[str, Any] = {
            "now": self.clock.now,
            "audience": self.entity_id,
            "recipient": self.acs_url,
            "destination": self.acs_url,
            "name_id": "ann@acme.example",
        }
        values.update(options)
        return (signer or self.idp).response_xml(**values)

    def consume(self, saml_response: str, binding: str | None = BROWSER) -> Any:
        with self.app.app_context():
            claims, request = service.consume(
                VISITOR,
                self.workspace,
                self.connection(),
                saml_response=saml_response,
                relay_state=None,
                binding=binding,
            )
            return claims, request

    def refusal(self, saml_response: str, binding: str | None = BROWSER) -> SsoRefused:
        with pytest.raises(SsoRefused) as caught:
            self.consume(saml_response, binding)
        assert caught.value.audited
        return caught.value

    def failures(self) -> list[str | None]:
        with self.app.app_context():
            return list(
                db.session.scalars(
                    sa.select(AuditEvent.reason)
                    .where(AuditEvent.action == "sso.signin_failure")
                    .order_by(AuditEvent.id)
                )
            )

    def set(self, **fields: Any) -> None:
        with self.app.app_context():
            connection = self.connection()
            for key, value in fields.items():
                setattr(connection, key, value)
            db.session.commit()


@pytest.fixture
def world(app, clock: FakeClock, idp: TestIdp) -> World:  # type: ignore[no-untyped-def]
    workspace = make_workspace(app, "Acme")
    admin = make_user(app, workspace, "root@acme.example", role="admin")
    with app.app_context():
        entity_id = connections.saml_entity_id(workspace)
        acs_url = connections.saml_acs_url(workspace)
    found = World(app, workspace, admin, idp, clock, entity_id, acs_url)
    with app.app_context():
        service.configure(
            found.ctx,
            workspace,
            entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            certificates=[idp.certificate_pem],
        )
    return found


# --- configuration ------------------------------------------------------------------


def configured(world: World) -> SsoConnection:
    with world.app.app_context():
        connection = world.connection()
        db.session.expunge(connection)
        return connection


def test_typed_in_configuration_is_stored_and_audited(world: World) -> None:
    connection = configured(world)
    assert connection.protocol == "saml"
    assert connection.saml_entity_id == world.idp.entity_id
    assert connection.saml_sso_url == world.idp.sso_url
    assert connection.saml_certificates == [
        normalize_certificate(world.idp.certificate_pem)
    ]
    assert connection.saml_metadata_url is None
    with world.app.app_context():
        event = db.session.scalar(
            sa.select(AuditEvent).where(
                AuditEvent.action == "sso.connection_configured"
            )
        )
        assert event is not None
        assert event.details["how"] == "typed"
        assert event.details["entity_id"] == world.idp.entity_id
        assert event.details["protocol"] == "saml"
        assert len(event.details["certificates"]) == 1


def test_two_certificates_in_one_text_area_are_a_rollover(
    world: World, successor: TestIdp
) -> None:
    with world.app.app_context():
        _connection, warnings = service.configure(
            world.ctx,
            world.workspace,
            entity_id=world.idp.entity_id,
            sso_url=world.idp.sso_url,
            certificates=world.idp.certificate_pem + "\n" + successor.certificate_pem,
        )
    assert warnings == []
    assert len(configured(world).saml_certificates) == 2


def test_uploaded_metadata_configures_the_connection(
    world: World, successor: TestIdp
) -> None:
    with world.app.app_context():
        service.configure(world.ctx, world.workspace, metadata_xml=successor.metadata())
    connection = configured(world)
    assert connection.saml_certificates == [
        normalize_certificate(successor.certificate_pem)
    ]


def test_google_metadata_is_imported_with_its_warnings(world: World) -> None:
    with world.app.app_context():
        _connection, warnings = service.configure(
            world.ctx,
            world.workspace,
            metadata_xml=(DATA / "google_workspace_idp_metadata.xml").read_bytes(),
        )
    assert any("valid until 2021-01-03" in w for w in warnings)
    connection = configured(world)
    assert (
        connection.saml_sso_url
        == "https://accounts.google.com/o/saml2/idp?idpid=C00000000"
    )
    assert connection.saml_metadata_valid_until is not None


@pytest.fixture
def private_urls(overrides: dict[str, Any]) -> None:
    overrides["sso"] = {"allow_private_urls": True}


def test_metadata_by_url_is_fetched_and_refreshed(
    private_urls: None, world: World, successor: TestIdp
) -> None:
    with Served(world.idp.metadata().encode()) as server:
        with world.app.app_context():
            service.configure(
                world.ctx, world.workspace, metadata_url=f"{server.url}/metadata"
            )
        assert configured(world).saml_metadata_url == f"{server.url}/metadata"
        # The IdP rolls over: its metadata now lists both certificates.
        both = world.idp.metadata(also=[successor.certificate_pem])
        server.body = both.encode()
        with world.app.app_context():
            assert service.refresh_metadata(world.ctx, world.workspace) == []
        assert server.paths == ["/metadata", "/metadata"]
    assert len(configured(world).saml_certificates) == 2
    with world.app.app_context():
        event = db.session.scalar(
            sa.select(AuditEvent).where(AuditEvent.action == "sso.metadata_refreshed")
        )
        assert event is not None
        assert "certificates" in event.details["changed"]


def test_a_metadata_url_on_loopback_is_refused_unless_allowed(world: World) -> None:
    before = table_rows(world.app, SsoConnection, AuditEvent)
    with Served(world.idp.metadata().encode()) as server:
        with world.app.app_context(), pytest.raises(InvalidInput) as caught:
            service.configure(
                world.ctx, world.workspace, metadata_url=f"{server.url}/metadata"
            )
        assert server.paths == []
    assert caught.value.code == "sso_metadata_fetch_failed"
    assert table_rows(world.app, SsoConnection, AuditEvent) == before


def _three(world: World, successor: TestIdp, stranger: TestIdp) -> dict[str, Any]:
    return {
        "entity_id": world.idp.entity_id,
        "sso_url": world.idp.sso_url,
        "certificates": [
            world.idp.certificate_pem,
            successor.certificate_pem,
            stranger.certificate_pem,
        ],
    }


BAD_INPUT: list[tuple[str, Callable[..., dict[str, Any]], str]] = [
    ("nothing", lambda w, s, o: {}, "sso_saml_input"),
    (
        "two-ways",
        lambda w, s, o: {"metadata_xml": w.idp.metadata(), "entity_id": "x"},
        "sso_saml_input",
    ),
    ("three-certificates", _three, "sso_certificate_invalid"),
    (
        "not-a-certificate",
        lambda w, s, o: {
            "entity_id": w.idp.entity_id,
            "sso_url": w.idp.sso_url,
            "certificates": ["hello"],
        },
        "sso_certificate_invalid",
    ),
    (
        "no-certificate",
        lambda w, s, o: {"entity_id": w.idp.entity_id, "sso_url": w.idp.sso_url},
        "sso_certificate_invalid",
    ),
    (
        "http-sso-url",
        lambda w, s, o: {
            "entity_id": w.idp.entity_id,
            "sso_url": "http://idp.example.test/sso",
            "certificates": [w.idp.certificate_pem],
        },
        "sso_url_invalid",
    ),
    (
        "entity-id-with-spaces",
        lambda w, s, o: {
            "entity_id": "my idp",
            "sso_url": w.idp.sso_url,
            "certificates": [w.idp.certificate_pem],
        },
        "sso_entity_id_invalid",
    ),
    (
        "metadata-with-doctype",
        lambda w, s, o: {
            "metadata_xml": '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            + w.idp.metadata().split("?>", 1)[1]
        },
        "saml_doctype",
    ),
    (
        "metadata-of-no-idp",
        lambda w, s, o: {"metadata_xml": "<html/>"},
        "saml_metadata_invalid",
    ),
]


@pytest.mark.parametrize(
    ("values_of", "code"),
    [pytest.param(v, c, id=i) for i, v, c in BAD_INPUT],
)
def test_bad_configuration_changes_nothing(
    world: World,
    successor: TestIdp,
    stranger: TestIdp,
    values_of: Callable[..., dict[str, Any]],
    code: str,
) -> None:
    before = table_rows(world.app, SsoConnection, AuditEvent)
    with world.app.app_context(), pytest.raises(InvalidInput) as caught:
        service.configure(
            world.ctx, world.workspace, **values_of(world, successor, stranger)
        )
    assert caught.value.code == code
    assert table_rows(world.app, SsoConnection, AuditEvent) == before


def test_metadata_with_three_certificates_keeps_two_with_a_warning(
    world: World, successor: TestIdp, stranger: TestIdp
) -> None:
    keys = "".join(
        '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
        f"{i.certificate_body}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
        "</md:KeyDescriptor>"
        for i in (world.idp, successor, stranger)
    )
    xml = re.sub(
        r"<md:KeyDescriptor.*?</md:KeyDescriptor>",
        keys,
        world.idp.metadata(),
        flags=re.DOTALL,
    )
    with world.app.app_context():
        _connection, warnings = service.configure(
            world.ctx, world.workspace, metadata_xml=xml
        )
    assert any("3 signing certificates" in w for w in warnings)
    assert len(configured(world).saml_certificates) == 2


def test_only_admins_configure(world: World) -> None:
    member = make_user(world.app, world.workspace, "bo@acme.example")
    with world.app.app_context(), pytest.raises(Forbidden):
        service.configure(
            Context.for_user(member, CLIENT),
            world.workspace,
            entity_id="https://evil.example",
            sso_url="https://evil.example/sso",
            certificates=[world.idp.certificate_pem],
        )
    assert configured(world).saml_entity_id == world.idp.entity_id


def test_another_idp_unlinks_the_identities_of_the_previous_one(
    world: World, stranger: TestIdp
) -> None:
    user = make_user(world.app, world.workspace, "ann@acme.example")
    with world.app.app_context():
        db.session.add(
            FederatedIdentity(
                workspace_id=world.workspace.id,
                connection_id=world.connection().id,
                user_id=user.id,
                subject="ann@acme.example",
            )
        )
        db.session.commit()
        service.configure(
            world.ctx,
            world.workspace,
            entity_id="https://idp.elsewhere.example",
            sso_url="https://idp.elsewhere.example/sso",
            certificates=[stranger.certificate_pem],
        )
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(FederatedIdentity))
            == 0
        )


def test_our_metadata_names_our_acs_and_keys(world: World) -> None:
    with world.app.app_context():
        xml = service.sp_metadata(world.workspace)
        ours = world.app.extensions["idp_keys"].saml[0].certificate_pem
    assert f'entityID="{world.entity_id}"' in xml
    assert f'Location="{world.acs_url}"' in xml
    body = "".join(line for line in ours.splitlines() if "-----" not in line)
    assert body in xml


# --- a sign-in ------------------------------------------------------------------------


def test_a_good_response_gives_claims_and_uses_everything_up(world: World) -> None:
    request_id = world.begin(return_to="/portal")
    claims, request = world.consume(
        world.response(
            in_response_to=request_id,
            name_id="ann@acme.example",
            attributes={
                f"{CLAIMS}/emailaddress": ["ann@acme.example"],
                f"{CLAIMS}/givenname": ["Ann"],
                f"{CLAIMS}/surname": ["Lee"],
                "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": [
                    "g1"
                ],
            },
        )
    )
    assert claims.issuer == world.idp.entity_id
    assert claims.subject == "ann@acme.example"
    assert claims.email == "ann@acme.example" and claims.email_verified
    assert claims.full_name == "Ann Lee"
    assert claims.groups == ("g1",)
    assert claims.received["NameID"] == ["ann@acme.example"]
    assert claims.details["idp_initiated"] is False
    assert request.id == request_id and request.return_to == "/portal"
    with world.app.app_context():
        # Committed: a rollback (what a later refusal does) keeps them.
        db.session.rollback()
        assert db.session.get(SsoRequest, request_id) is None
        seen = db.session.scalars(sa.select(SamlAssertionSeen)).one()
        assert seen.assertion_id == claims.details["assertion_id"]
        assert seen.expires_at == world.clock.now + timedelta(minutes=5, seconds=120)


def test_a_test_connection_request_is_answered_not_deleted(world: World) -> None:
    request_id = world.begin(purpose="test", requested_by=world.admin.id)
    _claims, request = world.consume(world.response(in_response_to=request_id))
    assert request.purpose == "test"
    with world.app.app_context():
        row = db.session.get(SsoRequest, request_id)
        assert row is not None and row.answered_at is not None


def test_okta_and_entra_names_map_by_default(world: World) -> None:
    request_id = world.begin()
    claims, _ = world.consume(
        world.response(
            in_response_to=request_id,
            name_id="00u1abcd",
            name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
            attributes={
                "email": ["dee@acme.example"],
                "firstName": ["Dee"],
                "lastName": ["Ray"],
                "groups": ["Everyone"],
            },
        )
    )
    assert (claims.subject, claims.email) == ("00u1abcd", "dee@acme.example")
    assert (claims.first_name, claims.last_name, claims.groups) == (
        "Dee",
        "Ray",
        ("Everyone",),
    )


def test_the_connections_attribute_map_is_used(world: World) -> None:
    world.set(attribute_map={"email": "corpMail", "display_name": "label"})
    request_id = world.begin()
    claims, _ = world.consume(
        world.response(
            in_response_to=request_id,
            name_id="opaque-7",
            attributes={"corpMail": ["eve@acme.example"], "label": ["Eve M."]},
        )
    )
    assert claims.email == "eve@acme.example"
    assert claims.display_name == "Eve M."


# --- attacks ------------------------------------------------------------------------------


def _signed_and(
    attack: Callable[[str], str], **options: Any
) -> Callable[[World, str], str]:
    def build(world: World, request_id: str) -> str:
        return encode(attack(world.xml(in_response_to=request_id, **options)))

    return build


def _plain(**options: Any) -> Callable[[World, str], str]:
    def build(world: World, request_id: str) -> str:
        return world.response(in_response_to=request_id, **options)

    return build


def _hidden_in_error(world: World, request_id: str) -> str:
    error = world.xml(
        in_response_to=request_id,
        status=AUTHN_FAILED,
        sign_response=True,
        sign_assertion=False,
    )
    return encode(
        saml_idp.hide_in_signature(
            error, saml_idp.assertion_of(world.xml(in_response_to=request_id))
        )
    )


def _hidden_in_success(world: World, request_id: str) -> str:
    empty = world.xml(
        in_response_to=request_id,
        include_assertion=False,
        sign_response=True,
        sign_assertion=False,
    )
    return encode(
        saml_idp.hide_in_signature(
            empty, saml_idp.assertion_of(world.xml(in_response_to=request_id))
        )
    )


FORGED = "admin@acme.example"
ATTACKS: list[tuple[str, Callable[[World, str], str], str, int]] = [
    (
        "a-wrapped-in-extensions",
        _signed_and(lambda x: saml_idp.wrap_in_extensions(x, name_id=FORGED)),
        "saml_assertion_count",
        403,
    ),
    (
        "a-wrapped-in-advice",
        _signed_and(lambda x: saml_idp.wrap_in_forged(x, name_id=FORGED)),
        "saml_assertion_count",
        403,
    ),
    (
        "a-signature-moved",
        _signed_and(lambda x: saml_idp.signature_moved_to_forged(x, name_id=FORGED)),
        "saml_assertion_count",
        403,
    ),
    (
        "a-response-nested",
        _signed_and(
            lambda x: saml_idp.wrap_response(x, name_id=FORGED),
            sign_response=True,
            sign_assertion=False,
        ),
        "saml_wrapping",
        403,
    ),
    ("b-error-response-with-assertion", _hidden_in_error, "saml_status", 403),
    ("b-assertion-inside-signature", _hidden_in_success, "saml_wrapping", 403),
    (
        "c-two-assertions",
        _signed_and(lambda x: saml_idp.two_assertions(x, name_id=FORGED)),
        "saml_assertion_count",
        403,
    ),
    (
        "signature-removed",
        _signed_and(saml_idp.remove_signatures),
        "saml_unsigned",
        403,
    ),
    ("never-signed", _plain(sign_assertion=False), "saml_unsigned", 403),
    (
        "edited-after-signing",
        _signed_and(lambda x: x.replace("ann@acme.example", FORGED)),
        "saml_signature_invalid",
        403,
    ),
    (
        "another-audience",
        _plain(audience="https://other.example/metadata"),
        "saml_audience",
        403,
    ),
    ("empty-audience", _plain(audience=""), "saml_audience", 403),
    ("no-audience-restriction", _plain(audience=None), "saml_audience", 403),
    (
        "another-recipient",
        _plain(recipient="https://other.example/acs"),
        "saml_recipient",
        403,
    ),
    (
        "another-destination",
        _plain(destination="https://other.example/acs"),
        "saml_destination",
        403,
    ),
    ("another-issuer", _plain(issuer="https://idp.other.example"), "saml_issuer", 403),
    (
        "error-status",
        _plain(status=AUTHN_FAILED, sign_response=True, sign_assertion=False),
        "saml_status",
        403,
    ),
    (
        "transient-name-id",
        _plain(name_id="_x1", name_id_format=TRANSIENT),
        "saml_name_id_transient",
        403,
    ),
    (
        "doctype-external-entity",
        _signed_and(
            lambda x: saml_idp.with_doctype(x, system_url="http://127.0.0.1:9/x")
        ),
        "saml_doctype",
        400,
    ),
    (
        "external-dtd",
        _signed_and(
            lambda x: saml_idp.with_external_dtd(x, system_url="http://127.0.0.1:9/x")
        ),
        "saml_doctype",
        400,
    ),
    ("not-base64", lambda w, r: "%%%", "saml_malformed", 400),
    ("not-saml", lambda w, r: encode("<html/>"), "saml_malformed", 400),
]


@pytest.mark.parametrize(
    ("build", "code", "status"),
    [pytest.param(b, c, s, id=i) for i, b, c, s in ATTACKS],
)
def test_attacks_are_refused_audited_and_change_nothing(
    world: World, build: Callable[[World, str], str], code: str, status: int
) -> None:
    request_id = world.begin()
    saml_response = build(world, request_id)
    before = table_rows(world.app, *TABLES)
    error = world.refusal(saml_response)
    assert (error.code, error.status) == (code, status)
    assert world.failures() == [code]
    assert table_rows(world.app, *TABLES) == before


def test_a_third_certificate_is_refused(
    world: World, successor: TestIdp, stranger: TestIdp
) -> None:
    world.set(saml_certificates=[world.idp.certificate_pem, successor.certificate_pem])
    for signer in (world.idp, successor):
        world.consume(world.response(signer, in_response_to=world.begin()))
    request_id = world.begin()
    before = table_rows(world.app, *TABLES)
    error = world.refusal(world.response(stranger, in_response_to=request_id))
    assert error.code == "saml_signature_invalid"
    assert table_rows(world.app, *TABLES) == before


def test_a_doctype_fetches_nothing(world: World) -> None:
    request_id = world.begin()
    with Served(b"<!ENTITY x 'y'>") as server:
        xml = world.xml(in_response_to=request_id)
        for attack in (saml_idp.with_doctype, saml_idp.with_external_dtd):
            error = world.refusal(encode(attack(xml, system_url=f"{server.url}/x.dtd")))
            assert error.status == 400
        assert server.paths == []


def test_comment_injection_reads_the_whole_name_and_signs_nobody_in(
    world: World,
) -> None:
    """SAML-1: the person behind admin@acme.example.evil.example gets no
    access to admin@acme.example."""
    make_user(world.app, world.workspace, "admin@acme.example", role="admin")
    with world.app.app_context():
        db.session.add(
            SsoDomain(
                workspace_id=world.workspace.id,
                connection_id=world.connection().id,
                domain="acme.example",
                verification_token="t",
                verified_at=world.clock.now,
                verified_by="operator",
            )
        )
        db.session.commit()
    real = "admin@acme.example.evil.example"
    xml = world.xml(in_response_to=world.begin(), name_id=real)
    claims, _ = world.consume(
        encode(saml_idp.inject_comment(xml, real, len("admin@acme.example")))
    )
    assert claims.subject == claims.email == real
    with world.app.app_context(), pytest.raises(SsoRefused) as caught:
        federation.resolve_member(VISITOR, world.workspace, world.connection(), claims)
    assert caught.value.code == "sso_email_unverified"


# --- SAML-4: replay, unsolicited, other browsers -------------------------------------------


def test_a_response_works_once(world: World) -> None:
    saml_response = world.response(in_response_to=world.begin())
    world.consume(saml_response)
    before = table_rows(world.app, *TABLES)
    for binding in (BROWSER, "another-browser", None):
        assert world.refusal(saml_response, binding).code == "saml_replayed"
    assert world.failures() == ["saml_replayed"] * 3
    assert table_rows(world.app, *TABLES) == before


def test_a_response_to_another_browsers_request_is_refused(world: World) -> None:
    saml_response = world.response(in_response_to=world.begin(binding="victim"))
    before = table_rows(world.app, *TABLES)
    assert world.refusal(saml_response, "attacker").code == "request_other_browser"
    assert world.refusal(saml_response, None).code == "request_other_browser"
    assert table_rows(world.app, *TABLES) == before
    # The browser that started it still can.
    assert world.consume(saml_response, "victim")[0].subject


def test_a_response_to_no_request_of_ours_is_refused(world: World) -> None:
    world.begin()
    error = world.refusal(world.response(in_response_to="id-never-sent"))
    assert error.code == "request_unknown"


def test_a_request_that_took_too_long_is_refused(world: World) -> None:
    request_id = world.begin()
    world.clock.advance(seconds=601)
    saml_response = world.response(in_response_to=request_id)
    assert world.refusal(saml_response).code == "request_expired"


def test_an_unsolicited_response_is_refused_while_idp_initiated_is_off(
    world: World,
) -> None:
    before = table_rows(world.app, *TABLES)
    error = world.refusal(world.response(in_response_to=None))
    assert error.code == "saml_unsolicited"
    assert table_rows(world.app, *TABLES) == before


def test_an_edited_response_cannot_claim_a_request(world: World) -> None:
    """An unsolicited assertion given an InResponseTo by an unsigned
    Response is still unsolicited."""
    request_id = world.begin()
    xml = world.xml(in_response_to=None).replace(
        "<samlp:Response ", f'<samlp:Response InResponseTo="{request_id}" ', 1
    )
    assert world.refusal(encode(xml)).code == "saml_unsolicited"


def test_idp_initiated_sign_in_when_allowed_is_still_used_once(world: World) -> None:
    world.set(saml_idp_initiated=True)
    saml_response = world.response(in_response_to=None)
    claims, request = world.consume(saml_response, binding=None)
    assert request is None
    assert claims.details["idp_initiated"] is True
    assert world.refusal(saml_response, binding=None).code == "saml_replayed"


def test_expired_assertion_ids_are_forgotten(world: World) -> None:
    with world.app.app_context():
        db.session.add(
            SamlAssertionSeen(
                workspace_id=world.workspace.id,
                assertion_id="id-long-gone",
                expires_at=world.clock.now - timedelta(seconds=1),
            )
        )
        db.session.commit()
    world.consume(world.response(in_response_to=world.begin()))
    with world.app.app_context():
        kept = db.session.scalars(sa.select(SamlAssertionSeen.assertion_id)).all()
    assert "id-long-gone" not in kept and len(kept) == 1


# --- times and the configured skew ------------------------------------------------------------


@pytest.mark.parametrize(
    ("skew", "shift", "code"),
    [
        (120, timedelta(minutes=5), "saml_not_yet_valid"),
        (360, timedelta(minutes=5), None),
        (120, -timedelta(minutes=5), "saml_expired"),
        (360, -timedelta(minutes=5), None),
    ],
    ids=[
        "ahead-beyond-skew",
        "ahead-within-skew",
        "behind-beyond-skew",
        "behind-within-skew",
    ],
)
def test_an_idp_clock_five_minutes_off(
    overrides: dict[str, Any],
    skew: int,
    shift: timedelta,
    code: str | None,
    request: pytest.FixtureRequest,
) -> None:
    overrides["sso"] = {"clock_skew_seconds": skew}
    world = request.getfixturevalue("world")
    request_id = world.begin()
    moment = world.clock.now + shift
    saml_response = world.response(
        in_response_to=request_id,
        now=moment,
        not_before=moment,
        not_on_or_after=moment + timedelta(seconds=1),
    )
    if code is None:
        assert world.consume(saml_response)[0].subject
    else:
        assert world.refusal(saml_response).code == code


def test_an_assertion_expires_with_the_clock(world: World) -> None:
    saml_response = world.response(
        in_response_to=world.begin(),
        not_on_or_after=world.clock.now + timedelta(minutes=1),
    )
    world.clock.advance(minutes=1, seconds=120)
    assert world.refusal(saml_response).code == "saml_expired"


def test_two_posts_at_once_sign_in_once(world: World) -> None:
    """The replay cache holds across sessions (instances): of two
    simultaneous uses of one Response, exactly one gets through."""
    saml_response = world.response(in_response_to=world.begin())
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def post() -> None:
        barrier.wait()
        try:
            world.consume(saml_response)
            outcomes.append("signed in")
        except SsoRefused as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["saml_replayed", "signed in"]

"""Attacks on enterprise SSO through the web endpoints: each test names an
attack in its docstring and asserts the safe outcome (a 4xx page that says
why, never a 500; an audit event with the reason; nothing stored changed;
no session). They run on SQLite and PostgreSQL alike (PORTCULLIS_TEST_DB)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pyotp
import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import OctKey

from idp.db import db
from idp.models import (
    FederatedIdentity,
    IpAllowEntry,
    SamlAssertionSeen,
    SecurityPolicy,
    Session,
    SsoConnection,
    SsoDomain,
    User,
)
from idp.security import parse_email
from idp.services.context import Context
from idp.services.sso import oidc as oidc_service
from idp.services.sso import saml as saml_service
from idp.services.sso.domains import (
    approve,
    normalize_domain,
    record_name,
    record_value,
)
from tests import saml_idp
from tests.conftest import (
    PASSWORD,
    TOTP_SECRET,
    FakeClock,
    csrf_from,
    give_authenticator,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    table_rows,
)
from tests.integration.sso_helpers import (
    DISCOVERY,
    add_connection,
    add_domain,
    events,
    set_connection,
    stub_dns,
)
from tests.integration.test_faults import database_down
from tests.integration.test_mfa_webauthn import given_key, passkey_sign_in
from tests.integration.test_sso_saml_acs import Browser
from tests.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    StubIdp,
    id_claims,
    rsa_key,
    running_stub,
    sign,
)
from tests.saml_idp import TestIdp, encode

ACME = "acme.example"
MIA = f"mia@{ACME}"
BOSS = f"boss@{ACME}"
NOBODY = f"nobody@{ACME}"
# What a refused sign-in may leave behind: the audit trail, the replay
# cache and the used-up request, nothing else.
KEPT = (FederatedIdentity, User, Session, SsoDomain, SsoConnection)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp"))


def saml_workspace(app, name: str, idp: TestIdp, domain: str | None):  # type: ignore[no-untyped-def]
    workspace = make_workspace(app, name)
    with app.app_context():
        saml_service.configure(
            Context.operator(),
            workspace,
            entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            certificates=[idp.certificate_pem],
        )
    if domain:
        add_domain(app, workspace, domain, verified_by="operator")
    return workspace


@pytest.fixture
def acme(app, idp: TestIdp):  # type: ignore[no-untyped-def]
    """Acme, on the test IdP, with acme.example verified: an admin and a
    member."""
    workspace = saml_workspace(app, "Acme", idp, ACME)
    make_user(app, workspace, BOSS, role="admin")
    make_user(app, workspace, MIA)
    return workspace


@pytest.fixture
def bravo(app, idp: TestIdp):  # type: ignore[no-untyped-def]
    """Bravo, on the very same IdP (one Okta tenant serving two
    workspaces, the worst case), with bravo.example verified."""
    return saml_workspace(app, "Bravo", idp, "bravo.example")


@pytest.fixture
def browser(app, acme, idp: TestIdp, clock: FakeClock) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(app, acme, idp, clock)


def new_browser(app, workspace, idp: TestIdp) -> Browser:  # type: ignore[no-untyped-def]
    """Another browser, on the app's clock."""
    return Browser(app, workspace, idp, app.extensions["idp"].clock)


def at(browser: Browser, workspace) -> Browser:  # type: ignore[no-untyped-def]
    """The same browser (its cookies), aimed at another workspace."""
    other = Browser(browser.app, workspace, browser.idp, browser.clock)
    other.client = browser.client
    return other


def reasons(app) -> list[str | None]:  # type: ignore[no-untyped-def]
    return [e.reason for e in events(app, "sso.signin_failure")]


def refused(response, status: int = 403) -> str:  # type: ignore[no-untyped-def]
    body = response.get_data(as_text=True)
    assert response.status_code == status, body[:500]
    assert "Single sign-on refused" in body
    return body


# --- across workspaces -------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "reason"),
    [(True, "saml_destination"), (False, "saml_audience")],
    ids=["with-destination", "without-destination"],
)
def test_a_response_for_acme_posted_to_bravos_acs_is_refused(
    app, browser, bravo, destination, reason
):
    """Acme's sign-in answered by the shared IdP, then posted by the same
    browser to Bravo's ACS: the destination, audience and recipient are
    Acme's."""
    options = {} if destination else {"destination": None}
    saml_response = encode(browser.xml(browser.start(), **options))
    before = table_rows(app, *KEPT)
    refused(at(browser, bravo).post(saml_response))
    assert reasons(app) == [reason]
    (event,) = events(app, "sso.signin_failure")
    assert event.workspace_id == bravo.id
    assert table_rows(app, *KEPT) == before
    assert session_cookie(browser.client) is None


def test_a_response_for_bravo_answering_acmes_request_is_refused(app, browser, bravo):
    """The shared IdP made to answer Acme's AuthnRequest for Bravo's
    audience (an attacker editing the request in flight): Bravo's ACS does
    not know Acme's request, whatever the browser's binding cookie."""
    acme_request = browser.start()
    bravo_browser = at(browser, bravo)
    saml_response = encode(bravo_browser.xml(acme_request))
    before = table_rows(app, *KEPT)
    refused(bravo_browser.post(saml_response))
    assert reasons(app) == ["request_unknown"]
    assert table_rows(app, *KEPT) == before
    assert session_cookie(browser.client) is None


def test_bravos_idp_cannot_sign_in_acmes_addresses(app, idp, bravo):
    """Bravo's IdP asserts an address in Acme's verified domain, with
    just-in-time accounts on, and with an account of that address waiting
    in Bravo: neither is linked nor created."""
    set_connection(app, bravo, jit_enabled=True)
    make_user(app, bravo, MIA, status="invited")
    browser = new_browser(app, bravo, idp)
    before = table_rows(app, *KEPT)
    refused(browser.post(encode(browser.xml(browser.start(), name_id=MIA))))
    other = new_browser(app, bravo, idp)
    refused(other.post(encode(other.xml(other.start(), name_id=BOSS))))
    assert reasons(app) == ["sso_email_unverified", "sso_email_unverified"]
    assert table_rows(app, *KEPT) == before


# --- Require SSO, and ways round it ---------------------------------------------------


def email_then_password(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    post_form(client, "/login", {"email": email, "sso": "off"}, csrf_page="/login")
    token = csrf_from(client, "/login/password")
    return client.post(
        "/login/password", data={"password": password, "csrf_token": token}
    )


def sso_session(app, idp: TestIdp, workspace, name_id: str):  # type: ignore[no-untyped-def]
    """A browser signed in to ``workspace`` through the test IdP."""
    browser = new_browser(app, workspace, idp)
    response = browser.post(encode(browser.xml(browser.start(), name_id=name_id)))
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return browser.client


def test_require_sso_holds_for_an_internationalised_domain(app, idp):
    """The company's domain is bücher.example: stored as its IDNA form
    (xn--bcher-kva.example), while a member's address keeps the Unicode
    spelling. *Require SSO* must still refuse Mia's password, and the IdP
    must still sign her in."""
    workspace = saml_workspace(app, "Buecher", idp, None)
    with app.app_context():
        approve(Context.operator(), workspace, "Bücher.example")
    set_connection(app, workspace, require_sso=True)
    mia = make_user(app, workspace, parse_email("Mia@BÜCHER.example"))
    assert mia.email == "mia@bücher.example"

    client = app.test_client()
    response = email_then_password(client, mia.email)
    assert response.status_code == 403, response.get_data(as_text=True)[:300]
    assert session_cookie(client) is None
    (event,) = events(app, "signin.failure", reason="sso_required")
    assert event.target_label == mia.email

    assert session_cookie(sso_session(app, idp, workspace, "mia@xn--bcher-kva.example"))
    assert reasons(app) == []


def test_a_member_cannot_move_out_of_the_required_domain(app, idp, acme, mailer):
    """Mia, under *Require SSO*, signs in through the IdP and changes her
    address to a private one: once confirmed, her password would work
    again, and leaving the company's IdP would no longer lock her out."""
    set_connection(app, acme, require_sso=True)
    client = sso_session(app, idp, acme, MIA)
    before = table_rows(app, User)
    response = post_form(
        client,
        "/portal/profile/email",
        {"email": "mia@private.example", "password": PASSWORD},
        csrf_page="/portal/profile/email",
    )
    assert response.status_code == 403, response.get_data(as_text=True)[:300]
    assert "single sign-on" in response.get_data(as_text=True)
    assert mailer.sent == []
    assert table_rows(app, User) == before
    assert len(events(app, "email.change_request", reason="sso_required")) == 1
    # The admin keeps the choice (the break-glass account).
    boss = sso_session(app, idp, acme, BOSS)
    response = post_form(
        boss,
        "/portal/profile/email",
        {"email": "boss@private.example", "password": PASSWORD},
        csrf_page="/portal/profile/email",
    )
    assert response.status_code == 302


def test_a_link_asked_for_before_require_sso_cannot_be_confirmed_after(
    app, idp, acme, mailer
):
    """Mia asks for the change first, the admin turns *Require SSO* on,
    then she follows the link."""
    client = sso_session(app, idp, acme, MIA)
    response = post_form(
        client,
        "/portal/profile/email",
        {"email": "mia@private.example", "password": PASSWORD},
        csrf_page="/portal/profile/email",
    )
    assert response.status_code == 302
    set_connection(app, acme, require_sso=True)
    link = mailer.last_to("mia@private.example").link
    client.get(link.removeprefix("http://localhost"))
    before = table_rows(app, User)
    response = post_form(client, "/email/confirm", {})
    assert response.status_code == 403, response.get_data(as_text=True)[:300]
    assert table_rows(app, User) == before
    assert email_then_password(app.test_client(), MIA).status_code == 403


# --- the SAML answer itself ------------------------------------------------------------


def _extensions(body: str):  # type: ignore[no-untyped-def]
    return lambda xml: saml_idp._after_issuer(
        xml, f"<samlp:Extensions>{body}</samlp:Extensions>"
    )


# Each with the reason it ends on. Entity-free bombs (without a DTD there is
# no entity to expand: size, depth and breadth are what is left, each inside
# the 64 KiB body) sit in the unsigned Extensions of a validly signed
# Response: harmless, read to the end, and the sign-in then goes on to the
# account rules (nobody@ has no account: sso_no_account).
HOSTILE_XML = {
    "deeply-nested": (_extensions("<a>" * 4000 + "</a>" * 4000), "sso_no_account"),
    "many-attributes": (
        _extensions("<a " + " ".join(f"a{i}='{i}'" for i in range(2000)) + "/>"),
        "sso_no_account",
    ),
    "many-namespaces": (
        _extensions(
            "<a " + " ".join(f"xmlns:n{i}='urn:n{i}'" for i in range(1200)) + "/>"
        ),
        "sso_no_account",
    ),
    "utf-16": (lambda xml: xml.encode("utf-16").decode("latin-1"), "sso_no_account"),
    # Canonicalisation keeps processing instructions: the signature breaks.
    "processing-instruction-in-audience": (
        lambda xml: xml.replace("<saml:Audience>", "<saml:Audience><?pi evil?>", 1),
        "saml_signature_invalid",
    ),
    "processing-instruction-in-name-id": (
        lambda xml: xml.replace(f">{NOBODY}<", f">{NOBODY}<?pi x?><", 1),
        "saml_signature_invalid",
    ),
    "truncated": (lambda xml: xml[: len(xml) // 2], "saml_malformed"),
    "not-xml": (lambda xml: "\x00\x01 not xml at all", "saml_malformed"),
    "xml-without-a-response": (lambda xml: "<a/>", "saml_malformed"),
    "a-response-in-another-namespace": (
        lambda xml: xml.replace(saml_idp.NS["samlp"], "urn:evil", 1),
        "saml_malformed",
    ),
}


@pytest.mark.parametrize("name", HOSTILE_XML)
def test_hostile_xml_is_refused_cleanly(app, browser, name):
    """Malformed or hostile XML around a validly signed Response: a 4xx
    with the reason, never a 500 or a hang, nothing stored."""
    change, reason = HOSTILE_XML[name]
    xml = change(browser.xml(browser.start(), name_id=NOBODY))
    before = table_rows(app, *KEPT)
    response = browser.post(encode(xml.encode("latin-1", "replace")))
    assert response.status_code in (400, 403), response.get_data(as_text=True)[:500]
    assert "Single sign-on refused" in response.get_data(as_text=True)
    assert reasons(app) == [reason]
    assert table_rows(app, *KEPT) == before
    assert session_cookie(browser.client) is None


def test_a_comment_in_the_issuer_reads_as_the_whole_issuer(app, browser):
    """A comment inside the signed Issuer survives canonicalisation; the
    Issuer is read whole, so it is still the IdP's own (and a comment can
    never turn another issuer into ours)."""
    xml = browser.xml(browser.start(), name_id=MIA)
    issuer = browser.idp.entity_id
    xml = xml.replace(f">{issuer}<", f">{issuer[:12]}<!---->{issuer[12:]}<")
    response = browser.post(encode(xml))
    assert reasons(app) == []
    assert response.status_code == 302


def test_an_oversized_answer_is_refused_before_it_is_read(app, browser):
    """A SAMLResponse far larger than any IdP sends: past the ACS's 1 MiB
    body limit, 413 with a page and an audit entry, nothing parsed; past
    its 512 KiB field limit, 400 and sso.signin_failure."""
    request_id = browser.start()
    padding = "<!--" + "x" * 1_100_000 + "-->"
    xml = browser.xml(request_id).replace("<saml:Issuer", padding + "<saml:Issuer", 1)
    response = browser.post(encode(xml))
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)
    assert events(app, "request.refused", reason="request_too_large")
    padding = "<!--" + "x" * 500_000 + "-->"
    xml = browser.xml(request_id).replace("<saml:Issuer", padding + "<saml:Issuer", 1)
    response = browser.post(encode(xml))
    assert response.status_code == 400
    assert events(app, "sso.signin_failure", reason="saml_malformed")
    assert session_cookie(browser.client) is None


def test_the_acs_with_the_database_down_answers_503(app, browser, caplog):
    """The IdP's POST arrives while the database is unreachable: a clear
    503 page and an error in the log, never a 500 or a session."""
    saml_response = encode(browser.xml(browser.start(), name_id=MIA))
    with database_down(app):
        response = browser.post(saml_response)
    assert response.status_code == 503
    assert "Temporarily unavailable" in response.get_data(as_text=True)
    assert "store.unavailable" in caplog.text
    assert session_cookie(browser.client) is None
    # Nothing was used up: the same answer works once the database is back.
    assert browser.post(saml_response).status_code == 302


# --- login CSRF and where the browser goes after ---------------------------------------


def test_an_attackers_own_answer_in_a_victims_browser_is_refused(app, idp, acme):
    """Login CSRF (SECURITY.md 7.6.2): Mallory signs in at the IdP as
    herself and makes the victim's browser post her valid answer; the
    victim has no binding cookie, or one of her own from a sign-in she had
    begun. Mallory would be signed in as herself in the victim's browser."""
    make_user(app, acme, f"mallory@{ACME}")
    mallory = new_browser(app, acme, idp)
    answer = encode(mallory.xml(mallory.start(), name_id=f"mallory@{ACME}"))
    fresh = new_browser(app, acme, idp)
    busy = new_browser(app, acme, idp)
    busy.start()
    before = table_rows(app, *KEPT)
    for victim in (fresh, busy):
        refused(victim.post(answer))
        assert session_cookie(victim.client) is None
    assert reasons(app) == ["request_other_browser", "request_other_browser"]
    assert table_rows(app, *KEPT) == before


@pytest.fixture
def https(overrides: dict[str, Any]) -> None:
    overrides["public_url"] = "https://sso.example"


def test_the_binding_cookie_cannot_be_planted_or_read(https, app, idp):
    """The cookie that binds a sign-in to its browser cannot be planted by
    a sibling host (``__Host-``: no Domain, Secure, Path=/) nor read by a
    script; so an attacker cannot hand the victim a binding of their own."""
    workspace = saml_workspace(app, "Acme", idp, ACME)
    response = app.test_client().get(
        f"/sso/saml/{workspace.slug}/start", base_url="https://sso.example"
    )
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-portcullis_sso=")
    for flag in ("HttpOnly", "Secure", "SameSite=None", "Path=/"):
        assert flag in cookie
    assert "Domain=" not in cookie


OPEN_REDIRECTS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "/%5Cevil.example/",
    "/%2F%2Fevil.example/",
    "https:evil.example",
    "javascript:alert(1)",
    "https://localhost.evil.example/",
    "https://localhost@evil.example/",
    "/\tevil.example",
]


@pytest.mark.parametrize("rd", OPEN_REDIRECTS)
def test_sso_never_returns_to_another_site(app, browser, rd):
    """A sign-in link carrying ``rd`` to another site: the IdP signs Mia
    in and she lands on her profile, here."""
    request_id = browser.start(rd=quote(rd, safe=""))
    response = browser.post(encode(browser.xml(request_id, name_id=MIA)))
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"


def test_relay_state_of_an_idp_initiated_answer_is_not_a_redirect(app, browser):
    set_connection(app, browser.workspace, saml_idp_initiated=True)
    answer = encode(browser.xml(None, name_id=MIA))
    response = browser.post(answer, relay_state="https://evil.example/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"


# --- who the answer signs in -------------------------------------------------------------


def identities(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return [
            (subject, email)
            for subject, email in db.session.execute(
                sa.select(FederatedIdentity.subject, User.email)
                .join(User, User.id == FederatedIdentity.user_id)
                .order_by(FederatedIdentity.subject)
            )
        ]


def test_a_disabled_member_is_refused_and_not_linked(app, browser):
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == MIA).values(status="disabled")
        )
        db.session.commit()
    before = table_rows(app, *KEPT)
    body = refused(browser.post(encode(browser.xml(browser.start(), name_id=MIA))))
    assert "disabled" in body
    assert reasons(app) == ["sso_account_disabled"]
    assert table_rows(app, *KEPT) == before
    assert session_cookie(browser.client) is None


def test_a_linked_member_disabled_later_is_refused(app, idp, acme):
    sso_session(app, idp, acme, MIA)
    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == MIA).values(status="disabled")
        )
        db.session.commit()
    browser = new_browser(app, acme, idp)
    refused(browser.post(encode(browser.xml(browser.start(), name_id=MIA))))
    assert reasons(app) == ["sso_account_disabled"]
    assert session_cookie(browser.client) is None


def test_an_idp_initiated_answer_works_once(app, browser):
    """IdP-initiated sign-in turned on: the same answer posted again, by
    the same browser or another, is refused."""
    set_connection(app, browser.workspace, saml_idp_initiated=True)
    answer = encode(browser.xml(None, name_id=MIA))
    assert browser.post(answer).status_code == 302
    before = table_rows(app, *KEPT, SamlAssertionSeen)
    for client in (browser, new_browser(app, browser.workspace, browser.idp)):
        refused(client.post(answer))
    assert reasons(app) == ["saml_replayed", "saml_replayed"]
    assert table_rows(app, *KEPT, SamlAssertionSeen) == before


GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"


def _unsigned_group(xml: str) -> str:
    """An admin group added outside the signed assertion, where a Response
    that is not itself signed leaves room: its Extensions."""
    return saml_idp._after_issuer(
        xml,
        "<samlp:Extensions><saml:AttributeStatement>"
        f'<saml:Attribute Name="{GROUPS}"><saml:AttributeValue>'
        "portcullis-admins</saml:AttributeValue></saml:Attribute>"
        "</saml:AttributeStatement></samlp:Extensions>",
    )


def _group_in_assertion(xml: str) -> str:
    """The same group slipped into the signed assertion."""
    return xml.replace(
        "</saml:AttributeStatement>",
        f'<saml:Attribute Name="{GROUPS}"><saml:AttributeValue>'
        "portcullis-admins</saml:AttributeValue></saml:Attribute>"
        "</saml:AttributeStatement>",
        1,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [(_unsigned_group, None), (_group_in_assertion, "saml_signature_invalid")],
    ids=["outside-the-assertion", "inside-the-signed-assertion"],
)
def test_group_mapping_takes_only_signed_groups(app, browser, change, reason):
    """The group mapping makes portcullis-admins an Admin. Mia's IdP puts
    her in staff only; the group added by hand makes nobody an admin."""
    set_connection(
        app,
        browser.workspace,
        saml_idp_initiated=True,
        group_roles=[{"group": "portcullis-admins", "role": "admin"}],
    )
    xml = browser.xml(None, name_id=MIA, attributes={GROUPS: ["staff"]})
    response = browser.post(encode(change(xml)))
    with app.app_context():
        role = db.session.scalar(sa.select(User.role).where(User.email == MIA))
    assert role == "read_only"
    assert events(app, "user.change_role") == []
    if reason is None:
        assert response.status_code == 302
    else:
        refused(response)
        assert reasons(app) == [reason]


@pytest.mark.parametrize(
    "name_id",
    ["MIA@acme.example", " mia@acme.example\n", "mia@ACME.EXAMPLE"],
    ids=["upper-local", "whitespace", "upper-domain"],
)
def test_another_spelling_of_a_linked_name_id_is_not_a_second_link(
    app, idp, acme, name_id
):
    """Mia is linked by her NameID. Another spelling of it is another
    subject to us: it may not take over her account a second time (an
    IdP that re-created someone is the admins' to sort out), except that
    surrounding whitespace is not part of the name."""
    sso_session(app, idp, acme, MIA)
    browser = new_browser(app, acme, idp)
    response = browser.post(encode(browser.xml(browser.start(), name_id=name_id)))
    if name_id.strip() == MIA:
        assert response.status_code == 302
        assert reasons(app) == []
    else:
        refused(response)
        assert reasons(app) == ["sso_identity_conflict"]
        assert session_cookie(browser.client) is None
    assert identities(app) == [(MIA, MIA)]


def test_two_email_values_sign_in_as_the_first_only(app, browser):
    """The email attribute carries an address outside the verified domain,
    then Mia's: the first is the person's address, and it is refused; the
    second is never tried."""
    xml = browser.xml(
        browser.start(),
        name_id="opaque-id-7",
        name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        attributes={"email": ["mallory@evil.example", MIA]},
    )
    before = table_rows(app, *KEPT)
    refused(browser.post(encode(xml)))
    assert reasons(app) == ["sso_email_unverified"]
    assert table_rows(app, *KEPT) == before


@pytest.mark.parametrize(
    "email",
    ["mіa@acme.example", "mia\u200b@acme.example", "mia@acme.example.evil.example"],
    ids=["cyrillic-i", "zero-width-space", "suffix"],
)
def test_lookalike_addresses_do_not_link_to_mia(app, browser, email):
    """Addresses that look like Mia's are not hers: with just-in-time
    accounts off, nobody signs in; Mia's account is untouched."""
    xml = browser.xml(browser.start(), name_id=email)
    before = table_rows(app, *KEPT)
    refused(browser.post(encode(xml)))
    assert reasons(app)[0] in (
        "sso_no_account",
        "sso_email_missing",
        "sso_email_unverified",
    )
    assert table_rows(app, *KEPT) == before


# --- the SSO tab ------------------------------------------------------------------------

PAGE = "/portal/sso"


def admin_of(app, email: str = BOSS):  # type: ignore[no-untyped-def]
    """A browser signed in as the admin by the break-glass password."""
    client = app.test_client()
    response = email_then_password(client, email)
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return client


def tab_post(client, path: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    return post_form(client, PAGE + path, data, csrf_page=PAGE)


SAML_FORM_ATTACKS = {
    "crlf-in-sign-in-url": {"sso_url": "https://idp.example/sso\r\nSet-Cookie: x=1"},
    "tab-in-sign-in-url": {"sso_url": "https://idp.example/s\tso"},
    "space-in-sign-in-url": {"sso_url": "https://idp.example/a b"},
    "javascript-sign-in-url": {"sso_url": "javascript:alert(1)//https://x"},
    "oversized-entity-id": {"entity_id": "https://idp.example/" + "e" * 5000},
    "crlf-in-entity-id": {"entity_id": "https://idp.example/\r\nx"},
    "oversized-certificate": {"certificate": "A" * 20_000},
    "not-a-certificate": {"certificate": "<script>alert(1)</script>"},
}


@pytest.mark.parametrize("name", SAML_FORM_ATTACKS)
def test_bad_saml_settings_are_refused_and_change_nothing(app, idp, acme, name):
    admin = admin_of(app)
    before = table_rows(app, SsoConnection)
    data = {
        "source": "manual",
        "entity_id": "https://idp.example/entity",
        "sso_url": "https://idp.example/sso",
        "certificate": idp.certificate_pem,
        **SAML_FORM_ATTACKS[name],
    }
    response = tab_post(admin, "/saml", data)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert table_rows(app, SsoConnection) == before
    assert "<script>alert" not in response.get_data(as_text=True)
    # And the sign-in still starts (a stored CR/LF would be a 500 here).
    assert app.test_client().get(f"/sso/saml/{acme.slug}/start").status_code == 302


def test_script_in_the_entity_id_is_shown_as_text(app, idp, acme):
    """An entity id is any URI the IdP chose; what the admin typed comes
    back escaped on the tab and in the audit log view."""
    admin = admin_of(app)
    entity_id = 'https://idp.example/"><script>alert(1)</script>'
    response = tab_post(
        admin,
        "/saml",
        {
            "source": "manual",
            "entity_id": entity_id,
            "sso_url": "https://idp.example/sso",
            "certificate": idp.certificate_pem,
        },
    )
    assert response.status_code == 302
    for page in (PAGE, "/portal/audit-logs"):
        shown = admin.get(page)
        assert shown.status_code == 200, page
        assert "<script>alert(1)</script>" not in shown.get_data(as_text=True), page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in admin.get(PAGE).get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    "data",
    [
        {"group_roles": "x" * 9000},
        {"group_roles": "portcullis-admins = owner"},
        {"group_roles": "bad\x00group = admin"},
        {"attr_email": "e" * 300},
        {"default_role": "owner"},
    ],
    ids=["huge-mapping", "unknown-role", "nul-in-group", "huge-attribute", "role"],
)
def test_bad_options_are_refused_and_change_nothing(app, acme, data):
    admin = admin_of(app)
    before = table_rows(app, SsoConnection)
    form = {"enabled": "1", "default_role": "read_only", **data}
    response = tab_post(admin, "/options", form)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert table_rows(app, SsoConnection) == before


# --- domains across workspaces -------------------------------------------------------------


@pytest.fixture
def bravo_admin(app, bravo):  # type: ignore[no-untyped-def]
    make_user(app, bravo, "root@bravo.example", role="admin")
    return admin_of(app, "root@bravo.example")


def bravo_claims(app, bravo, admin, domain: str) -> SsoDomain:  # type: ignore[no-untyped-def]
    assert tab_post(admin, "/domains", {"domain": domain}).status_code == 302
    with app.app_context():
        entry = db.session.scalars(
            sa.select(SsoDomain).where(
                SsoDomain.workspace_id == bravo.id,
                SsoDomain.domain == normalize_domain(domain),
            )
        ).one()
        db.session.expunge(entry)
        return entry


@pytest.mark.parametrize("spelling", [ACME, "ACME.Example.", "@acme.example"])
def test_bravo_cannot_verify_acmes_domain_even_with_its_own_record(
    app, acme, bravo, bravo_admin, spelling
):
    """Bravo claims acme.example (verified by Acme), publishes the TXT record
    we ask Bravo for (it controls that DNS, say, after buying an expired
    subdomain's zone): a domain is verified for one workspace only, and
    addresses there keep going to Acme's IdP."""
    entry = bravo_claims(app, bravo, bravo_admin, spelling)
    stub_dns(app, {record_name(entry): [record_value(entry)]})
    before = table_rows(app, SsoDomain)
    response = tab_post(bravo_admin, f"/domains/{entry.id}/verify", {})
    assert response.status_code == 409
    assert "already verified for another workspace" in response.get_data(as_text=True)
    assert table_rows(app, SsoDomain) == before
    assert len(events(app, "sso.domain_verified", reason="domain_taken")) == 1
    routed = post_form(app.test_client(), "/login", {"email": MIA}, csrf_page="/login")
    assert routed.headers["Refresh"] == f"0; url=/sso/saml/{acme.slug}/start"


def test_the_operator_cannot_approve_acmes_domain_for_bravo(
    app, acme, bravo, monkeypatch, capsys
):
    from idp import cli

    monkeypatch.setattr(cli, "_app", lambda: app)
    before = table_rows(app, SsoDomain)
    try:
        code = cli.main(["domain", "approve", "--workspace", bravo.slug, ACME])
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code != 0
    assert "already verified for another workspace" in capsys.readouterr().err
    assert table_rows(app, SsoDomain) == before


def test_acmes_record_does_not_verify_bravos_claim(app, idp, bravo, bravo_admin):
    """Both claim shared.example; only Acme's TXT value is published. Bravo's
    claim stays pending: each claim has its own token."""
    acme = saml_workspace(app, "Acme", idp, None)
    acme_entry = add_domain(app, acme, "shared.example")
    entry = bravo_claims(app, bravo, bravo_admin, "shared.example")
    stub_dns(app, {record_name(entry): [record_value(acme_entry)]})
    response = tab_post(bravo_admin, f"/domains/{entry.id}/verify", {})
    assert response.status_code == 400
    assert len(events(app, "sso.domain_verified", reason="dns_record_missing")) == 1
    with app.app_context():
        assert db.session.get(SsoDomain, entry.id).verified_at is None


def test_bravo_cannot_verify_or_remove_acmes_claim_by_its_id(app, acme, bravo_admin):
    with app.app_context():
        acme_entry = db.session.scalars(
            sa.select(SsoDomain).where(SsoDomain.workspace_id == acme.id)
        ).one()
    before = table_rows(app, SsoDomain)
    for action in ("verify", "remove"):
        response = tab_post(bravo_admin, f"/domains/{acme_entry.id}/{action}", {})
        assert response.status_code == 404, action
    assert table_rows(app, SsoDomain) == before


# --- Test connection and removal ------------------------------------------------------------


def test_test_connection_touches_no_account_and_no_role(app, idp, acme, ada, clock):
    """With just-in-time accounts and an admin group mapping on, the admin's
    *Test connection* receives an answer naming a new address and Mia in
    the admin group: no account is made, Mia stays Read Only, and nobody
    is signed in."""
    set_connection(
        app,
        acme,
        jit_enabled=True,
        group_roles=[{"group": "portcullis-admins", "role": "admin"}],
    )
    admin = admin_of(app)
    other = admin_of(app, "ada@acme.example")
    before = table_rows(app, User, FederatedIdentity, Session)
    for name_id in (f"new@{ACME}", MIA):
        sent = tab_post(admin, "/test", {})
        target = sent.headers["Refresh"].removeprefix("0; url=")
        browser = Browser(app, acme, idp, clock)
        browser.client = admin
        seen = idp.read_request(target, browser.sp_cert)
        answer = browser.xml(
            seen.id, name_id=name_id, attributes={GROUPS: ["portcullis-admins"]}
        )
        landed = browser.post(encode(answer))
        assert landed.headers["Location"] == f"{PAGE}/test/{seen.id}"
        # Another admin of the workspace, in another browser, sees nothing.
        assert other.get(landed.headers["Location"]).status_code == 404
        assert admin.get(landed.headers["Location"]).status_code == 200
    assert table_rows(app, User, FederatedIdentity, Session) == before
    assert events(app, "user.change_role") == []
    assert events(app, "sso.user_created") == []


@pytest.fixture
def ada(app, acme):  # type: ignore[no-untyped-def]
    return make_user(app, acme, "ada@acme.example", role="admin")


def test_removing_the_connection_ends_every_sso_session(app, idp, acme, ada, clock):
    """Mia signed in through the IdP twice: once straight in, once through
    the MFA step (MFA forced). The admin removes the connection: both
    sessions end at their next request; the admin's password session stays."""
    plain = sso_session(app, idp, acme, MIA)
    with app.app_context():
        db.session.get(SecurityPolicy, acme.id).mfa_mode = "force"
        db.session.commit()
    give_authenticator(app, MIA)
    browser = Browser(app, acme, idp, clock)
    step = browser.post(encode(browser.xml(browser.start(), name_id=MIA)))
    assert step.headers["Location"] == "/login/mfa"
    code = pyotp.TOTP(TOTP_SECRET).at(clock.now)
    done = post_form(browser.client, "/login/mfa", {"method": "totp", "code": code})
    assert done.status_code == 302, done.get_data(as_text=True)[:300]
    with app.app_context():
        db.session.get(SecurityPolicy, acme.id).mfa_mode = "off"
        db.session.commit()
    for client in (plain, browser.client):
        assert client.get("/portal/profile").status_code == 200
    admin = admin_of(app, "ada@acme.example")
    assert tab_post(admin, "/remove", {}).status_code == 302
    for client in (plain, browser.client):
        response = client.get("/portal/profile")
        assert response.status_code == 302
        assert "sso_removed" in response.headers["Location"]
    assert admin.get("/portal/profile").status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(FederatedIdentity.id))) == 0


# --- rate limits ------------------------------------------------------------------------------


@pytest.fixture
def strict(overrides: dict[str, Any]) -> None:
    overrides["signin"] = {"ip_limits": "3 per minute"}


@pytest.mark.parametrize("route", ["start", "acs", "callback"])
def test_sso_routes_are_rate_limited_per_address(strict, app, idp, route):
    """A script hammering the SSO endpoints from one address: a 429 page
    with Retry-After and an audit entry, never a 500."""
    workspace = saml_workspace(app, "Acme", idp, ACME)
    client = app.test_client()
    path = {
        "start": f"/sso/saml/{workspace.slug}/start",
        "acs": f"/sso/saml/{workspace.slug}/acs",
        "callback": f"/sso/oidc/{workspace.slug}/callback",
    }[route]

    def hit():  # type: ignore[no-untyped-def]
        if route == "acs":
            return client.post(path, data={"SAMLResponse": "bm90IHhtbA=="})
        return client.get(path)

    statuses = [hit().status_code for _ in range(4)]
    assert 500 not in statuses and statuses[-1] == 429
    response = hit()
    assert response.status_code == 429 and response.headers["Retry-After"]
    assert "Too many attempts" in response.get_data(as_text=True)
    assert events(app, "request.refused", reason="rate_limited")


# --- passkeys under Require SSO -----------------------------------------------------------------


def test_a_passkey_does_not_get_round_require_sso(app, idp, acme):
    """Mia adds a passkey while signed in through the IdP; then the admin
    turns *Require SSO* on. Her passkey no longer signs her in (it would
    keep her in after the company's IdP let her go); the admin's still
    does, recorded as a break-glass."""
    mia_key = given_key(app, sso_session(app, idp, acme, MIA))
    boss_key = given_key(app, sso_session(app, idp, acme, BOSS))
    set_connection(app, acme, require_sso=True)
    before = table_rows(app, Session)
    browser = app.test_client()
    response = passkey_sign_in(browser, mia_key)
    assert response.status_code == 403
    assert f'href="/sso/saml/{acme.slug}/start"' in response.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert table_rows(app, Session) == before
    (event,) = events(app, "signin.failure", reason="sso_required")
    assert event.details == {"method": "passkey"}

    boss = app.test_client()
    assert passkey_sign_in(boss, boss_key).status_code == 302
    (glass,) = events(app, "signin.break_glass")
    assert glass.details == {"method": "passkey", "break_glass": True}


# --- OpenID Connect ---------------------------------------------------------------------------


@pytest.fixture
def private_urls(overrides: dict[str, Any]) -> None:
    # The stub IdP listens on loopback. Named before ``app`` by the tests
    # that use it, so the app is built with it.
    overrides["sso"] = {"allow_private_urls": True}


def oidc_workspace(app, name: str, issuer: str, domain: str | None):  # type: ignore[no-untyped-def]
    workspace = make_workspace(app, name)
    with app.app_context():
        oidc_service.configure(
            Context.operator(),
            workspace,
            issuer=issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
    if domain:
        add_domain(app, workspace, domain, verified_by="operator")
    return workspace


@pytest.fixture
def stub() -> Iterator[StubIdp]:
    with running_stub() as running:
        yield running


@pytest.fixture
def orbit(app, stub):  # type: ignore[no-untyped-def]
    """Orbit, on the stub OIDC IdP, with acme.example verified and Mia."""
    workspace = oidc_workspace(app, "Orbit", stub.issuer, ACME)
    make_user(app, workspace, MIA)
    return workspace


def oidc_start(client, workspace) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = client.get(f"/sso/oidc/{workspace.slug}/start")
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return dict(parse_qsl(urlsplit(response.headers["Location"]).query))


def oidc_back(client, workspace, args: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.get(f"/sso/oidc/{workspace.slug}/callback?{urlencode(args)}")


def mias_token(stub: StubIdp, sent: str, **claims: Any) -> str:
    """Mia's ID token; a claim given as None is left out."""
    values = {"email": MIA, "email_verified": True, "nonce": sent, **claims}
    nonce = values.pop("nonce")
    return sign(id_claims(stub.issuer, nonce, **values), stub.key)


NOW = time.time()
BAD_TOKENS = {
    "aud-array-without-azp": (
        {"aud": [CLIENT_ID, "another-app"]},
        "oidc_audience",
    ),
    "azp-of-another-app": (
        {"aud": [CLIENT_ID, "another-app"], "azp": "another-app"},
        "oidc_audience",
    ),
    "issued-in-the-future": ({"iat": int(NOW) + 3600}, "oidc_not_yet_valid"),
    "not-before-the-future": ({"nbf": int(NOW) + 3600}, "oidc_not_yet_valid"),
    "expired": ({"iat": int(NOW) - 7200, "exp": int(NOW) - 3600}, "oidc_expired"),
    "exp-as-text": ({"exp": "9999999999"}, "oidc_id_token_invalid"),
    "no-nonce": ({"nonce": None}, "oidc_nonce"),
    "another-issuer": ({"iss": "https://evil.example"}, "oidc_issuer"),
    "subject-too-long": ({"sub": "s" * 300}, "oidc_id_token_invalid"),
    "subject-not-text": ({"sub": 12345}, "oidc_id_token_invalid"),
    "email-verified-false-as-text": (
        {"email_verified": "false"},
        "sso_email_unverified",
    ),
    "email-verified-missing": ({"email_verified": None}, "sso_email_unverified"),
}


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_id_tokens_sign_nobody_in(private_urls, app, client, stub, orbit, name):
    changes, reason = BAD_TOKENS[name]
    sent = oidc_start(client, orbit)
    stub.id_token = mias_token(stub, sent["nonce"], **changes)
    before = table_rows(app, *KEPT)
    refused(oidc_back(client, orbit, {"code": "c", "state": sent["state"]}))
    assert reasons(app) == [reason]
    assert table_rows(app, *KEPT) == before
    assert session_cookie(client) is None


def test_a_far_future_expiry_still_works_only_once(
    private_urls, app, client, stub, orbit
):
    """An ID token valid for ten years is accepted (the IdP's choice), but
    the state and nonce it answers are single-use: replaying the callback,
    from this browser or another, signs nobody in."""
    sent = oidc_start(client, orbit)
    stub.id_token = mias_token(stub, sent["nonce"], exp=int(NOW) + 10 * 365 * 86400)
    args = {"code": "c", "state": sent["state"]}
    assert oidc_back(client, orbit, args).status_code == 302
    for browser in (client, app.test_client()):
        refused(oidc_back(browser, orbit, args))
    assert reasons(app) == ["oidc_state", "oidc_state"]


def test_an_hmac_key_in_the_jwks_is_never_used(private_urls, app, client):
    """The IdP's JWKS also lists a symmetric key under the RSA key's kid,
    and its discovery lists HS256: an HS256 token made with that shared
    secret is refused (asymmetric algorithms only)."""
    rsa = rsa_key("k1")
    secret = OctKey.generate_key(256, parameters={"kid": "k1"})
    with running_stub(keys=[rsa], algorithms=["RS256", "HS256"]) as stub:
        workspace = oidc_workspace(app, "Orbit", stub.issuer, ACME)
        make_user(app, workspace, MIA)
        stub.keys.append(secret)
        sent = oidc_start(client, workspace)
        claims = id_claims(stub.issuer, sent["nonce"], email=MIA, email_verified=True)
        stub.id_token = jwt.encode({"alg": "HS256", "kid": "k1"}, claims, secret)
        refused(oidc_back(client, workspace, {"code": "c", "state": sent["state"]}))
    assert reasons(app) == ["oidc_alg_refused"]
    assert session_cookie(client) is None


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u"])
def test_keys_named_in_the_token_header_are_ignored(
    private_urls, app, client, stub, orbit, header
):
    """The attacker signs with a key of their own and names it in the
    header (an embedded jwk, or a URL to fetch it from)."""
    attacker = rsa_key("attacker")
    sent = oidc_start(client, orbit)
    place = {
        "jwk": attacker.as_dict(private=False),
        "jku": f"{stub.base}/evil-jwks",
        "x5u": f"{stub.base}/evil-cert",
    }[header]
    stub.id_token = sign(
        id_claims(stub.issuer, sent["nonce"], email=MIA, email_verified=True),
        attacker,
        header={header: place},
    )
    refused(oidc_back(client, orbit, {"code": "c", "state": sent["state"]}))
    assert reasons(app) == ["oidc_key_unknown"]
    assert "/evil-jwks" not in stub.hits and "/evil-cert" not in stub.hits
    assert session_cookie(client) is None


def test_orbits_state_at_another_workspaces_callback_is_refused(
    private_urls, app, client, stub, orbit
):
    """Two workspaces on the same IdP and client: a state begun for Orbit
    returned to Nova's callback, by the same browser."""
    nova = make_workspace(app, "Nova")
    with app.app_context():
        connection = db.session.scalars(
            sa.select(SsoConnection).where(SsoConnection.workspace_id == orbit.id)
        ).one()
        db.session.add(
            SsoConnection(
                workspace_id=nova.id,
                protocol="oidc",
                enabled=True,
                oidc_issuer=connection.oidc_issuer,
                oidc_client_id=connection.oidc_client_id,
                oidc_client_secret=connection.oidc_client_secret,
                oidc_discovery=connection.oidc_discovery,
                oidc_jwks=connection.oidc_jwks,
            )
        )
        db.session.commit()
    sent = oidc_start(client, orbit)
    stub.id_token = mias_token(stub, sent["nonce"])
    refused(oidc_back(client, nova, {"code": "c", "state": sent["state"]}))
    assert reasons(app) == ["oidc_state"]
    assert stub.token_requests == []
    assert session_cookie(client) is None


PRIVATE_HOSTS = [
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "2852039166",
    "0x7f.1",
    "localhost",
    "[fd00::1]",
    # IPv4 inside IPv6: NAT64, 6to4, IPv4-compatible and SIIT-translated.
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b:1::a9fe:a9fe]",
    "[2002:a9fe:a9fe::1]",
    "[::a9fe:a9fe]",
    "[::ffff:0:a9fe:a9fe]",
]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_stored_endpoints_on_private_addresses_are_never_reached(app, client, host):
    """Discovery saved while private URLs were allowed (or an IdP whose
    document points at the cloud metadata service): with private URLs now
    off, the token and JWKS endpoints there are refused before any
    connection, and the sign-in fails with a 502 page."""
    workspace = make_workspace(app, "Orbit")
    add_connection(
        app,
        workspace,
        "oidc",
        oidc_discovery={
            **DISCOVERY,
            "token_endpoint": f"https://{host}/latest/meta-data/",
            "jwks_uri": f"https://{host}/jwks",
        },
    )
    sent = oidc_start(client, workspace)
    response = oidc_back(client, workspace, {"code": "c", "state": sent["state"]})
    assert response.status_code == 502
    assert reasons(app) == ["oidc_idp_unreachable"]
    (event,) = events(app, "sso.signin_failure")
    assert "private" in event.details["error"] or "resolved" in event.details["error"]
    assert session_cookie(client) is None


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_an_issuer_on_a_private_address_is_refused(app, host):
    workspace = make_workspace(app, "Orbit")
    admin_email = "root@orbit.example"
    make_user(app, workspace, admin_email, role="admin")
    admin = admin_of(app, admin_email)
    before = table_rows(app, SsoConnection)
    response = tab_post(
        admin,
        "/oidc",
        {
            "issuer": f"https://{host}",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    assert response.status_code == 400
    assert table_rows(app, SsoConnection) == before


def test_a_metadata_url_redirecting_to_a_private_address_is_not_followed(
    private_urls, app
):
    """The metadata URL answers with a redirect to the cloud metadata
    service: redirects are never followed, so the admin gets the refusal."""
    workspace = make_workspace(app, "Acme")
    make_user(app, workspace, BOSS, role="admin")
    admin = admin_of(app)
    with redirecting("http://169.254.169.254/latest/meta-data/") as url:
        response = tab_post(admin, "/saml", {"source": "url", "metadata_url": url})
    assert response.status_code == 400
    assert "answered 302" in response.get_data(as_text=True)
    assert table_rows(app, SsoConnection) == {"sso_connections": []}


@contextmanager
def redirecting(location: str) -> Iterator[str]:
    """A server on loopback that answers every GET with a redirect."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metadata.xml"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("name_id", [f"new@{ACME}", MIA], ids=["new", "member"])
def test_a_sign_in_the_ip_allow_list_refuses_changes_nothing(app, browser, name_id):
    """Just-in-time accounts and an admin group mapping on, and an IP
    allow-list the person is outside of: the sign-in is refused, and the
    account, link or role change it would have made is not left behind."""
    set_connection(
        app,
        browser.workspace,
        jit_enabled=True,
        group_roles=[{"group": "portcullis-admins", "role": "admin"}],
    )
    with app.app_context():
        db.session.add(
            IpAllowEntry(workspace_id=browser.workspace.id, network="203.0.113.0/24")
        )
        db.session.get(
            SecurityPolicy, browser.workspace.id
        ).ip_restriction_enabled = True
        db.session.commit()
    before = table_rows(app, *KEPT)
    xml = browser.xml(
        browser.start(),
        name_id=name_id,
        attributes={GROUPS: ["portcullis-admins"]},
    )
    response = browser.post(encode(xml))
    assert response.status_code == 403, response.get_data(as_text=True)[:300]
    assert session_cookie(browser.client) is None
    assert table_rows(app, *KEPT) == before
    (event,) = events(app, "signin.failure")
    assert (event.reason, event.target_label) == ("ip_not_allowed", name_id)
    assert events(app, "sso.user_created") == []
    assert events(app, "user.change_role") == []
    assert events(app, "sso.signin_success") == []


@pytest.mark.parametrize(
    "iss",
    [None, "https://evil.example", "{issuer}/"],
    ids=["missing", "other", "slash"],
)
def test_a_mixed_up_answer_never_reaches_the_token_endpoint(
    private_urls, app, client, iss
):
    """RFC 9207: the IdP says it names itself in every answer; an answer
    naming another IdP (or none) is refused before the code is sent
    anywhere."""
    with running_stub(sends_iss=True) as stub:
        workspace = oidc_workspace(app, "Orbit", stub.issuer, ACME)
        make_user(app, workspace, MIA)
        sent = oidc_start(client, workspace)
        stub.id_token = mias_token(stub, sent["nonce"])
        args = {"code": "c", "state": sent["state"]}
        if iss is not None:
            args["iss"] = iss.format(issuer=stub.issuer)
        refused(oidc_back(client, workspace, args))
        assert stub.token_requests == []
    assert reasons(app) == ["oidc_issuer"]
    assert session_cookie(client) is None


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),
        ("access_denied\r\nforged: line", "unreadable"),
        ("x" * 100, "unreadable"),
    ],
    ids=["markup", "crlf", "long"],
)
def test_the_idps_error_is_shown_as_text(
    private_urls, app, client, stub, orbit, error, kept
):
    """An error answer (anyone can craft the URL) with markup or line
    breaks in it: a 403 page that escapes it; the audit log keeps the code
    only when it is one (RFC 6749's characters allow markup, never a line
    break), else "unreadable"."""
    response = oidc_back(
        client, orbit, {"error": error, "error_description": error, "state": "x"}
    )
    body = refused(response)
    assert "<script>" not in body and "forged:" not in body
    (event,) = events(app, "sso.signin_failure")
    assert event.reason == "oidc_idp_error"
    assert event.details["error"] == kept


def test_forged_key_ids_do_not_make_us_hammer_the_idp(
    private_urls, app, stub, orbit, clock
):
    """Tokens naming a key id the IdP never published, one sign-in after
    another: the JWKS is fetched again at most once a minute."""
    fetched = stub.hits.get("/jwks", 0)
    attacker = rsa_key("forged")
    for round_ in range(4):
        browser = app.test_client()
        sent = oidc_start(browser, orbit)
        stub.id_token = sign(
            id_claims(stub.issuer, sent["nonce"], email=MIA, email_verified=True),
            attacker,
        )
        clock.advance(seconds=61 if round_ == 2 else 5)
        refused(oidc_back(browser, orbit, {"code": "c", "state": sent["state"]}))
    assert stub.hits.get("/jwks", 0) - fetched == 1
    assert reasons(app) == ["oidc_key_unknown"] * 4

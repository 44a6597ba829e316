"""The SSO tab: who may open it, connecting by SAML (metadata URL, uploaded
metadata, values by hand) and OpenID Connect, the values to copy, the
IdP's details and warnings, the options, the domains and their DNS check,
*Test connection* and its result page, and removing the connection. Every
refusal is a 4xx in its section, with nothing stored and an audit entry."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import FederatedIdentity, Session, SsoConnection, SsoDomain, SsoRequest
from idp.services.sso import domains as sso_domains
from tests.conftest import (
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
    table_rows,
)
from tests.integration.sso_helpers import (
    ISSUER,
    add_connection,
    add_domain,
    certificate_pem,
    connection_of,
    domains_of,
    events,
    fresh_certificate,
    set_connection,
    stub_dns,
)
from tests.integration.test_authorization import check_page_headers, inline_code

PAGE = "/portal/sso"
SSO_TABLES = (SsoConnection, SsoDomain)
DATA = Path(__file__).resolve().parents[1] / "data" / "saml"


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    make_user(app, ws, "ann@example.com", role="admin", name="Ann Admin")
    make_user(app, ws, "rob@example.com", name="Rob Reader")
    return ws


@pytest.fixture
def admin(app, acme):  # type: ignore[no-untyped-def]
    return signed_in(app, "ann@example.com")


def post(client, path: str, data: dict[str, Any], **kw: Any):  # type: ignore[no-untyped-def]
    return post_form(client, PAGE + path, data, csrf_page=PAGE, **kw)


def section(html: str, section_id: str) -> str:
    start = html.index(f'id="{section_id}"')
    return html[start : html.index("</section>", start)]


def refusals(app, reason: str) -> int:  # type: ignore[no-untyped-def]
    return len(events(app, "request.refused", reason=reason))


# --- who may open it -------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in(client, acme):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?rd=%2Fportal%2Fsso")


def test_read_only_member_is_refused_and_does_not_see_the_tab(app, acme):
    reader = signed_in(app, "rob@example.com")
    assert reader.get(PAGE).status_code == 403
    assert len(events(app, "authz.denied", reason="admin_required")) == 1
    assert f'href="{PAGE}"' not in reader.get("/portal/profile").get_data(as_text=True)
    for path in ("/saml", "/oidc", "/options", "/domains", "/test", "/remove"):
        response = reader.post(PAGE + path, data={"csrf_token": "x"})
        assert response.status_code in (400, 403), path


def test_admin_sees_the_tab_after_security(admin):
    html = admin.get("/portal/profile").get_data(as_text=True)
    assert html.index('href="/portal/security"') < html.index(f'href="{PAGE}"')


# --- not connected ----------------------------------------------------------------


def test_choice_of_protocol_then_each_form_with_our_values(admin):
    page = admin.get(PAGE)
    assert page.status_code == 200
    check_page_headers(page, portal=True)
    html = page.get_data(as_text=True)
    assert inline_code(html) == []
    assert "SAML 2.0" in html and "OpenID Connect" in html
    assert 'name="metadata_url"' not in html

    saml = admin.get(PAGE + "?connect=saml").get_data(as_text=True)
    for value in (
        "http://localhost/sso/saml/acme/metadata",
        "http://localhost/sso/saml/acme/acs",
    ):
        assert value in saml
    assert 'data-copy="saml-acs-url"' in saml and 'id="saml-acs-url"' in saml
    assert 'name="metadata_url"' in saml
    assert 'type="file" name="metadata_file"' in saml
    assert 'name="certificate_next"' in saml
    assert "/static/copy.js" in saml

    oidc = admin.get(PAGE + "?connect=oidc").get_data(as_text=True)
    assert "http://localhost/sso/oidc/acme/callback" in oidc
    assert 'data-copy="oidc-redirect-uri"' in oidc
    assert 'type="password" name="client_secret"' in oidc
    assert "stored — leave empty to keep" not in oidc


def test_forms_that_need_a_connection_say_so(app, admin):
    before = table_rows(app, *SSO_TABLES)
    for path, data, code in (
        ("/options", {"default_role": "read_only"}, "sso_not_configured"),
        ("/domains", {"domain": "example.com"}, "sso_not_configured"),
        ("/test", {}, "sso_not_configured"),
    ):
        response = post(admin, path, data)
        assert 400 <= response.status_code < 500, path
        assert "Connect an IdP first." in response.get_data(as_text=True)
    assert table_rows(app, *SSO_TABLES) == before
    assert refusals(app, "sso_not_configured") == 3


# --- connecting by SAML -------------------------------------------------------------


@pytest.fixture
def saml_service():  # type: ignore[no-untyped-def]
    from idp.services.sso import saml

    return saml


def test_saml_by_uploaded_metadata(app, admin, acme, saml_service):
    metadata = (DATA / "okta_idp_metadata.xml").read_bytes()
    response = post(
        admin,
        "/saml",
        {"source": "xml", "metadata_file": (io.BytesIO(metadata), "metadata.xml")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert response.headers["Location"].endswith(f"{PAGE}#idp")
    stored = connection_of(app, acme)
    assert stored.protocol == "saml" and stored.saml_entity_id
    assert stored.saml_sso_url.startswith("https://")
    html = admin.get(PAGE).get_data(as_text=True)
    assert "SAML connection saved." in section(html, "idp")
    assert stored.saml_entity_id in html


def test_saml_metadata_larger_than_the_app_body_limit_is_accepted(
    app, admin, acme, saml_service
):
    """ADFS publishes 70 KiB of metadata; the app's usual limit is 64 KiB."""
    metadata = (DATA / "adfs_federation_metadata.xml").read_bytes()
    assert len(metadata) > 64 * 1024
    response = post(
        admin,
        "/saml",
        {"source": "xml", "metadata_file": (io.BytesIO(metadata), "adfs.xml")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert connection_of(app, acme).saml_entity_id


@pytest.fixture
def small_uploads(overrides):  # type: ignore[no-untyped-def]
    overrides["sso"] = {"fetch_max_bytes": 2048}


def test_metadata_over_the_fetch_limit_is_refused(small_uploads, app, acme):
    admin = signed_in(app, "ann@example.com")
    limit = 2048
    big = b"<x>" + b" " * (limit + 10) + b"</x>"
    response = post(
        admin,
        "/saml",
        {"source": "xml", "metadata_file": (io.BytesIO(big), "big.xml")},
        content_type="multipart/form-data",
    )
    assert response.status_code in (400, 413)
    assert connection_of(app, acme) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "xml"}, "Choose the metadata file to upload."),
        ({"source": "nonsense"}, "Choose how to describe the IdP."),
        ({"source": "url", "metadata_url": "x" * 3000}, "too long"),
    ],
    ids=["no-file", "unknown-source", "url-too-long"],
)
def test_saml_form_refusals_before_the_service(app, admin, acme, data, message):
    before = table_rows(app, *SSO_TABLES)
    response = post(admin, "/saml", data, content_type="multipart/form-data")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in section(html, "connect")
    assert table_rows(app, *SSO_TABLES) == before
    assert len(events(app, "request.refused")) >= 1


def test_expired_metadata_is_imported_with_a_warning(app, admin, acme, saml_service):
    metadata = (DATA / "google_workspace_idp_metadata.xml").read_bytes()
    response = post(
        admin,
        "/saml",
        {"source": "xml", "metadata_file": (io.BytesIO(metadata), "google.xml")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    html = admin.get(PAGE).get_data(as_text=True)
    assert 'class="notice notice-warn"' in html.split('id="idp"')[0]
    assert ">passed<" in section(html, "idp")
    # Shown once.
    assert (
        'role="status">'
        not in admin.get(PAGE).get_data(as_text=True).split('id="idp"')[0]
    )


@pytest.mark.parametrize(
    ("data", "multipart"),
    [
        ({"source": "xml", "metadata_file": (io.BytesIO(b"not xml"), "m.xml")}, True),
        (
            {
                "source": "xml",
                "metadata_file": (
                    io.BytesIO(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'),
                    "m.xml",
                ),
            },
            True,
        ),
        ({"source": "url", "metadata_url": "http://127.0.0.1/metadata"}, False),
        ({"source": "url", "metadata_url": ""}, False),
    ],
    ids=["not-xml", "doctype", "loopback-url", "empty-url"],
)
def test_saml_service_refusals_show_inline(
    app, admin, acme, saml_service, data, multipart
):
    before = table_rows(app, *SSO_TABLES)
    kw = {"content_type": "multipart/form-data"} if multipart else {}
    response = post(admin, "/saml", data, **kw)
    assert response.status_code == 400
    assert "notice-error" in section(response.get_data(as_text=True), "connect")
    assert table_rows(app, *SSO_TABLES) == before


def test_saml_by_hand_with_bad_values_is_refused_inline(app, admin, acme, saml_service):
    before = table_rows(app, *SSO_TABLES)
    response = post(
        admin,
        "/saml",
        {
            "source": "manual",
            "entity_id": "https://idp.example/entity",
            "sso_url": "https://idp.example/sso",
            "certificate": "not a certificate",
        },
    )
    assert 400 <= response.status_code < 500
    html = section(response.get_data(as_text=True), "connect")
    assert "notice-error" in html
    # What was typed comes back, to be corrected.
    assert "https://idp.example/entity" in html and "not a certificate" in html
    assert table_rows(app, *SSO_TABLES) == before


def test_saml_by_hand_with_two_certificates(app, admin, acme, saml_service):
    first, second = fresh_certificate("old.idp"), fresh_certificate("new.idp")
    response = post(
        admin,
        "/saml",
        {
            "source": "manual",
            "entity_id": "https://idp.example/entity",
            "sso_url": "https://idp.example/sso",
            "certificate": first,
            "certificate_next": second,
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    assert len(connection_of(app, acme).saml_certificates) == 2
    html = section(admin.get(PAGE).get_data(as_text=True), "idp")
    assert "CN=old.idp" in html and "CN=new.idp" in html
    assert "rollover in progress" in html


# --- the connected SAML page -----------------------------------------------------


def test_connected_saml_page_shows_certificates_and_expired_metadata(
    app, admin, acme, clock
):
    moment = clock.now
    expired = certificate_pem(
        "expired.idp",
        not_before=moment - timedelta(days=400),
        not_after=moment - timedelta(days=5),
    )
    add_connection(
        app,
        acme,
        saml_certificates=[expired, fresh_certificate("current.idp")],
        saml_metadata_url="https://idp.example/metadata",
        saml_metadata_valid_until=moment - timedelta(days=2),
    )
    html = admin.get(PAGE).get_data(as_text=True)
    idp = section(html, "idp")
    assert "https://idp.example/entity" in idp and "https://idp.example/sso" in idp
    assert "CN=expired.idp" in idp and "CN=current.idp" in idp
    assert ">expired<" in idp
    assert ">passed<" in idp and "valid until" in idp
    assert "Refresh metadata" in idp
    # Our values, with the metadata URL as a link.
    assert 'href="http://localhost/sso/saml/acme/metadata"' in idp
    assert "Allow IdP-initiated sign-in" in section(html, "options")


def test_refresh_needs_a_metadata_url(app, admin, acme, saml_service):
    add_connection(app, acme)
    response = post(admin, "/saml/refresh", {})
    assert 400 <= response.status_code < 500
    assert "notice-error" in section(response.get_data(as_text=True), "idp")


def test_other_protocol_must_be_removed_first(app, admin, acme):
    add_connection(app, acme, "saml")
    before = table_rows(app, *SSO_TABLES)
    response = post(
        admin,
        "/oidc",
        {"issuer": ISSUER, "client_id": "c", "client_secret": "s", "scopes": "openid"},
    )
    assert 400 <= response.status_code < 500
    assert table_rows(app, *SSO_TABLES) == before


# --- OpenID Connect -------------------------------------------------------------------


class _Discovery(BaseHTTPRequestHandler):
    issuer = ""

    def do_GET(self) -> None:
        if self.path == "/.well-known/openid-configuration":
            body = {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        elif self.path == "/jwks":
            body = {"keys": []}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def discovery_server() -> Iterator[str]:
    """An OIDC issuer on loopback that publishes discovery and an empty JWKS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    handler = type("Handler", (_Discovery,), {"issuer": issuer})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def private_urls(overrides):  # type: ignore[no-untyped-def]
    overrides["sso"] = {"allow_private_urls": True}


def test_oidc_connect_then_keep_the_stored_secret(
    private_urls, app, acme, discovery_server
):
    admin = signed_in(app, "ann@example.com")
    fields = {
        "issuer": discovery_server,
        "client_id": "portcullis",
        "client_secret": "first secret",
        "scopes": "openid email profile",
    }
    response = post(admin, "/oidc", fields)
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    stored = connection_of(app, acme)
    assert stored.protocol == "oidc" and stored.oidc_client_id == "portcullis"
    sealed = stored.oidc_client_secret
    assert sealed and "first secret" not in sealed

    html = admin.get(PAGE).get_data(as_text=True)
    assert "stored — leave empty to keep" in html
    assert "first secret" not in html
    assert "http://localhost/sso/oidc/acme/callback" in section(html, "idp")

    response = post(admin, "/oidc", {**fields, "client_secret": "", "client_id": "new"})
    assert response.status_code == 302
    again = connection_of(app, acme)
    assert again.oidc_client_id == "new" and again.oidc_client_secret == sealed


def test_oidc_unreachable_issuer_is_refused_inline(private_urls, app, acme):
    admin = signed_in(app, "ann@example.com")
    before = table_rows(app, *SSO_TABLES)
    response = post(
        admin,
        "/oidc",
        {
            "issuer": "http://127.0.0.1:9",
            "client_id": "portcullis",
            "client_secret": "s",
            "scopes": "openid",
        },
    )
    assert response.status_code == 400
    html = section(response.get_data(as_text=True), "connect")
    assert "notice-error" in html and "http://127.0.0.1:9" in html
    assert 'name="client_secret" value=""' in html
    assert table_rows(app, *SSO_TABLES) == before


def test_connected_oidc_page(app, admin, acme):
    add_connection(app, acme, "oidc", oidc_allowed_tenants=["tenant-a"])
    html = admin.get(PAGE).get_data(as_text=True)
    idp = section(html, "idp")
    assert ISSUER in idp and "portcullis-client" in idp and "tenant-a" in idp
    assert "Stored, encrypted" in idp
    assert "IdP-initiated" not in section(html, "options")


# --- options -----------------------------------------------------------------------


OPTIONS = {
    "enabled": "1",
    "require_sso": "1",
    "jit_enabled": "1",
    "default_role": "read_only",
    "group_roles": "portcullis-admins = Admin\nstaff = Read Only\n",
    "saml_idp_initiated": "1",
    "attr_email": "mail",
    "attr_groups": "memberOf",
}


def test_options_saved_shown_back_and_audited(app, admin, acme):
    add_connection(app, acme)
    response = post(admin, "/options", OPTIONS)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"{PAGE}#options")
    stored = connection_of(app, acme)
    assert stored.require_sso and stored.jit_enabled and stored.saml_idp_initiated
    assert stored.group_roles == [
        {"group": "portcullis-admins", "role": "admin"},
        {"group": "staff", "role": "read_only"},
    ]
    assert stored.attribute_map == {"email": "mail", "groups": "memberOf"}
    (event,) = events(app, "sso.options_changed")
    assert event.details["changed"]["require_sso"] is True

    html = section(admin.get(PAGE).get_data(as_text=True), "options")
    assert "Options saved." in html
    assert "portcullis-admins = Admin" in html and 'value="memberOf"' in html
    assert re.search(r'name="require_sso" value="1"\s+checked', html)

    # Unticked boxes are off.
    assert post(admin, "/options", {"default_role": "admin"}).status_code == 302
    stored = connection_of(app, acme)
    assert (
        not stored.enabled and not stored.require_sso and stored.default_role == "admin"
    )
    assert stored.group_roles == [] and stored.attribute_map == {}


@pytest.mark.parametrize(
    ("change", "message", "status"),
    [
        ({"group_roles": "admins"}, "write it as group = role", 400),
        ({"group_roles": "admins = owner"}, "must be Admin or Read Only", 400),
        ({"group_roles": "x = admin\n" * 51}, "At most 50 group mappings", 400),
        ({"group_roles": "g = admin\n" * 2000}, "too long", 400),
        ({"default_role": "owner"}, "Choose Admin or Read Only.", 400),
        ({"attr_email": "m" * 300}, "too long", 400),
    ],
    ids=["no-equals", "unknown-role", "too-many", "huge", "bad-default", "long-attr"],
)
def test_bad_options_change_nothing(app, admin, acme, change, message, status):
    add_connection(app, acme)
    before = table_rows(app, *SSO_TABLES)
    response = post(admin, "/options", {**OPTIONS, **change})
    assert response.status_code == status
    html = section(response.get_data(as_text=True), "options")
    assert message in html
    # What was typed comes back to be corrected.
    assert "memberOf" in html
    assert table_rows(app, *SSO_TABLES) == before
    assert events(app, "sso.options_changed") == []
    assert len(events(app, "request.refused")) == 1


# --- domains ------------------------------------------------------------------------


def test_domain_added_pending_with_its_txt_record(app, admin, acme):
    add_connection(app, acme)
    response = post(admin, "/domains", {"domain": " Example.COM. "})
    assert response.status_code == 302
    assert domains_of(app, acme) == [("example.com", None)]
    html = section(admin.get(PAGE).get_data(as_text=True), "domains")
    assert "Domain added." in html and "Pending" in html
    assert "_portcullis.example.com" in html
    with app.app_context():
        entry = db.session.scalar(sa.select(SsoDomain))
        value = sso_domains.record_value(entry)
    assert value in html and 'class="secondary outline small copy"' in html
    assert ">Verify<" in html
    assert len(events(app, "sso.domain_added")) == 1


@pytest.mark.parametrize(
    ("domain", "status", "message"),
    [
        ("not a domain", 400, "Enter a domain name such as example.com."),
        ("localhost", 400, "Enter a domain name"),
        ("", 400, "Enter a domain name"),
        ("example.com", 409, "example.com is already listed."),
    ],
    ids=["spaces", "single-label", "empty", "duplicate"],
)
def test_bad_domains_are_refused(app, admin, acme, domain, status, message):
    add_connection(app, acme)
    add_domain(app, acme, "example.com")
    before = table_rows(app, *SSO_TABLES)
    response = post(admin, "/domains", {"domain": domain})
    assert response.status_code == status
    assert message in section(response.get_data(as_text=True), "domains")
    assert table_rows(app, *SSO_TABLES) == before


def _domain_id(app, name: str) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        return str(
            db.session.scalar(sa.select(SsoDomain.id).where(SsoDomain.domain == name))
        )


def test_verify_by_dns_found(app, admin, acme):
    add_connection(app, acme)
    entry = add_domain(app, acme, "example.com")
    asked = stub_dns(
        app,
        {
            "_portcullis.example.com": [
                "v=spf1 -all",
                f"portcullis-domain-verification={entry.verification_token}",
            ]
        },
    )
    response = post(admin, f"/domains/{entry.id}/verify", {})
    assert response.status_code == 302
    assert asked == ["_portcullis.example.com"]
    assert domains_of(app, acme) == [("example.com", "dns")]
    html = section(admin.get(PAGE).get_data(as_text=True), "domains")
    assert "example.com is verified." in html and "Verified by DNS" in html
    assert 'aria-label="Verify' not in html
    (event,) = events(app, "sso.domain_verified")
    assert event.outcome == "success" and event.details == {"by": "dns"}


@pytest.mark.parametrize(
    ("answer", "message", "reason"),
    [
        ({}, "No TXT record _portcullis.example.com", "dns_record_missing"),
        (
            {"_portcullis.example.com": ["portcullis-domain-verification=wrong"]},
            "No TXT record",
            "dns_record_missing",
        ),
        ("fail", "The DNS lookup failed.", "dns_unavailable"),
    ],
    ids=["no-record", "wrong-value", "dns-down"],
)
def test_verify_by_dns_refused(app, admin, acme, answer, message, reason):
    add_connection(app, acme)
    entry = add_domain(app, acme, "example.com")

    def failing(name: str) -> list[str]:
        raise sso_domains.DnsUnavailable("timeout")

    stub_dns(app, failing if answer == "fail" else answer)
    before = table_rows(app, *SSO_TABLES)
    response = post(admin, f"/domains/{entry.id}/verify", {})
    assert response.status_code == 400
    assert message in section(response.get_data(as_text=True), "domains")
    assert table_rows(app, *SSO_TABLES) == before
    audited = events(app, "sso.domain_verified") + events(
        app, "request.refused", reason=reason
    )
    assert [e.reason for e in audited] == [reason]


def test_domain_verified_by_another_workspace_is_refused(app, admin, acme):
    add_connection(app, acme)
    entry = add_domain(app, acme, "example.com")
    other = make_workspace(app, "Bravo")
    add_connection(app, other)
    add_domain(app, other, "example.com", verified_by="operator")
    stub_dns(
        app,
        {
            "_portcullis.example.com": [
                f"portcullis-domain-verification={entry.verification_token}"
            ]
        },
    )
    response = post(admin, f"/domains/{entry.id}/verify", {})
    assert response.status_code == 409
    assert "already verified for another workspace" in section(
        response.get_data(as_text=True), "domains"
    )
    assert domains_of(app, acme) == [("example.com", None)]
    assert [e.reason for e in events(app, "sso.domain_verified")] == ["domain_taken"]


def test_remove_domain_and_unknown_ids(app, admin, acme):
    add_connection(app, acme)
    entry = add_domain(app, acme, "example.com", verified_by="operator")
    other = make_workspace(app, "Bravo")
    add_connection(app, other)
    theirs = add_domain(app, other, "bravo.example")
    for bad in ("not-a-uuid", str(theirs.id)):
        for action in ("verify", "remove"):
            response = post(admin, f"/domains/{bad}/{action}", {})
            assert response.status_code == 404, (bad, action)
    assert domains_of(app, other) == [("bravo.example", None)]
    response = post(admin, f"/domains/{entry.id}/remove", {})
    assert response.status_code == 302
    assert domains_of(app, acme) == []
    assert len(events(app, "sso.domain_removed")) == 1


# --- Test connection ----------------------------------------------------------------


def test_test_connection_opens_the_idp_through_a_page(app, admin, acme):
    add_connection(app, acme, "oidc")
    html = admin.get(PAGE).get_data(as_text=True)
    assert 'target="_blank"' in section(html, "test")
    response = post(admin, "/test", {})
    # Not a redirect: the tab's CSP form-action would stop the browser
    # following one to the IdP.
    assert response.status_code == 200
    target = response.headers["Refresh"].removeprefix("0; url=")
    assert target.startswith(f"{ISSUER}/authorize?")
    assert target.replace("&", "&amp;") in response.get_data(as_text=True)
    binding = admin.get_cookie("portcullis_sso")
    assert binding is not None
    with app.app_context():
        row = db.session.scalar(sa.select(SsoRequest))
        assert row.purpose == "test"
        assert str(row.requested_by) == str(admin_id(app))
        assert row.binding_hash == hashlib.sha256(binding.value.encode()).hexdigest()
    # Nobody was signed in: only the admin's own session exists.
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Session)) == 1


def test_test_connection_of_a_connection_that_is_off(app, admin, acme):
    add_connection(app, acme, enabled=False)
    response = post(admin, "/test", {})
    assert response.status_code == 400
    assert "The connection is off." in section(response.get_data(as_text=True), "test")
    with app.app_context():
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(SsoRequest)) == 0
        )


def admin_id(app):  # type: ignore[no-untyped-def]
    from idp.models import User

    with app.app_context():
        return db.session.scalar(
            sa.select(User.id).where(User.email == "ann@example.com")
        )


RESULT = {
    "issuer": "https://idp.example/entity",
    "subject": "00u1abcd",
    "email": "mia@example.com",
    "email_verified": True,
    "name": "Mia Member",
    "groups": ["staff", "portcullis-admins"],
    "role": "admin",
    "outcome": "Links to the existing account mia@example.com.",
    "received": {
        "email": ["mia@example.com"],
        "groups": ["staff", "portcullis-admins"],
    },
}


def answered_test(app, workspace, requested_by, binding: str, **fields: Any) -> str:  # type: ignore[no-untyped-def]
    """A *Test connection* the IdP has answered, as the ACS leaves it."""
    clock = app.extensions["idp"].clock
    with app.app_context():
        connection = db.session.scalar(
            sa.select(SsoConnection).where(SsoConnection.workspace_id == workspace.id)
        )
        row = SsoRequest(
            id=f"id-{hashlib.sha256(binding.encode()).hexdigest()[:20]}",
            workspace_id=workspace.id,
            connection_id=connection.id,
            protocol=connection.protocol,
            purpose="test",
            binding_hash=hashlib.sha256(binding.encode()).hexdigest(),
            requested_by=requested_by,
            created_at=clock(),
            expires_at=clock() + timedelta(minutes=10),
            answered_at=clock(),
            result=dict(RESULT),
        )
        for key, value in fields.items():
            setattr(row, key, value)
        db.session.add(row)
        db.session.commit()
        return row.id


def test_result_page_shown_once_to_its_admin_in_its_browser(app, admin, acme):
    add_connection(app, acme)
    request_id = answered_test(app, acme, admin_id(app), "browser-one")
    path = f"{PAGE}/test/{request_id}"

    # Another admin, even with the same cookie value, sees nothing.
    make_user(app, acme, "ada@example.com", role="admin")
    other = signed_in(app, "ada@example.com")
    other.set_cookie("portcullis_sso", "browser-one")
    assert other.get(path).status_code == 404
    # The same admin in another browser (no cookie, or another one).
    assert admin.get(path).status_code == 404
    admin.set_cookie("portcullis_sso", "browser-two")
    assert admin.get(path).status_code == 404
    assert refusals(app, "sso_test_result_unavailable") == 3

    admin.set_cookie("portcullis_sso", "browser-one")
    shown = admin.get(path)
    assert shown.status_code == 200
    html = shown.get_data(as_text=True)
    check_page_headers(shown, portal=True)
    for text in (
        "Links to the existing account mia@example.com.",
        "00u1abcd",
        "Mia Member",
        "portcullis-admins",
        "Admin",
        "vouched for",
    ):
        assert text in html
    assert "<code>groups</code>" in html
    # Read once.
    again = admin.get(path)
    assert again.status_code == 404
    assert "No result to show" in again.get_data(as_text=True)


def test_result_page_of_an_unanswered_or_other_workspace_test(app, admin, acme):
    add_connection(app, acme)
    pending = answered_test(
        app, acme, admin_id(app), "b1", answered_at=None, result=None
    )
    other = make_workspace(app, "Bravo")
    add_connection(app, other)
    theirs = answered_test(app, other, admin_id(app), "b2")
    for request_id, binding in ((pending, "b1"), (theirs, "b2"), ("x" * 500, "b1")):
        admin.set_cookie("portcullis_sso", binding)
        assert admin.get(f"{PAGE}/test/{request_id}").status_code == 404
    assert read_only_refused(app, f"{PAGE}/test/{theirs}")


def read_only_refused(app, path: str) -> bool:  # type: ignore[no-untyped-def]
    reader = signed_in(app, "rob@example.com")
    return reader.get(path).status_code == 403


# --- removing -------------------------------------------------------------------------


def test_remove_asks_first_then_removes_everything(app, admin, acme):
    connection_id = add_connection(app, acme)
    add_domain(app, acme, "example.com", verified_by="operator")
    mia = make_user(app, acme, "mia@example.com", password=None)
    with app.app_context():
        db.session.add(
            FederatedIdentity(
                workspace_id=acme.id,
                connection_id=connection_id,
                user_id=mia.id,
                subject="00u-mia",
            )
        )
        db.session.commit()
    confirm = admin.get(PAGE + "/remove")
    assert confirm.status_code == 200
    html = confirm.get_data(as_text=True)
    assert "1 member keeps" in html and "1 of them has no password" in html
    assert connection_of(app, acme) is not None

    response = post(admin, "/remove", {})
    assert response.status_code == 302
    assert connection_of(app, acme) is None
    assert domains_of(app, acme) == []
    with app.app_context():
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(FederatedIdentity))
            == 0
        )
    assert len(events(app, "sso.connection_removed")) == 1
    html = admin.get(PAGE).get_data(as_text=True)
    assert "The connection is removed." in html
    # Nothing left to remove.
    assert admin.get(PAGE + "/remove").status_code == 302
    assert post(admin, "/remove", {}).status_code == 404


def test_removing_ends_sessions_begun_through_it(app, admin, acme):
    connection_id = add_connection(app, acme)
    mia = make_user(app, acme, "mia@example.com")
    member = signed_in(app, "mia@example.com")
    with app.app_context():
        db.session.execute(
            sa.update(Session)
            .where(Session.user_id == mia.id)
            .values(sso_connection_id=connection_id)
        )
        db.session.commit()
    assert member.get("/portal/profile").status_code == 200
    assert post(admin, "/remove", {}).status_code == 302
    response = member.get("/portal/profile")
    assert response.status_code == 302
    assert "reason=sso_removed" in response.headers["Location"]
    page = member.get(response.headers["Location"]).get_data(as_text=True)
    assert "removed your workspace&#39;s single sign-on" in page
    # The admin's password session was not begun through it.
    assert admin.get(PAGE).status_code == 200
    assert session_cookie(admin)


def test_a_password_is_not_needed_to_read_the_tab_after_login(app, acme):
    client = app.test_client()
    assert login(client, "ann@example.com").status_code == 302
    assert client.get(PAGE).status_code == 200


def test_every_sso_tab_page_has_no_inline_code(app, admin, acme):
    add_connection(app, acme)
    add_domain(app, acme, "example.com")
    for path in (PAGE, PAGE + "/remove", PAGE + "/test/none"):
        html = admin.get(path).get_data(as_text=True)
        assert inline_code(html) == [], path


def test_validity_dates_shown(app, admin, acme):
    moment = datetime.now(UTC)
    add_connection(
        app,
        acme,
        saml_certificates=[
            certificate_pem(
                "soon.idp",
                not_before=moment - timedelta(days=300),
                not_after=moment + timedelta(days=10),
            )
        ],
    )
    idp = section(admin.get(PAGE).get_data(as_text=True), "idp")
    assert "expires soon" in idp
    assert (moment + timedelta(days=10)).strftime("%d %b %Y") in idp
    set_connection(app, acme, saml_certificates=["garbage"])
    assert "(unreadable)" in section(admin.get(PAGE).get_data(as_text=True), "idp")


# --- Test connection, through the IdP and back -------------------------------------


@pytest.fixture(scope="module")
def test_idp(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests import saml_idp

    return saml_idp.TestIdp(tmp_path_factory.mktemp("portal-idp"))


def test_test_connection_round_trip_signs_nobody_in(app, admin, acme, clock, test_idp):
    """The admin's new tab goes to the IdP, comes back to the ACS with a
    signed answer, and lands on the result page: read once, no session."""
    from tests.saml_idp import encode

    add_connection(
        app,
        acme,
        saml_entity_id=test_idp.entity_id,
        saml_sso_url=test_idp.sso_url,
        saml_certificates=[test_idp.certificate_pem],
    )
    add_domain(app, acme, "example.com", verified_by="operator")
    sent = post(admin, "/test", {})
    target = sent.headers["Refresh"].removeprefix("0; url=")
    sp_cert = app.extensions["idp_keys"].saml[0].certificate_pem
    seen = test_idp.read_request(target, sp_cert)
    assert seen.signature_valid
    acs = "http://localhost/sso/saml/acme/acs"
    answer = test_idp.response_xml(
        now=clock.now,
        audience="http://localhost/sso/saml/acme/metadata",
        recipient=acs,
        destination=acs,
        in_response_to=seen.id,
        name_id="mia@example.com",
        attributes={"groups": ["staff"], "firstName": ["Mia"]},
    )
    sessions_before = table_rows(app, Session)
    landed = admin.post(
        "/sso/saml/acme/acs",
        data={"SAMLResponse": encode(answer), "RelayState": seen.relay_state or ""},
    )
    assert landed.status_code == 302, landed.get_data(as_text=True)[:500]
    result_path = landed.headers["Location"]
    assert result_path == f"{PAGE}/test/{seen.id}"
    shown = admin.get(result_path)
    assert shown.status_code == 200, shown.get_data(as_text=True)[:500]
    html = shown.get_data(as_text=True)
    assert "mia@example.com" in html and "Refused" in html  # no account, no JIT
    assert "<code>groups</code>" in html and "staff" in html
    assert admin.get(result_path).status_code == 404
    assert table_rows(app, Session) == sessions_before
    assert len(events(app, "sso.connection_tested")) == 1


def test_time_claims_read_as_times_on_the_result_page():
    from idp.web.portal.sso_view import received_rows

    rows = dict(
        received_rows(
            {"received": {"iat": ["1796423136"], "name": ["1796423136"], "exp": ["x"]}}
        )
    )
    assert rows["iat"] == ["1796423136 (2026-12-04 22:25:36 UTC)"]
    # Only the time claims, and only numbers.
    assert rows["name"] == ["1796423136"] and rows["exp"] == ["x"]

"""Enterprise SSO in Debian's Chromium: a member of a workspace connected to
its company IdP by SAML types their email, lands on the test IdP, signs in
there, and comes back signed in, to the portal and, through nginx (and
Caddy), to a protected app."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.gateway.client import Client
from tests.gateway.conftest import Portcullis, accept
from tests.gateway.proxies import Proxy
from tests.gateway.upstream import APP_BODY
from tests.saml_idp_web import WebIdp, serve_idp

pytestmark = [pytest.mark.gateway, pytest.mark.browser]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def post_from(client: Client, page_url: str, action: str, fields: dict[str, str]):  # type: ignore[no-untyped-def]
    """POST ``fields`` with the CSRF token of the page at ``page_url``."""
    page = client.get(page_url)
    token = CSRF.search(page.body)
    assert token, f"no CSRF token on {page_url}"
    return client.post(action, {"csrf_token": token.group(1), **fields})


@pytest.fixture(scope="module")
def company(
    portcullis: Portcullis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WebIdp]]:
    """A workspace whose admin connected the test IdP by SAML (entity id,
    SSO URL and certificate typed in), with its domain approved by the
    operator and just-in-time accounts on. Its domain is named after its
    slug: pytest may build this fixture again when the proxy changes."""
    slug = portcullis.cli("workspace", "create", "SSO Company")
    domain = f"{slug}.test"
    link = portcullis.cli("admin", "create", "--workspace", slug, f"it@{domain}")
    admin = accept(portcullis, link, "Ivy Tech")
    sp_entity_id = f"{portcullis.url}/sso/saml/{slug}/metadata"
    folder: Path = tmp_path_factory.mktemp("web-idp")
    with serve_idp(folder, sp_entity_id) as idp:
        tab = f"{portcullis.url}/portal/sso"
        saved = post_from(
            admin,
            tab,
            f"{portcullis.url}/portal/sso/saml",
            {
                "source": "manual",
                "entity_id": idp.idp.entity_id,
                "sso_url": idp.idp.sso_url,
                "certificate": idp.idp.certificate_pem,
            },
        )
        assert saved.status == 200 and idp.idp.entity_id in saved.body, saved.body[
            :2000
        ]
        options = post_from(
            admin,
            tab,
            f"{portcullis.url}/portal/sso/options",
            {"enabled": "1", "jit_enabled": "1", "default_role": "read_only"},
        )
        assert options.status == 200, options.body[:2000]
        portcullis.cli("domain", "approve", "--workspace", slug, domain)
        yield domain, idp


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context()
    opened.set_default_timeout(10_000)
    try:
        yield opened
    finally:
        opened.close()


def sign_in_at_idp(page: Page, idp: WebIdp, email: str) -> None:
    expect(page).to_have_url(re.compile("^" + re.escape(f"{idp.url}/sso?")))
    page.get_by_label("Company email").fill(email)
    page.get_by_role("button", name="Sign in at the IdP").click()
    page.get_by_role("button", name="Continue to the app").click()


def test_member_signs_in_through_the_company_idp_to_the_portal(
    browser_context: BrowserContext,
    portcullis: Portcullis,
    company: tuple[str, WebIdp],
) -> None:
    domain, idp = company
    email = f"sam@{domain}"
    idp.people[email] = {
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": ["Sam"],
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": ["Sso"],
    }
    page = browser_context.new_page()
    page.goto(f"{portcullis.url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Continue").click()
    # No password field: the address's domain belongs to the company IdP.
    sign_in_at_idp(page, idp, email)

    expect(page).to_have_url(f"{portcullis.url}/portal/profile")
    expect(page.get_by_text(email).first).to_be_visible()
    expect(page.get_by_text("Sam Sso").first).to_be_visible()


def test_member_reaches_a_protected_app_through_the_proxy(
    browser_context: BrowserContext,
    portcullis: Portcullis,
    company: tuple[str, WebIdp],
    proxy: Proxy,
) -> None:
    domain, idp = company
    email = f"nina-{proxy.name}@{domain}"
    idp.people[email] = {"displayName": ["Nina Nginx"]}
    page = browser_context.new_page()
    target = proxy.url("/reports/q3?view=full")

    page.goto(target)
    expect(page).to_have_url(re.compile("^" + re.escape(f"{portcullis.url}/login?rd=")))
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Continue").click()
    sign_in_at_idp(page, idp, email)

    expect(page).to_have_url(target)
    expect(page.get_by_text(APP_BODY)).to_be_visible()
    assert proxy.app.last().one("X-Auth-Email") == email

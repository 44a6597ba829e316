"""The same gateway through Debian's Chromium: a person signs in on the way
to a protected page and lands on it; a refused person reads why, on a page
whose styles load under the app's address."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from idp.services.reasons import MESSAGES
from tests.gateway.conftest import ADMIN_PREFIX, PASSWORD, Member, Portcullis
from tests.gateway.proxies import Proxy
from tests.gateway.upstream import APP_BODY

pytestmark = [pytest.mark.gateway, pytest.mark.browser]


@pytest.fixture
def context(browser: Browser) -> Iterator[tuple[BrowserContext, list[str]]]:
    """A fresh browser profile and every console message it logs."""
    opened = browser.new_context()
    opened.set_default_timeout(10_000)
    console: list[str] = []
    opened.on("console", lambda message: console.append(message.text))
    try:
        yield opened, console
    finally:
        opened.close()
        # Shown by pytest when the test fails.
        print("\n".join(console))


def test_sign_in_on_the_way_lands_on_the_protected_page(
    context: tuple[BrowserContext, list[str]],
    proxy: Proxy,
    portcullis: Portcullis,
    reader: Member,
) -> None:
    page = context[0].new_page()
    target = proxy.url("/reports/q3?view=full")

    page.goto(target)
    expect(page).to_have_url(re.compile("^" + re.escape(f"{portcullis.url}/login?rd=")))
    page.get_by_label("Email").fill(reader.email)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(target)
    expect(page.get_by_text(APP_BODY)).to_be_visible()
    assert proxy.app.last().one("X-Auth-Email") == reader.email


def test_refused_person_reads_why_on_a_styled_page(
    context: tuple[BrowserContext, list[str]], proxy: Proxy, reader: Member
) -> None:
    browser, console = context
    token = reader.client.cookie("portcullis_session")
    assert token
    browser.add_cookies(
        [{"name": "portcullis_session", "value": token, "url": proxy.origin}]
    )
    page = browser.new_page()

    response = page.goto(proxy.url(f"{ADMIN_PREFIX}/settings"))

    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Access refused")).to_be_visible()
    expect(page.get_by_text(MESSAGES["role_not_allowed"])).to_be_visible()
    violations = [m for m in console if "content security policy" in m.lower()]
    assert violations == []
    assert proxy.app.seen == []

"""Passkeys and security keys in real Chromium, with its virtual
authenticator over the DevTools protocol standing in for the device: the
page's own script (static/webauthn.js) drives every ceremony.

A member sets up a passkey, signs out and signs in with it alone; another
adds a security key and signs in with the password and then the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser import flows
from tests.browser.conftest import Contexts, Server, Shoot

pytestmark = pytest.mark.browser


# Chromium's virtual authenticator answers an autofill (conditional) request
# at once, as if the person had picked the passkey: a page that must wait
# for a click is shown to a browser without autofill for passkeys.
NO_AUTOFILL = (
    "window.PublicKeyCredential &&"
    " (PublicKeyCredential.isConditionalMediationAvailable = async () => false);"
)


@dataclass
class Authenticator:
    cdp: Any
    id: str

    def credentials(self) -> list[dict[str, Any]]:
        answer = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})
        return answer["credentials"]  # type: ignore[no-any-return]


def virtual_authenticator(page: Page, transport: str) -> Authenticator:
    """A CTAP2 authenticator for this tab that verifies the person at once:
    "internal" is a platform passkey provider, "usb" a security key."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": transport,
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return Authenticator(cdp, added["authenticatorId"])


def script_errors(contexts: Contexts) -> list[str]:
    return [m for m in contexts.console if m.startswith(("pageerror", "error"))]


def join(server: Server, contexts: Contexts, workspace: str, email: str) -> Page:
    """A new workspace's first admin, signed in to the portal."""
    slug = server.new_workspace(workspace)
    page = contexts.new_page()
    flows.accept_invitation(page, server.setup_link(slug, email), "Kim Member")
    return page


def set_up(page: Page, section: str, name: str) -> None:
    """Privacy & security → the section's *Set up* → a name → *Set up*,
    then past the recovery codes shown for a first factor."""
    flows.open_tab(page, "Privacy & security")
    page.locator(section).get_by_role("button", name="Set up").click()
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Set up").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    page.get_by_role("button", name="I have saved them, continue").click()
    expect(page).to_have_url(re.compile(r"/portal/privacy-security$"))
    expect(page.locator(section).locator("table")).to_contain_text(name)


def test_set_up_a_passkey_then_sign_in_with_it_alone(
    server: Server, contexts: Contexts, screenshot: Shoot
) -> None:
    page = join(server, contexts, "Passkey Co", "kim@passkey.test")
    device = virtual_authenticator(page, "internal")

    flows.open_tab(page, "Privacy & security")
    screenshot(page, "privacy-passkeys-empty")
    page.locator("#passkeys").get_by_role("button", name="Set up").click()
    expect(page.get_by_role("heading", name="Set up passkey")).to_be_visible()
    screenshot(page, "passkey-setup")
    flows.open_tab(page, "Privacy & security")
    set_up(page, "#passkeys", "This laptop")
    expect(page.locator("#passkeys")).to_contain_text("Never")
    screenshot(page, "privacy-passkeys-listed")
    [passkey] = device.credentials()
    assert passkey["isResidentCredential"] and passkey["rpId"] == "localhost"

    # The same device again: the browser refuses (excludeCredentials), and
    # the page says why.
    page.locator("#passkeys").get_by_role("button", name="Set up").click()
    page.get_by_role("button", name="Set up").click()
    expect(page.locator(".webauthn-error")).to_have_text(
        "This authenticator is already registered to your account."
    )
    expect(page.get_by_role("button", name="Set up")).to_be_enabled()
    flows.open_tab(page, "Privacy & security")
    expect(page.locator("#passkeys tbody tr")).to_have_count(1)

    # Signing out shows the sign-in page, whose email field offers the
    # passkey in its autofill; the virtual device picks it at once.
    page.locator("header.topbar").get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))
    expect(page.locator("header.topbar")).to_contain_text("Passkey Co")

    # Without autofill: sign out, then in with the button; no email, no
    # password either way.
    page.context.add_init_script(NO_AUTOFILL)
    flows.log_out(page)
    email = page.get_by_label("Email")
    expect(email).to_have_attribute("autocomplete", "username webauthn")
    screenshot(page, "sign-in-with-passkey")
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))
    expect(page.locator("header.topbar")).to_contain_text("Passkey Co")
    flows.open_tab(page, "Privacy & security")
    expect(page.locator("#passkeys")).not_to_contain_text("Never")
    assert script_errors(contexts) == []


def test_add_a_security_key_then_sign_in_with_password_and_key(
    server: Server, contexts: Contexts, screenshot: Shoot
) -> None:
    email = "lee@keys.test"
    page = join(server, contexts, "Key Co", email)
    virtual_authenticator(page, "usb")

    flows.open_tab(page, "Privacy & security")
    page.locator("#security-keys").get_by_role("button", name="Set up").click()
    expect(page.get_by_role("heading", name="Add security key")).to_be_visible()
    flows.open_tab(page, "Privacy & security")
    set_up(page, "#security-keys", "Blue key")

    flows.log_out(page)
    flows.enter_email(page, email)
    page.get_by_label("Password").fill(flows.PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Verify it's you")).to_be_visible()
    screenshot(page, "mfa-step-security-key")
    page.get_by_role("button", name="Use security key").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))
    expect(page.locator("header.topbar")).to_contain_text("Key Co")
    assert script_errors(contexts) == []

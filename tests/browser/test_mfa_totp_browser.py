"""The authenticator app in a real browser: set up from the portal by
reading the key off the page (as a person types it into their app), sign
in with the password and a code, then with a recovery code; and forced MFA
taking a member without a factor through set-up at sign-in."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from playwright.sync_api import Page, expect

from tests.browser import flows
from tests.browser.conftest import Contexts, Server, Shoot

pytestmark = pytest.mark.browser

ADMIN = "alan@authenticator.test"
FORCED = "edsger@forced-mfa.test"
CODE_SHAPE = re.compile(r"[0-9a-z]{6}-[0-9a-z]{6}")


def read_secret(page: Page) -> str:
    """The key shown for typing in by hand, as an app would store it."""
    page.get_by_text("Can't scan it?").click()
    key = page.locator("code.totp-secret")
    expect(key).to_be_visible()
    return key.inner_text().replace(" ", "")


def code(secret: str, *, ahead: int = 0) -> str:
    """The app's code now, or ``ahead`` steps later: each code works once,
    so a second sign-in within the same 30 s uses the next one (one step of
    drift is allowed)."""
    return pyotp.TOTP(secret).at(time.time() + 30 * ahead)


def confirm_set_up(page: Page, secret: str) -> list[str]:
    """Type the code, confirm; returns the recovery codes shown once."""
    page.get_by_label("Code from your authenticator app").fill(code(secret))
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = page.locator("ol.recovery-codes li code").all_inner_texts()
    assert len(codes) == 10 and all(CODE_SHAPE.fullmatch(c) for c in codes), codes
    return codes


def password_step(page: Page, email: str) -> None:
    page.goto("/login")
    flows.enter_email(page, email)
    page.get_by_label("Password").fill(flows.PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_set_up_then_sign_in_with_a_code_and_a_recovery_code(
    server: Server, contexts: Contexts, screenshot: Shoot
) -> None:
    slug = server.new_workspace("Authenticator")
    page = contexts.new_page()
    flows.accept_invitation(page, server.setup_link(slug, ADMIN), "Alan Turing")

    flows.open_tab(page, "Privacy & security")
    card = page.locator("#authenticator")
    expect(card).to_contain_text("Set up Multi-factor authentication (MFA)")
    card.get_by_role("button", name="Set up").click()
    expect(
        page.get_by_role("heading", name="Set up Multi-factor authentication (MFA)")
    ).to_be_visible()
    expect(page.locator("figure.qr svg")).to_be_visible()
    secret = read_secret(page)
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    screenshot(page, "mfa-totp-set-up")

    codes = confirm_set_up(page, secret)
    screenshot(page, "mfa-recovery-codes")
    page.get_by_role("button", name="I have saved them, continue").click()
    expect(page).to_have_url(re.compile(r"/portal/privacy-security$"))
    expect(card).to_contain_text("An authenticator app is set up")
    expect(card.get_by_role("button", name="Remove")).to_be_visible()
    expect(page.locator("#recovery-codes")).to_contain_text("10 unused codes left")
    screenshot(page, "tab-privacy-security-mfa-on")

    # Password, then a code from the app.
    flows.log_out(page)
    password_step(page, ADMIN)
    expect(page).to_have_url(re.compile(r"/login/mfa$"))
    expect(page.get_by_role("heading", name="Verify it's you")).to_be_visible()
    screenshot(page, "sign-in-mfa-step")
    page.get_by_label("Code from your authenticator app").fill(code(secret, ahead=1))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))

    # Password, then a recovery code; the member is told by email.
    flows.log_out(page)
    password_step(page, ADMIN)
    expect(page).to_have_url(re.compile(r"/login/mfa$"))
    page.get_by_text("Use a recovery code").click()
    page.get_by_label("Recovery code").fill(codes[0].upper())
    page.get_by_role("button", name="Use recovery code").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))
    mail = server.inbox.wait_for(ADMIN, subject="recovery code was used")
    assert "Authenticator" in mail["Subject"]
    flows.open_tab(page, "Privacy & security")
    expect(page.locator("#recovery-codes")).to_contain_text("9 unused codes left")

    # The same recovery code does not work twice.
    flows.log_out(page)
    password_step(page, ADMIN)
    page.get_by_text("Use a recovery code").click()
    page.get_by_label("Recovery code").fill(codes[0])
    page.get_by_role("button", name="Use recovery code").click()
    expect(page.get_by_role("alert").first).to_contain_text("already used")
    expect(page).to_have_url(re.compile(r"/login/mfa$"))


def test_forced_mfa_sets_up_an_authenticator_app_at_sign_in(
    server: Server, contexts: Contexts, screenshot: Shoot
) -> None:
    slug = server.new_workspace("Forced MFA")
    page = contexts.new_page()
    flows.accept_invitation(page, server.setup_link(slug, FORCED), "Edsger Dijkstra")
    server.cli("workspace", "security", slug, "--mfa", "force")

    # The session without MFA ends; signing in again leads to set-up.
    page.goto("/portal/profile")
    flows.expect_sign_in_page(page)
    password_step(page, FORCED)
    expect(page).to_have_url(re.compile(r"/login/mfa/setup$"))
    page.get_by_role("button", name="Authenticator app").click()
    expect(page).to_have_url(re.compile(r"/login/mfa/setup/totp$"))
    expect(page.get_by_text(f"Signing in as {FORCED}")).to_be_visible()
    secret = read_secret(page)
    screenshot(page, "sign-in-set-up-totp")

    confirm_set_up(page, secret)
    page.get_by_role("button", name="I have saved them, continue").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))

    # The only factor stays while the workspace forces MFA.
    flows.open_tab(page, "Privacy & security")
    card = page.locator("#authenticator")
    expect(card).to_contain_text("An authenticator app is set up")
    card.get_by_role("button", name="Remove").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_text("cannot be removed")).to_be_visible()

"""The Security tab as an admin uses it: the check-up and its warnings, the
warning before MFA is forced, an idle timeout set through the form, and an
IP range plus the admin's own address added before the restriction is
switched on."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser import flows
from tests.browser.conftest import Contexts, Server, Shoot

pytestmark = pytest.mark.browser

ADMIN = "sam@security-tab.test"


def test_admin_sets_an_idle_timeout_and_an_ip_range(
    server: Server, contexts: Contexts, screenshot: Shoot
) -> None:
    slug = server.new_workspace("Security Tab")
    admin = contexts.new_page()
    flows.accept_invitation(admin, server.setup_link(slug, ADMIN), "Sam Admin")

    flows.open_tab(admin, "Security")
    expect(admin.get_by_role("heading", name="Security check-up")).to_be_visible()
    warnings = admin.locator(".vulns li.vuln")
    expect(warnings.filter(has_text="MFA is not forced")).to_have_count(1)
    admin.get_by_text("Show more", exact=False).click()
    expect(warnings.filter(has_text="No idle session timeout")).to_be_visible()
    screenshot(admin, "tab-security")

    # Forcing MFA warns first; Cancel leaves it as it was.
    mfa = admin.locator("#force-mfa")
    mfa.get_by_role("radio", name="Force", exact=True).check()
    mfa.get_by_role("button", name="Save").click()
    expect(admin.get_by_text("1 member has no MFA")).to_be_visible()
    expect(admin.get_by_text("You too:")).to_be_visible()
    screenshot(admin, "security-force-mfa-warning")
    admin.get_by_role("button", name="Cancel").click()
    expect(admin).to_have_url(re.compile(r"/portal/security#force-mfa$"))
    expect(mfa.get_by_role("radio", name="Don't force")).to_be_checked()

    # Manage on the warning leads to its setting.
    admin.get_by_text("Show more", exact=False).click()
    warnings.filter(has_text="No idle session timeout").get_by_role(
        "link", name="Manage"
    ).click()
    expect(admin).to_have_url(re.compile(r"#idle-timeout$"))
    idle = admin.locator("#idle-timeout")
    idle.get_by_role("switch", name="Enable idle session timeout").check()
    idle.get_by_label("Timeout", exact=True).fill("2")
    idle.get_by_label("Unit").select_option("hours")
    idle.get_by_role("button", name="Save").click()
    expect(admin).to_have_url(re.compile(r"saved=idle-timeout#idle-timeout$"))
    expect(idle.get_by_role("status")).to_have_text("Saved.")
    expect(idle.get_by_label("Timeout", exact=True)).to_have_value("2")
    expect(idle.get_by_label("Unit")).to_have_value("hours")
    expect(warnings.filter(has_text="No idle session timeout")).to_have_count(0)

    ip = admin.locator("#ip-restrictions")
    entries = ip.locator("table.ip-entries tbody")
    ip.get_by_label("Address or range").fill("198.51.100.7/24")
    ip.get_by_label("Description").fill("Branch office")
    ip.get_by_role("button", name="Add", exact=True).click()
    expect(entries).to_contain_text("198.51.100.0/24")
    expect(entries).to_contain_text("Branch office")
    expect(ip.get_by_text("not on the list")).to_be_visible()

    # Switching on before the admin's own address is listed is refused.
    ip.get_by_role("switch", name="Enable IP restrictions").check()
    ip.get_by_role("button", name="Save").click()
    expect(ip.get_by_role("alert")).to_contain_text("would lock you out")

    ip.get_by_role("button", name="Add my IP").click()
    expect(entries).to_contain_text("127.0.0.1/32")
    ip.get_by_role("switch", name="Enable IP restrictions").check()
    ip.get_by_role("button", name="Save").click()
    expect(ip.get_by_role("status")).to_have_text("Saved.")
    expect(ip.get_by_role("switch", name="Enable IP restrictions")).to_be_checked()
    expect(ip.get_by_text("on the list", exact=True)).to_be_visible()
    quadrant = admin.locator("[data-quadrant=restrictions]")
    expect(quadrant.locator(".q-count")).to_have_text("2")
    screenshot(admin, "tab-security-configured")

"""Day one of a workspace, end to end through a real server, real mail and
a real browser: the first admin sets up, invites a member who joins and
signs in, the member ends their other sessions, the admin disables them."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser import flows
from tests.browser.conftest import Contexts, Server, Shoot, link_in

pytestmark = pytest.mark.browser

ADMIN = "ada@dayone.test"
MEMBER = "grace@dayone.test"
# A phone's browser for the third sign-in, so the session list tells them apart.
PHONE_AGENT = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)


def test_day_one(server: Server, contexts: Contexts, screenshot: Shoot) -> None:
    slug = server.new_workspace("Day One")
    setup_link = server.setup_link(slug, ADMIN)

    # The first admin follows the set-up link and lands in the portal.
    admin = contexts.new_page()
    admin.goto(setup_link)
    expect(admin.get_by_text(f"You are joining as {ADMIN} (Admin)")).to_be_visible()
    screenshot(admin, "setup-admin")
    flows.accept_invitation(admin, setup_link, "Ada Lovelace")
    expect(admin.locator("header.topbar")).to_contain_text("Day One")

    # The admin invites a member from the Users tab.
    flows.invite(admin, MEMBER, "Read Only", "Grace Hopper")
    expect(flows.user_row(admin, MEMBER)).to_contain_text("Pending approval")
    mail = server.inbox.wait_for(MEMBER, subject="invited")
    assert "Day One" in mail["Subject"]
    link = link_in(mail, server.url)
    assert re.fullmatch(re.escape(server.url) + r"/invite/[\w-]+", link), link

    # The member accepts in a browser of their own, then signs in.
    member = contexts.new_page()
    member.goto(link)
    expect(member).to_have_url(re.compile(r"/invite$"))
    expect(member.get_by_label("Full name")).to_have_value("Grace Hopper")
    screenshot(member, "invite-acceptance")
    flows.accept_invitation(member, link, "Grace Hopper")
    flows.log_out(member)
    screenshot(member, "signed-out")
    member.goto("/login")
    flows.enter_email(member, MEMBER)
    screenshot(member, "sign-in-password")
    member.get_by_label("Password").fill("not the password at all")
    member.get_by_role("button", name="Sign in").click()
    expect(member.get_by_role("alert")).to_be_visible()
    screenshot(member, "sign-in-failed")
    flows.sign_in(member, MEMBER)

    admin.reload()
    expect(flows.user_row(admin, MEMBER)).to_contain_text("Joined")

    # The member sees their session; a second device signs in too.
    flows.open_tab(member, "Privacy & security")
    sessions = member.locator("table tbody tr")
    expect(sessions).to_have_count(1)
    expect(sessions.first).to_contain_text("This session")

    phone = contexts.new_page(user_agent=PHONE_AGENT)
    flows.sign_in(phone, MEMBER)
    member.reload()
    expect(sessions).to_have_count(2)
    expect(member.get_by_role("cell", name="Chrome on Android")).to_be_visible()
    screenshot(member, "tab-privacy-security")

    # Log out all other sessions: a warning first, then Log out all.
    member.get_by_role("button", name="Log out all other sessions").click()
    expect(
        member.get_by_role("heading", name="Log out all other sessions")
    ).to_be_visible()
    expect(member.locator("article.warning")).to_contain_text("1 other session")
    screenshot(member, "warning-log-out-others")
    member.get_by_role("button", name="Log out all").click()
    expect(member.get_by_text("All other sessions are logged out.")).to_be_visible()
    expect(sessions).to_have_count(1)

    phone.goto("/portal/privacy-security")
    flows.expect_sign_in_page(phone)
    expect(phone.get_by_text("Your session has ended.")).to_be_visible()
    screenshot(phone, "sign-in-session-ended")

    # The member's own browser carries on after Log out all.
    member.reload()
    expect(member).to_have_url(re.compile(r"/portal/privacy-security$"))

    # The admin disables the member from the three-dots menu.
    flows.open_tab(admin, "Users")
    menu = flows.open_user_menu(admin, MEMBER)
    expect(menu.get_by_role("button", name="Disable User")).to_be_visible()
    expect(menu.get_by_role("link", name="Delete User")).to_be_visible()
    screenshot(admin, "users-menu-open")
    menu.get_by_role("button", name="Disable User").click()
    expect(
        admin.get_by_text(f"{MEMBER} is disabled and signed out everywhere.")
    ).to_be_visible()
    expect(flows.user_row(admin, MEMBER)).to_contain_text("Disabled")

    member.reload()
    flows.expect_sign_in_page(member)

    # Signing in again, with the right password, says why it cannot.
    member.goto("/login")
    flows.enter_email(member, MEMBER)
    member.get_by_label("Password").fill(flows.PASSWORD)
    member.get_by_role("button", name="Sign in").click()
    expect(member.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(member.get_by_text("This account is disabled.")).to_be_visible()
    screenshot(member, "error-account-disabled")

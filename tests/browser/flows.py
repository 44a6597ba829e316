"""What a person does in the browser, one function per step, so the tests
read as the story they tell."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import PASSWORD


def accept_invitation(
    page: Page, link: str, full_name: str, password: str = PASSWORD
) -> None:
    """Open an invitation or set-up link and join; ends in the portal."""
    page.goto(link)
    expect(page).to_have_url(re.compile(r"/invite$"))
    expect(page.get_by_role("heading", name="Set up your account")).to_be_visible()
    page.get_by_label("Full name").fill(full_name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Repeat it").fill(password)
    page.get_by_role("button", name="Join").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))


def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    """Email, then password; ends in the portal."""
    page.goto("/login")
    enter_email(page, email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/portal/profile$"))


def enter_email(page: Page, email: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text(f"Signing in as {email}")).to_be_visible()


def log_out(page: Page) -> None:
    page.locator("header.topbar").get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_text("You are signed out.")).to_be_visible()


def open_tab(page: Page, label: str) -> None:
    tabs = page.get_by_role("navigation", name="User management")
    tabs.get_by_role("link", name=label, exact=True).click()
    expect(tabs.get_by_role("link", name=label, exact=True)).to_have_attribute(
        "aria-current", "page"
    )


def invite(page: Page, email: str, role: str, full_name: str) -> None:
    """Users tab: *Invite* → email, role, full name → *Invite*."""
    open_tab(page, "Users")
    page.get_by_role("button", name="Invite", exact=True).click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Role").select_option(label=role)
    page.get_by_label("Full name").fill(full_name)
    page.get_by_role("button", name="Invite", exact=True).click()
    expect(page.get_by_text(f"Invitation sent to {email}.")).to_be_visible()


def user_row(page: Page, email: str) -> Locator:
    return page.locator(
        "table.users tbody tr", has=page.get_by_role("cell", name=email, exact=True)
    )


def open_user_menu(page: Page, email: str) -> Locator:
    """Open the three-dots menu of ``email``'s row; returns the menu list."""
    row = user_row(page, email)
    row.get_by_label(f"Actions for {email}").click()
    menu = row.locator("details.menu > ul")
    expect(menu).to_be_visible()
    return menu


def expect_sign_in_page(page: Page) -> None:
    expect(page).to_have_url(re.compile(r"/login(\?|$)"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("Email")).to_be_visible()

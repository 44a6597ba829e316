"""The portal as an admin and as a Read Only member see it: every tab, the
Users search, the audit trail and its CSV, the pages that refuse or warn."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import flows
from tests.browser.conftest import Contexts, Server, Shoot, link_in

pytestmark = pytest.mark.browser

ADMIN = "olive@northwind.test"
MEMBER = "rosa@northwind.test"
PENDING = "pat@northwind.test"


@dataclass(frozen=True)
class Team:
    """Signed-in browser states of the workspace's admin and Read Only member."""

    admin: Any
    member: Any


@pytest.fixture(scope="module")
def team(server: Server, browser: Browser) -> Iterator[Team]:
    """A workspace with an admin, a Read Only member who joined, and an
    invitation still pending; both people signed in through the form."""
    opened = Contexts(browser, server.url)
    try:
        slug = server.new_workspace("Northwind")
        admin = opened.new_page()
        flows.accept_invitation(admin, server.setup_link(slug, ADMIN), "Olive Admin")
        flows.invite(admin, MEMBER, "Read Only", "Rosa Member")
        flows.invite(admin, PENDING, "Admin", "Pat Pending")

        member = opened.new_page()
        invitation = server.inbox.wait_for(MEMBER, subject="invited")
        flows.accept_invitation(member, link_in(invitation, server.url), "Rosa Member")
        for page, email in ((admin, ADMIN), (member, MEMBER)):
            flows.log_out(page)
            flows.sign_in(page, email)
        yield Team(
            admin=admin.context.storage_state(), member=member.context.storage_state()
        )
    finally:
        opened.close()
    assert opened.csp_violations() == [], "\n".join(opened.csp_violations())


@pytest.fixture
def admin(team: Team, contexts: Contexts) -> Page:
    page = contexts.new_page(storage_state=team.admin)
    page.goto("/portal/profile")
    return page


@pytest.fixture
def member(team: Team, contexts: Contexts) -> Page:
    page = contexts.new_page(storage_state=team.member)
    page.goto("/portal/profile")
    return page


def test_every_tab_as_admin(admin: Page, screenshot: Shoot) -> None:
    expect(admin.get_by_role("heading", name="Profile")).to_be_visible()
    screenshot(admin, "tab-profile")
    admin.get_by_role("button", name="Edit").click()
    expect(admin.get_by_label("Job title")).to_be_editable()
    admin.get_by_label("Job title").fill("Head of IT")
    screenshot(admin, "tab-profile-edit")
    admin.get_by_role("button", name="Save").click()
    expect(admin.get_by_text("Profile saved.")).to_be_visible()
    expect(admin.locator("dl.details")).to_contain_text("Head of IT")

    flows.open_tab(admin, "Privacy & security")
    expect(admin.get_by_role("heading", name="Active sessions")).to_be_visible()
    screenshot(admin, "tab-privacy-security-admin")
    admin.get_by_role("button", name="Change password").click()
    screenshot(admin, "privacy-change-password")

    flows.open_tab(admin, "Users")
    expect(admin.locator("table.users tbody tr")).to_have_count(3)
    expect(flows.user_row(admin, PENDING)).to_contain_text("Pending approval")
    expect(flows.user_row(admin, MEMBER)).to_contain_text("Joined")
    screenshot(admin, "tab-users")
    admin.get_by_role("button", name="Invite", exact=True).click()
    expect(admin.get_by_role("link", name="Users", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    screenshot(admin, "users-invite")

    flows.open_tab(admin, "Users")
    menu = flows.open_user_menu(admin, PENDING)
    expect(menu.get_by_role("button", name="Resend invitation email")).to_be_visible()
    expect(menu.get_by_role("button", name="Disable User")).to_have_count(0)
    screenshot(admin, "users-menu-pending")
    # A click anywhere else closes it, as a menu should.
    admin.mouse.click(640, 760)
    expect(menu).to_be_hidden()
    menu = flows.open_user_menu(admin, PENDING)
    menu.get_by_role("link", name="Delete User").click()
    expect(admin.get_by_role("heading", name="Delete User")).to_be_visible()
    screenshot(admin, "warning-delete-user")
    admin.get_by_role("button", name="Cancel").click()
    expect(admin).to_have_url(re.compile(r"/portal/users$"))

    flows.open_tab(admin, "Audit logs")
    expect(admin.locator("table.audit tbody tr").first).to_be_visible()
    screenshot(admin, "tab-audit-logs")


def test_resend_invitation_from_the_menu(admin: Page, server: Server) -> None:
    before = len(server.inbox.messages)
    flows.open_tab(admin, "Users")
    menu = flows.open_user_menu(admin, PENDING)
    menu.get_by_role("button", name="Resend invitation email").click()
    expect(admin.get_by_text(f"A new invitation was sent to {PENDING}")).to_be_visible()
    mail = server.inbox.wait_for(PENDING, subject="invited")
    assert len(server.inbox.messages) == before + 1
    assert link_in(mail, server.url).startswith(f"{server.url}/invite/")


def test_read_only_member_sees_no_admin_actions(
    member: Page, screenshot: Shoot
) -> None:
    expect(member.locator("dl.details")).to_contain_text("Read Only")
    flows.open_tab(member, "Users")
    expect(member.locator("table.users tbody tr")).to_have_count(3)
    expect(member.get_by_role("button", name="Invite", exact=True)).to_have_count(0)
    expect(member.locator("details.menu")).to_have_count(0)
    expect(member.get_by_role("columnheader", name="Actions")).to_have_count(0)
    screenshot(member, "tab-users-read-only")

    member.goto("/portal/users/invite")
    expect(member.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(member.get_by_text("Only admins of this workspace")).to_be_visible()
    screenshot(member, "error-not-allowed")
    member.get_by_role("link", name="Back to the portal").click()
    expect(member).to_have_url(re.compile(r"/portal/profile$"))

    # Audit logs are readable by every member.
    flows.open_tab(member, "Audit logs")
    expect(member.get_by_role("button", name="Download")).to_be_visible()


def test_users_search_filters(admin: Page) -> None:
    flows.open_tab(admin, "Users")
    rows = admin.locator("table.users tbody tr")
    search = admin.get_by_role("searchbox", name="Search users")

    search.fill("rosa")
    search.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(MEMBER)

    search.fill("Pending")
    admin.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(PENDING)

    search.fill("northwind.test")
    search.press("Enter")
    expect(rows).to_have_count(3)

    search.fill("nobody-here")
    search.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("No users match")


def test_audit_logs_show_sign_ins_and_download(admin: Page, screenshot: Shoot) -> None:
    flows.open_tab(admin, "Audit logs")
    events = admin.locator("table.audit tbody tr")
    sign_ins = events.filter(has_text="signin.success")
    expect(sign_ins.filter(has_text=MEMBER)).not_to_have_count(0)
    expect(sign_ins.filter(has_text=ADMIN)).not_to_have_count(0)

    admin.get_by_text("Filter", exact=True).click()
    admin.get_by_label("Text").fill(MEMBER)
    admin.get_by_label("Action").select_option("signin.success")
    admin.get_by_role("button", name="Apply").click()
    expect(admin).to_have_url(re.compile(r"action=signin.success"))
    expect(events).not_to_have_count(0)
    for text in events.all_inner_texts():
        assert "signin.success" in text and MEMBER in text, text
    screenshot(admin, "tab-audit-logs-filtered")

    with admin.expect_download() as waiting:
        admin.get_by_role("button", name="Download").click()
    download = waiting.value
    assert download.suggested_filename == "audit-northwind.csv"
    with open(download.path(), encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    assert rows, "the CSV holds no events"
    assert {row["action"] for row in rows} == {"signin.success"}
    assert all(MEMBER in (row["actor"] + row["target"]) for row in rows)


def test_pages_that_refuse(contexts: Contexts, member: Page, screenshot: Shoot) -> None:
    member.goto("/portal/no-such-tab")
    expect(member.get_by_role("heading", name="Not Found")).to_be_visible()
    screenshot(member, "error-not-found")

    stranger = contexts.new_page()
    stranger.goto("/invite/not-a-real-invitation-token")
    expect(stranger.get_by_role("heading", name="Invalid link")).to_be_visible()
    screenshot(stranger, "error-invalid-invitation")

    stranger.goto("/portal/users")
    flows.expect_sign_in_page(stranger)
    screenshot(stranger, "sign-in")
    stranger.get_by_role("link", name="Forgot password?").click()
    expect(stranger.get_by_role("heading", name="Forgot password?")).to_be_visible()
    screenshot(stranger, "sign-in-forgot")


def test_console_check_sees_csp_violations(contexts: Contexts, admin: Page) -> None:
    """The CSP check every test ends with would catch a violation."""
    admin.evaluate("""() => {
        const note = document.createElement('p');
        note.setAttribute('style', 'color: red');
        document.body.append(note);
    }""")
    deadline = time.monotonic() + 5
    while not contexts.csp_violations() and time.monotonic() < deadline:
        admin.wait_for_timeout(50)
    assert contexts.csp_violations(), contexts.console
    contexts.console.clear()

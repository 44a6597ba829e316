"""The Security tab: every setting saved and shown back, every bad input
refused with its message and nothing stored, the IP lock-out guard, Add my
IP through proxies, the audit trail of old and new values, the check-up's
counts at their time boundaries, and who may do any of it."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import policies
from idp.db import db
from idp.models import (
    AuditEvent,
    DomainAllowEntry,
    IpAllowEntry,
    SecurityPolicy,
    Session,
    User,
)
from idp.services import checkup, security_policy
from idp.services.context import Context
from idp.services.policy import user_has_mfa
from idp.services.sessions import session_facts
from policies.mfa import mfa_enforcement
from policies.time_limits import forced_relogin, idle_timeout
from tests.conftest import (
    give_authenticator,
    login,
    make_user,
    make_workspace,
    post_form,
    signed_in,
    table_rows,
)
from tests.integration.test_authorization import check_page_headers, inline_code

PAGE = "/portal/security"
POLICY_TABLES = (SecurityPolicy, IpAllowEntry, DomainAllowEntry)


# --- helpers ----------------------------------------------------------------


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    make_user(app, ws, "ann@example.com", role="admin", name="Ann Admin")
    make_user(app, ws, "rob@example.com", name="Rob Reader")
    return ws


def admin_client(app, address: str | None = None):  # type: ignore[no-untyped-def]
    client = app.test_client()
    if address is not None:
        client.environ_base["REMOTE_ADDR"] = address
    assert login(client, "ann@example.com").status_code == 302
    return client


def post(client, path: str, data: dict[str, str], **kw: Any):  # type: ignore[no-untyped-def]
    return post_form(client, PAGE + path, data, csrf_page=PAGE, **kw)


def section(html: str, section_id: str) -> str:
    start = html.index(f'id="{section_id}"')
    return html[start : html.index("</section>", start)]


def switched_on(html: str) -> bool:
    return re.search(r'name="enabled" value="1"\s+checked', html) is not None


def events(app, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        ).all()
        for row in rows:
            db.session.expunge(row)
        return list(rows)


def stored_policy(app, ws) -> SecurityPolicy:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(SecurityPolicy, ws.id)
        db.session.expunge(row)
        return row


def networks(app, ws) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return sorted(
            db.session.scalars(
                sa.select(IpAllowEntry.network).where(
                    IpAllowEntry.workspace_id == ws.id
                )
            )
        )


def domains(app, ws) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.execute(
            sa.select(DomainAllowEntry.domain, DomainAllowEntry.include_subdomains)
            .where(DomainAllowEntry.workspace_id == ws.id)
            .order_by(DomainAllowEntry.domain)
        )
        return [tuple(r) for r in rows]


def as_operator(app, action, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
    with app.test_request_context():
        from idp.models import Workspace

        ws = db.session.get(Workspace, args[0].id)
        return action(Context.operator(), ws, *args[1:], **kwargs)


def give_session_mfa(app, user_email: str) -> None:  # type: ignore[no-untyped-def]
    """Mark the member's live sessions as having done MFA, as the MFA step
    will once it exists."""
    with app.app_context():
        user_id = db.session.scalar(sa.select(User.id).where(User.email == user_email))
        db.session.execute(
            sa.update(Session)
            .where(Session.user_id == user_id)
            .values(mfa_at=Session.authenticated_at)
        )
        db.session.commit()


# --- the tab ----------------------------------------------------------------


def test_the_tab_is_listed_for_admins_and_renders_cleanly(app, acme):
    admin = admin_client(app)
    reader = signed_in(app, "rob@example.com")

    response = admin.get(PAGE)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'href="{PAGE}" aria-current="page">Security<' in html
    for label in (
        "Security check-up",
        "Force MFA",
        "Summary",
        "Configuration",
        "Don&#39;t force",
        "Force except enterprise SSO",
        "Idle session timeout",
        "Max concurrent sessions",
        "Force re-login",
        "IP restrictions",
        "Add my IP",
        "Domain restrictions",
        "Manage",
        "Show more",
    ):
        assert label in html, label
    check_page_headers(response, portal=True)
    assert inline_code(html) == []
    assert f'href="{PAGE}"' not in reader.get("/portal/profile").get_data(as_text=True)


def test_every_member_shows_none_in_the_mfa_summary(app, acme):
    html = admin_client(app).get(PAGE).get_data(as_text=True)
    summary = section(html, "force-mfa")
    for name in ("Ann Admin", "Rob Reader"):
        row = summary[summary.index(name) :]
        row = row[: row.index("</tr>")]
        assert ">None<" in row, row


# --- every setting saved and shown back -------------------------------------


@pytest.mark.parametrize(
    ("amount", "unit", "seconds", "shown"),
    [
        ("5", "minutes", 300, ("5", "minutes")),
        ("90", "minutes", 5400, ("90", "minutes")),
        ("120", "minutes", 7200, ("2", "hours")),
        ("2", "hours", 7200, ("2", "hours")),
        ("48", "hours", 172800, ("2", "days")),
        ("30", "days", 2592000, ("30", "days")),
        (" 7 ", "days", 604800, ("7", "days")),
    ],
    ids=[
        "lower_bound",
        "minutes",
        "minutes_as_hours",
        "hours",
        "hours_as_days",
        "upper_bound",
        "spaces",
    ],
)
def test_idle_timeout_is_stored_in_seconds_and_shown_in_its_unit(
    app, acme, amount, unit, seconds, shown
):
    admin = admin_client(app)
    response = post(
        admin, "/idle-timeout", {"enabled": "1", "amount": amount, "unit": unit}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{PAGE}?saved=idle-timeout"
    assert stored_policy(app, acme).idle_timeout_seconds == seconds

    html = section(
        admin.get(response.headers["Location"]).get_data(as_text=True), "idle-timeout"
    )
    assert switched_on(html)
    assert f'name="amount" value="{shown[0]}"' in html
    assert f'<option value="{shown[1]}" selected>' in html
    assert "Saved." in html


@pytest.mark.parametrize(
    ("path", "field", "value", "column"),
    [
        ("/max-sessions", "limit", "1", "max_sessions"),
        ("/max-sessions", "limit", "100", "max_sessions"),
        ("/relogin", "days", "1", "relogin_days"),
        ("/relogin", "days", "365", "relogin_days"),
    ],
    ids=["sessions_1", "sessions_100", "relogin_1", "relogin_365"],
)
def test_number_settings_are_saved_and_shown_back(
    app, acme, path, field, value, column
):
    admin = admin_client(app)
    assert post(admin, path, {"enabled": "1", field: value}).status_code == 302
    assert getattr(stored_policy(app, acme), column) == int(value)

    anchor = "max-sessions" if column == "max_sessions" else "force-relogin"
    html = section(admin.get(PAGE).get_data(as_text=True), anchor)
    assert switched_on(html)
    assert f'name="{field}" value="{value}"' in html


@pytest.mark.parametrize(
    ("path", "form", "column"),
    [
        ("/idle-timeout", {"amount": "30", "unit": "minutes"}, "idle_timeout_seconds"),
        ("/max-sessions", {"limit": "3"}, "max_sessions"),
        ("/relogin", {"days": "7"}, "relogin_days"),
    ],
    ids=["idle", "sessions", "relogin"],
)
def test_switching_a_setting_off_stores_none_whatever_the_number(
    app, acme, path, form, column
):
    admin = admin_client(app)
    assert post(admin, path, {"enabled": "1", **form}).status_code == 302
    assert getattr(stored_policy(app, acme), column) is not None

    garbage = {key: "not a number" for key in form}
    assert post(admin, path, garbage).status_code == 302
    assert getattr(stored_policy(app, acme), column) is None
    anchor = {"idle": "idle-timeout", "sessions": "max-sessions"}.get(
        column.split("_")[0], "force-relogin"
    )
    assert not switched_on(section(admin.get(PAGE).get_data(as_text=True), anchor))


def test_forcing_mfa_warns_first_then_stores_and_shows_it(app, acme):
    admin = admin_client(app)
    give_session_mfa(app, "ann@example.com")
    before = table_rows(app, *POLICY_TABLES)

    warning = post(admin, "/mfa", {"mfa_mode": "force"})
    text = warning.get_data(as_text=True)
    assert warning.status_code == 200
    assert "2 members have no MFA" in text
    assert "set it up at their next sign-in" in text
    assert "You too" not in text  # this session did MFA
    assert table_rows(app, *POLICY_TABLES) == before

    saved = post(admin, "/mfa", {"mfa_mode": "force", "confirm": "1"})
    assert saved.status_code == 302
    assert stored_policy(app, acme).mfa_mode == "force"
    html = section(admin.get(PAGE).get_data(as_text=True), "force-mfa")
    assert 'value="force" checked' in html
    assert "2 members have no MFA and will be asked to set it up" in html

    for mode in ("force_except_sso", "off"):
        assert (
            post(admin, "/mfa", {"mfa_mode": mode, "confirm": "1"}).status_code == 302
        )
        assert stored_policy(app, acme).mfa_mode == mode
        html = section(admin.get(PAGE).get_data(as_text=True), "force-mfa")
        assert f'value="{mode}" checked' in html


def test_forcing_mfa_tells_an_admin_without_mfa_they_will_be_signed_out(app, acme):
    admin = admin_client(app)

    text = post(admin, "/mfa", {"mfa_mode": "force_except_sso"}).get_data(as_text=True)
    assert "You too" in text
    assert "unless they sign in through the workspace's enterprise SSO" in text

    assert post(admin, "/mfa", {"mfa_mode": "force", "confirm": "1"}).status_code == 302
    # The saving session did no MFA: the policy now ends it.
    response = admin.get(PAGE)
    assert response.status_code == 302
    assert "reason=mfa_required" in response.headers["Location"]


# --- bad input: 400, the message, an audit entry, nothing stored ------------


BAD_INPUT = {
    "idle_too_short": (
        "/idle-timeout",
        {"enabled": "1", "amount": "4", "unit": "minutes"},
        "at least 5 minutes",
    ),
    "idle_too_long": (
        "/idle-timeout",
        {"enabled": "1", "amount": "31", "unit": "days"},
        "at most 30 days",
    ),
    "idle_zero": (
        "/idle-timeout",
        {"enabled": "1", "amount": "0", "unit": "hours"},
        "at least 5 minutes",
    ),
    "idle_missing": (
        "/idle-timeout",
        {"enabled": "1", "amount": "", "unit": "hours"},
        "Enter the idle session timeout.",
    ),
    "idle_negative": (
        "/idle-timeout",
        {"enabled": "1", "amount": "-5", "unit": "hours"},
        "whole number",
    ),
    "idle_fraction": (
        "/idle-timeout",
        {"enabled": "1", "amount": "1.5", "unit": "hours"},
        "whole number",
    ),
    "idle_exponent": (
        "/idle-timeout",
        {"enabled": "1", "amount": "1e3", "unit": "minutes"},
        "whole number",
    ),
    "idle_arabic_digits": (
        "/idle-timeout",
        {"enabled": "1", "amount": "\u0663\u0660", "unit": "minutes"},
        "whole number",
    ),
    "idle_huge": (
        "/idle-timeout",
        {"enabled": "1", "amount": "9" * 400, "unit": "minutes"},
        "whole number",
    ),
    "idle_unit": (
        "/idle-timeout",
        {"enabled": "1", "amount": "2", "unit": "weeks"},
        "Choose minutes, hours or days",
    ),
    "sessions_zero": (
        "/max-sessions",
        {"enabled": "1", "limit": "0"},
        "between 1 and 100",
    ),
    "sessions_101": (
        "/max-sessions",
        {"enabled": "1", "limit": "101"},
        "between 1 and 100",
    ),
    "sessions_text": (
        "/max-sessions",
        {"enabled": "1", "limit": "five"},
        "whole number",
    ),
    "relogin_zero": ("/relogin", {"enabled": "1", "days": "0"}, "between 1 and 365"),
    "relogin_366": ("/relogin", {"enabled": "1", "days": "366"}, "between 1 and 365"),
    "mfa_mode": ("/mfa", {"mfa_mode": "always"}, "Choose Don&#39;t force, Force"),
    "mfa_mode_missing": ("/mfa", {}, "Choose Don&#39;t force, Force"),
    "ip_empty": ("/ip/entries", {"network": " "}, "Enter an IP address"),
    "ip_octet": ("/ip/entries", {"network": "300.1.1.1"}, "not an IP address"),
    "ip_prefix": ("/ip/entries", {"network": "10.0.0.0/33"}, "not an IP address"),
    "ip_v6_prefix": ("/ip/entries", {"network": "2001:db8::/129"}, "not an IP"),
    "ip_leading_zero": ("/ip/entries", {"network": "010.1.1.1"}, "not an IP"),
    "ip_zone": ("/ip/entries", {"network": "fe80::1%eth0"}, "not an IP address"),
    "ip_brackets": ("/ip/entries", {"network": "[2001:db8::1]"}, "not an IP"),
    "ip_two_prefixes": ("/ip/entries", {"network": "10.0.0.0/8/8"}, "not an IP"),
    "ip_host_name": ("/ip/entries", {"network": "example.com"}, "not an IP"),
    "ip_space": ("/ip/entries", {"network": "10.0.0.1 10.0.0.2"}, "not an IP"),
    "ip_markup": ("/ip/entries", {"network": "<b>1.2.3.4</b>"}, "not an IP"),
    "ip_long": ("/ip/entries", {"network": "1" * 300}, "not an IP address"),
    "ip_description_control": (
        "/ip/entries",
        {"network": "10.0.0.0/8", "description": "office\x07"},
        "control characters",
    ),
    "ip_description_bidi": (
        "/ip/entries",
        {"network": "10.0.0.0/8", "description": "office\u202e"},
        "control characters",
    ),
    "ip_description_long": (
        "/ip/entries",
        {"network": "10.0.0.0/8", "description": "d" * 201},
        "at most 200 characters",
    ),
    "domain_empty": ("/domains/entries", {"domain": ""}, "Enter a domain"),
    "domain_scheme": (
        "/domains/entries",
        {"domain": "https://example.com"},
        "without https://",
    ),
    "domain_email": (
        "/domains/entries",
        {"domain": "user@example.com"},
        "not the address",
    ),
    "domain_path": ("/domains/entries", {"domain": "example.com/x"}, "without a path"),
    "domain_wildcard": (
        "/domains/entries",
        {"domain": "*.example.com"},
        "Include subdomains",
    ),
    "domain_no_dot": ("/domains/entries", {"domain": "localhost"}, "not a valid"),
    "domain_underscore": (
        "/domains/entries",
        {"domain": "a_b.example.com"},
        "not a valid",
    ),
    "domain_space": ("/domains/entries", {"domain": "exa mple.com"}, "not a valid"),
    "domain_hyphen": (
        "/domains/entries",
        {"domain": "-bad.example.com"},
        "not a valid",
    ),
    "domain_ip": ("/domains/entries", {"domain": "192.0.2.1"}, "not a valid"),
    "domain_long": (
        "/domains/entries",
        {"domain": ("a" * 60 + ".") * 5 + "com"},
        "too long",
    ),
    "domain_toggle_empty": (
        "/domains",
        {"enabled": "1"},
        "Add at least one approved domain",
    ),
}


@pytest.mark.parametrize(
    ("path", "form", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys()
)
def test_bad_input_is_a_400_page_with_its_message_and_changes_nothing(
    app, acme, path, form, message
):
    admin = admin_client(app)
    before = table_rows(app, *POLICY_TABLES)
    refusals = len(events(app, "request.refused"))

    response = post(admin, path, form)

    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert message in text
    # Shown in the section it belongs to, on the whole page.
    assert "Security check-up" in text
    assert table_rows(app, *POLICY_TABLES) == before
    refused = events(app, "request.refused")
    assert len(refused) == refusals + 1
    assert refused[-1].actor_label == "ann@example.com"
    assert refused[-1].reason


def test_duplicates_and_the_list_caps_are_refused(app, acme, monkeypatch):
    admin = admin_client(app)
    assert post(admin, "/ip/entries", {"network": "203.0.113.0/24"}).status_code == 302
    assert post(admin, "/domains/entries", {"domain": "example.com"}).status_code == 302
    before = table_rows(app, *POLICY_TABLES)

    for network in ("203.0.113.9/24", "::ffff:203.0.113.0/120"):
        response = post(admin, "/ip/entries", {"network": network})
        assert response.status_code == 400
        assert "203.0.113.0/24 is already on the list" in response.get_data(
            as_text=True
        )
    for domain in ("EXAMPLE.com", "example.com."):
        response = post(admin, "/domains/entries", {"domain": domain})
        assert response.status_code == 400
        assert "example.com is already on the list" in response.get_data(as_text=True)

    monkeypatch.setattr(security_policy, "MAX_IP_ENTRIES", 1)
    monkeypatch.setattr(security_policy, "MAX_DOMAIN_ENTRIES", 1)
    response = post(admin, "/ip/entries", {"network": "198.51.100.0/24"})
    assert response.status_code == 400
    assert "at most 1 addresses" in response.get_data(as_text=True)
    response = post(admin, "/domains/entries", {"domain": "example.org"})
    assert response.status_code == 400
    assert "at most 1 domains" in response.get_data(as_text=True)
    assert table_rows(app, *POLICY_TABLES) == before


# --- canonical forms ---------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.7/24", "203.0.113.0/24"),
        (" 10.0.0.0/8 ", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:DB8::1", "2001:db8::1/128"),
        ("2001:db8:0:0:1::/48", "2001:db8::/48"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),
        ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
        ("::ffff:cb00:7100/120", "203.0.113.0/24"),
    ],
    ids=[
        "v4_host",
        "v4_host_bits",
        "spaces",
        "v4_everything",
        "v6_host",
        "v6_host_bits",
        "v4_mapped_host",
        "v4_mapped_range",
        "v4_mapped_hex",
    ],
)
def test_ip_entries_are_stored_in_canonical_form(app, acme, typed, stored):
    admin = admin_client(app)
    response = post(admin, "/ip/entries", {"network": typed, "description": "Office"})
    assert response.status_code == 302
    assert networks(app, acme) == [stored]
    html = section(admin.get(PAGE).get_data(as_text=True), "ip-restrictions")
    assert stored in html and "Office" in html


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  sub.example.com  ", "sub.example.com"),
        ("B\u00dcCHER.example", "b\u00fccher.example"),
        ("xn--bcher-kva.example", "b\u00fccher.example"),
    ],
    ids=["case", "trailing_dot", "spaces", "idn_upper", "punycode"],
)
def test_domains_are_stored_as_emails_store_them(app, acme, typed, stored):
    admin = admin_client(app)
    assert post(admin, "/domains/entries", {"domain": typed}).status_code == 302
    assert domains(app, acme) == [(stored, False)]


# --- IP lock-out guard -------------------------------------------------------


LOCKOUT = {
    "ipv4": ("203.0.113.7", "198.51.100.0/24", "203.0.113.0/24"),
    "ipv6": ("2001:db8:2::7", "2001:db8:1::/48", "2001:db8:2::/48"),
    "ipv4_mapped_peer": ("::ffff:203.0.113.7", "198.51.100.0/24", "203.0.113.7"),
}


@pytest.mark.parametrize(
    ("peer", "other", "mine"), LOCKOUT.values(), ids=LOCKOUT.keys()
)
def test_switching_on_a_list_without_the_admin_is_refused(app, acme, peer, other, mine):
    admin = admin_client(app, peer)
    assert post(admin, "/ip/entries", {"network": other}).status_code == 302
    before = table_rows(app, *POLICY_TABLES)

    response = post(admin, "/ip", {"enabled": "1"})

    assert response.status_code == 409
    text = response.get_data(as_text=True)
    seen = peer.removeprefix("::ffff:")
    assert f"Your address {seen} would not be on the list" in text
    assert "lock you out" in text
    assert table_rows(app, *POLICY_TABLES) == before
    refused = events(app, "security.ip_restriction")
    assert [(e.outcome, e.reason, e.details) for e in refused] == [
        ("denied", "would_lock_out", {"client_ip": seen})
    ]
    assert events(app, "request.refused") == []

    # With the admin's own range listed, the same switch goes through.
    assert post(admin, "/ip/entries", {"network": mine}).status_code == 302
    assert post(admin, "/ip", {"enabled": "1"}).status_code == 302
    assert stored_policy(app, acme).ip_restriction_enabled is True
    assert admin.get(PAGE).status_code == 200


def test_removing_the_entry_that_lets_the_admin_in_is_refused(app, acme):
    admin = admin_client(app, "203.0.113.7")
    post(admin, "/ip/entries", {"network": "203.0.113.0/24"})
    post(admin, "/ip/entries", {"network": "198.51.100.0/24"})
    assert post(admin, "/ip", {"enabled": "1"}).status_code == 302
    with app.app_context():
        ids = dict(
            db.session.execute(sa.select(IpAllowEntry.network, IpAllowEntry.id)).all()
        )
    before = table_rows(app, *POLICY_TABLES)

    response = post(admin, f"/ip/{ids['203.0.113.0/24']}/remove", {})

    assert response.status_code == 409
    assert "would lock you out" in response.get_data(as_text=True)
    assert table_rows(app, *POLICY_TABLES) == before
    assert events(app, "security.ip_entry_removed")[-1].reason == "would_lock_out"

    assert post(admin, f"/ip/{ids['198.51.100.0/24']}/remove", {}).status_code == 302
    assert networks(app, acme) == ["203.0.113.0/24"]
    # Off again, the last entry may go.
    assert post(admin, "/ip", {}).status_code == 302
    assert post(admin, f"/ip/{ids['203.0.113.0/24']}/remove", {}).status_code == 302
    assert networks(app, acme) == []


def test_an_admin_whose_address_is_unknown_cannot_switch_the_list_on(app, acme):
    admin = admin_client(app, "not-an-address")
    post(admin, "/ip/entries", {"network": "0.0.0.0/0"})
    before = table_rows(app, *POLICY_TABLES)

    response = post(admin, "/ip", {"enabled": "1"})
    assert response.status_code == 409
    assert "cannot tell your network address" in response.get_data(as_text=True)

    response = post(admin, "/ip/my-ip", {})
    assert response.status_code == 400
    assert "cannot tell your network address" in response.get_data(as_text=True)
    assert table_rows(app, *POLICY_TABLES) == before


# --- Add my IP --------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [{"gateway": {"trusted_proxies": ["10.0.0.5"]}}], ids=["proxy"]
)
@pytest.mark.parametrize(
    ("peer", "forwarded", "stored"),
    [
        ("10.0.0.5", "198.51.100.23", "198.51.100.23/32"),
        ("10.0.0.5", "192.0.2.1, 198.51.100.23", "198.51.100.23/32"),
        ("10.0.0.5", "2001:db8::23", "2001:db8::23/128"),
        ("10.0.0.5", "::ffff:198.51.100.23", "198.51.100.23/32"),
        ("203.0.113.9", "198.51.100.23", "203.0.113.9/32"),
        ("::ffff:203.0.113.9", None, "203.0.113.9/32"),
        ("2001:db8::9", "198.51.100.23", "2001:db8::9/128"),
    ],
    ids=[
        "trusted_proxy",
        "trusted_proxy_right_most",
        "trusted_proxy_v6_client",
        "trusted_proxy_mapped_client",
        "untrusted_peer_ignores_header",
        "mapped_peer",
        "v6_peer_ignores_header",
    ],
)
def test_add_my_ip_adds_the_address_the_server_sees(
    app, acme, overrides, peer, forwarded, stored
):
    admin = admin_client(app, peer)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}

    response = post(admin, "/ip/my-ip", {}, headers=headers)

    assert response.status_code == 302
    assert networks(app, acme) == [stored]
    added = events(app, "security.ip_entry_added")[-1]
    assert added.details["new"]["network"] == stored
    assert "Add my IP" in added.details["new"]["description"]


def test_add_my_ip_when_already_covered_says_so(app, acme):
    admin = admin_client(app, "203.0.113.9")
    post(admin, "/ip/entries", {"network": "203.0.113.0/24"})
    response = post(admin, "/ip/my-ip", {})
    assert response.status_code == 400
    assert "203.0.113.9 is already allowed by 203.0.113.0/24" in response.get_data(
        as_text=True
    )
    assert networks(app, acme) == ["203.0.113.0/24"]


# --- Domain restrictions ----------------------------------------------------


def test_domain_restriction_set_in_the_tab_refuses_invitations_outside(app, acme):
    make_user(app, acme, "old@other.org")
    admin = admin_client(app)
    assert post(admin, "/domains/entries", {"domain": "Example.com"}).status_code == 302
    assert post(admin, "/domains", {"enabled": "1"}).status_code == 302
    assert stored_policy(app, acme).domain_restriction_enabled is True

    def invite(email: str):  # type: ignore[no-untyped-def]
        return post_form(
            admin,
            "/portal/users/invite",
            {"email": email, "role": "read_only", "full_name": "New"},
        )

    refused = invite("new@other.org")
    assert refused.status_code == 403
    assert "not on the approved list" in refused.get_data(as_text=True)
    assert invite("new@sub.example.com").status_code == 403
    assert invite("new@example.com").status_code == 302
    # Existing members outside the list are unaffected (ACC-4).
    assert signed_in(app, "old@other.org").get("/portal/profile").status_code == 200


def test_subdomains_pass_only_when_included(app, acme):
    admin = admin_client(app)
    post(
        admin, "/domains/entries", {"domain": "example.com", "include_subdomains": "1"}
    )
    post(admin, "/domains", {"enabled": "1"})
    assert domains(app, acme) == [("example.com", True)]
    response = post_form(
        admin,
        "/portal/users/invite",
        {"email": "new@eu.example.com", "role": "read_only", "full_name": "New"},
    )
    assert response.status_code == 302


def test_the_last_domain_cannot_go_while_the_restriction_is_on(app, acme):
    admin = admin_client(app)
    post(admin, "/domains/entries", {"domain": "example.com"})
    post(admin, "/domains", {"enabled": "1"})
    with app.app_context():
        entry = db.session.scalar(sa.select(DomainAllowEntry.id))
    before = table_rows(app, *POLICY_TABLES)

    response = post(admin, f"/domains/{entry}/remove", {})

    assert response.status_code == 400
    assert "last approved domain" in response.get_data(as_text=True)
    assert table_rows(app, *POLICY_TABLES) == before
    assert post(admin, "/domains", {}).status_code == 302
    assert post(admin, f"/domains/{entry}/remove", {}).status_code == 302
    assert domains(app, acme) == []


# --- the audit trail ----------------------------------------------------------


def test_every_change_is_audited_with_old_and_new_values(app, acme):
    admin = admin_client(app, "203.0.113.7")
    steps = [
        ("/idle-timeout", {"enabled": "1", "amount": "30", "unit": "minutes"}),
        ("/idle-timeout", {"enabled": "1", "amount": "1", "unit": "hours"}),
        ("/idle-timeout", {"enabled": "1", "amount": "60", "unit": "minutes"}),
        ("/idle-timeout", {}),
        ("/max-sessions", {"enabled": "1", "limit": "3"}),
        ("/relogin", {"enabled": "1", "days": "14"}),
        ("/mfa", {"mfa_mode": "force_except_sso", "confirm": "1"}),
    ]
    give_session_mfa(app, "ann@example.com")
    for path, form in steps:
        assert post(admin, path, form).status_code == 302, path

    def changes(action: str) -> list[tuple[Any, Any]]:
        return [(e.details["old"], e.details["new"]) for e in events(app, action)]

    # Saving the same value again (1 hour as 60 minutes) writes nothing.
    assert changes("security.idle_timeout") == [
        (None, 1800),
        (1800, 3600),
        (3600, None),
    ]
    assert changes("security.max_sessions") == [(None, 3)]
    assert changes("security.relogin_days") == [(None, 14)]
    assert changes("security.mfa_mode") == [("off", "force_except_sso")]

    post(admin, "/ip/entries", {"network": "203.0.113.0/24", "description": "HQ"})
    post(admin, "/ip", {"enabled": "1"})
    post(admin, "/ip/entries", {"network": "2001:db8::/32"})
    post(admin, "/domains/entries", {"domain": "example.com"})
    post(admin, "/domains", {"enabled": "1"})
    post(admin, "/domains", {})
    with app.app_context():
        v6 = db.session.scalar(
            sa.select(IpAllowEntry.id).where(IpAllowEntry.network == "2001:db8::/32")
        )
        domain = db.session.scalar(sa.select(DomainAllowEntry.id))
    post(admin, f"/ip/{v6}/remove", {})
    post(admin, f"/domains/{domain}/remove", {})

    assert changes("security.ip_restriction") == [(False, True)]
    assert changes("security.domain_restriction") == [(False, True), (True, False)]
    assert changes("security.ip_entry_added") == [
        (None, {"network": "203.0.113.0/24", "description": "HQ"}),
        (None, {"network": "2001:db8::/32", "description": ""}),
    ]
    assert changes("security.ip_entry_removed") == [
        ({"network": "2001:db8::/32", "description": ""}, None)
    ]
    assert changes("security.domain_entry_added") == [
        (None, {"domain": "example.com", "include_subdomains": False})
    ]
    assert changes("security.domain_entry_removed") == [
        ({"domain": "example.com", "include_subdomains": False}, None)
    ]
    every = [e for e in events(app, "security.ip_entry_removed")]
    assert every[0].details["entry"] == str(v6)
    with app.app_context():
        security_events = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action.like("security.%"))
        ).all()
        assert {
            (e.actor_label, e.target_label, e.outcome) for e in security_events
        } == {("ann@example.com", "Acme", "success")}
        assert {e.client_ip for e in security_events} == {"203.0.113.7"}

    # The Audit logs tab says each change in words, and its filter finds it.
    page = admin.get("/portal/audit-logs").get_data(as_text=True)
    for text in (
        "off → 30 minutes",
        "30 minutes → 1 hour",
        "1 hour → off",
        "off → 3 sessions",
        "off → 14 days",
        "Don&#39;t force → Force except enterprise SSO",
        "added 203.0.113.0/24 (HQ)",
        "removed 2001:db8::/32",
        "removed example.com",
        "off → on",
    ):
        assert text in page, text
    only = admin.get("/portal/audit-logs?action=security.ip_entry_added")
    assert only.get_data(as_text=True).count("<code>security.") == 2


# --- who may do it -----------------------------------------------------------


READ_ONLY_POSTS = [
    ("/mfa", {"mfa_mode": "force", "confirm": "1"}),
    ("/idle-timeout", {"enabled": "1", "amount": "30", "unit": "minutes"}),
    ("/max-sessions", {"enabled": "1", "limit": "2"}),
    ("/relogin", {"enabled": "1", "days": "7"}),
    ("/ip", {"enabled": "1"}),
    ("/ip/entries", {"network": "0.0.0.0/0"}),
    ("/ip/my-ip", {}),
    ("/ip/{ip}/remove", {}),
    ("/domains", {}),
    ("/domains/entries", {"domain": "evil.example"}),
    ("/domains/{domain}/remove", {}),
]


@pytest.mark.parametrize(
    ("path", "form"), READ_ONLY_POSTS, ids=[p for p, _ in READ_ONLY_POSTS]
)
def test_read_only_members_are_refused_and_nothing_changes(app, acme, path, form):
    admin = admin_client(app, "203.0.113.7")
    post(admin, "/ip/entries", {"network": "203.0.113.0/24"})
    post(admin, "/domains/entries", {"domain": "example.com"})
    post(admin, "/domains", {"enabled": "1"})
    with app.app_context():
        ids = {
            "ip": db.session.scalar(sa.select(IpAllowEntry.id)),
            "domain": db.session.scalar(sa.select(DomainAllowEntry.id)),
        }
    reader = signed_in(app, "rob@example.com")
    token = re.search(
        r'name="csrf_token" value="([^"]+)"',
        reader.get("/portal/profile").get_data(as_text=True),
    ).group(1)
    before = table_rows(app, *POLICY_TABLES)
    denied = len(events(app, "authz.denied"))

    response = reader.post(
        PAGE + path.format(**ids), data={**form, "csrf_token": token}
    )

    assert response.status_code == 403
    assert table_rows(app, *POLICY_TABLES) == before
    assert len(events(app, "authz.denied")) == denied + 1
    assert reader.get(PAGE).status_code == 403


def test_service_refuses_a_read_only_member_too(app, acme):
    before = table_rows(app, *POLICY_TABLES)
    with app.test_request_context():
        from idp.models import Workspace
        from idp.services.context import Client
        from idp.services.errors import Forbidden

        ws = db.session.get(Workspace, acme.id)
        rob = db.session.scalar(sa.select(User).where(User.email == "rob@example.com"))
        ctx = Context.for_user(rob, Client(ip="203.0.113.7"))
        with pytest.raises(Forbidden):
            security_policy.set_max_sessions(ctx, ws, enabled=True, limit=2)
        with pytest.raises(Forbidden):
            checkup.run(ctx, ws)
    assert table_rows(app, *POLICY_TABLES) == before


MALFORMED_IDS = ["not-a-uuid", "123", "' OR '1'='1", "%00", "a" * 500]


def test_entries_of_another_workspace_cannot_be_removed_by_id(app, acme):
    bravo = make_workspace(app, "Bravo")
    ip = as_operator(app, security_policy.add_ip_entry, bravo, "192.0.2.0/24")
    domain = as_operator(app, security_policy.add_domain, bravo, "bravo.example")
    admin = admin_client(app)
    before = table_rows(app, *POLICY_TABLES)

    for path in (f"/ip/{ip.id}/remove", f"/domains/{domain.id}/remove"):
        response = post(admin, path, {})
        assert response.status_code == 404, path
        assert "bravo.example" not in response.get_data(as_text=True)
    for bad in [*MALFORMED_IDS, str(uuid.uuid4())]:
        for kind in ("ip", "domains"):
            assert post(admin, f"/{kind}/{bad}/remove", {}).status_code == 404
    assert table_rows(app, *POLICY_TABLES) == before
    html = admin.get(PAGE).get_data(as_text=True)
    assert "192.0.2.0/24" not in html and "bravo.example" not in html


# --- the check-up -------------------------------------------------------------


def run_checkup(app, ws) -> checkup.Checkup:  # type: ignore[no-untyped-def]
    with app.test_request_context():
        from idp.models import Workspace

        return checkup.run(Context.operator(), db.session.get(Workspace, ws.id))


def test_inactivity_counts_members_from_90_days_and_invitations_from_30(
    app, clock, acme
):
    make_user(app, acme, "ivy@example.com", status="invited", password=None)
    make_user(app, acme, "dee@example.com", status="disabled")
    start = clock.now

    clock.advance(days=30, seconds=-1)
    result = run_checkup(app, acme)
    assert (result.inactive_members, result.stale_invitations) == (0, 0)
    clock.advance(seconds=1)
    assert run_checkup(app, acme).stale_invitations == 1

    clock.now = start + timedelta(days=90, seconds=-1)
    assert run_checkup(app, acme).inactive_members == 0
    clock.advance(seconds=1)
    result = run_checkup(app, acme)
    # Ann and Rob; the disabled and the invited member are not "inactive".
    assert result.inactive_members == 2
    codes = {w.code for w in result.warnings}
    assert {"inactive_members", "stale_invitations"} <= codes

    # Signing in is being seen.
    signed_in(app, "rob@example.com")
    assert run_checkup(app, acme).inactive_members == 1


def test_mfa_counts_active_members_and_admins(app, clock, acme):
    make_user(app, acme, "ivy@example.com", status="invited", password=None)
    make_user(app, acme, "dee@example.com", status="disabled", role="admin")
    make_user(app, acme, "eve@example.com", role="admin")
    result = run_checkup(app, acme)
    assert (result.active_members, result.without_mfa) == (3, 3)
    assert result.admins_without_mfa == 2
    html = admin_client(app).get(PAGE).get_data(as_text=True)
    quadrant = html[html.index('data-quadrant="mfa"') :]
    assert '<p class="q-count">3</p>' in quadrant[: quadrant.index("</article>")]
    assert "2 admins have no MFA." in html


def test_the_sql_mfa_condition_agrees_with_user_has_mfa(app, acme):
    make_user(app, acme, "fay@example.com")
    give_authenticator(app, "fay@example.com")
    with app.app_context():
        users = db.session.scalars(sa.select(User)).all()
        sql = set(
            db.session.scalars(sa.select(User.id).where(checkup.has_mfa_clause()))
        )
        assert {u.id for u in users if user_has_mfa(u)} == sql
        assert len(sql) == 1


def make_session(app, user_email: str, now, **fields: Any) -> None:  # type: ignore[no-untyped-def]
    """A session row as sign-in would leave it, at ``now`` unless told."""
    from idp.security import new_token, token_digest

    for key in ("created_at", "authenticated_at", "last_seen_at"):
        fields.setdefault(key, now)
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == user_email))
        db.session.add(
            Session(
                workspace_id=user.workspace_id,
                user_id=user.id,
                token_hash=token_digest(new_token()),
                **fields,
            )
        )
        db.session.commit()


POLICIES = {
    "nothing": {},
    "idle": {"idle_timeout_seconds": 3600},
    "relogin": {"relogin_days": 2},
    "force": {"mfa_mode": "force"},
    "force_except_sso": {"mfa_mode": "force_except_sso"},
    "all": {"idle_timeout_seconds": 600, "relogin_days": 1, "mfa_mode": "force"},
}


@pytest.mark.parametrize("values", POLICIES.values(), ids=POLICIES.keys())
def test_session_counts_agree_with_the_pipeline(app, clock, acme, values):
    """The check-up's SQL and policies.evaluate say the same of every
    session, at and around each limit."""
    now = clock.now
    ago = [timedelta(0), timedelta(minutes=10), timedelta(hours=1)]
    ago += [timedelta(hours=1, seconds=-1), timedelta(days=1), timedelta(days=2)]
    ago += [timedelta(days=2, seconds=-1), timedelta(days=29)]
    variants = [
        {"amr": ["pwd"]},
        {"amr": ["pwd", "otp"]},
        {"amr": ["hwk"]},
        {"amr": ["pwd"], "mfa_at": now},
        {"amr": ["pwd"], "sso_connection_id": uuid.uuid4()},
        {"amr": []},
    ]
    for n, delta in enumerate(ago):
        for variant in variants:
            make_session(
                app,
                "rob@example.com" if n % 2 else "ann@example.com",
                now,
                created_at=now - delta - timedelta(days=1),
                authenticated_at=now - delta,
                last_seen_at=now - delta,
                **variant,
            )
    # Neither counted: revoked, and past the 30-day absolute lifetime.
    make_session(app, "rob@example.com", now, revoked_at=now, amr=["pwd"])
    make_session(
        app,
        "rob@example.com",
        now,
        authenticated_at=now - timedelta(days=30),
        last_seen_at=now,
        amr=["pwd"],
    )
    with app.app_context():
        row = db.session.get(SecurityPolicy, acme.id)
        for key, value in values.items():
            setattr(row, key, value)
        db.session.commit()
        counts = checkup.session_counts(acme.id, row, now)
        live = db.session.scalars(
            sa.select(Session).where(
                Session.revoked_at.is_(None),
                Session.authenticated_at > now - timedelta(days=30),
            )
        ).all()
        facts = policies.WorkspacePolicy(**values)

        def refused(session: Session, rules) -> bool:  # type: ignore[no-untyped-def]
            ctx = policies.PolicyContext(
                now=now, user=None, session=session_facts(session), policy=facts
            )
            return policies.evaluate(ctx, rules) is not None

        rules = (*policies.TIME_LIMITS, mfa_enforcement)
        assert counts.active == len(live) == len(ago) * len(variants)
        assert counts.not_allowed == sum(refused(s, rules) for s in live)
        assert counts.without_mfa == sum(refused(s, (mfa_enforcement,)) for s in live)
        assert counts.idle == sum(refused(s, (idle_timeout,)) for s in live)
        assert counts.relogin == sum(refused(s, (forced_relogin,)) for s in live)
    if not values:
        assert counts.not_allowed == 0


def test_sessions_over_the_limit_are_counted_per_member(app, clock, acme):
    now = clock.now
    for n in range(4):
        make_session(
            app,
            "rob@example.com",
            now,
            created_at=now - timedelta(minutes=n),
            authenticated_at=now - timedelta(minutes=n),
            last_seen_at=now - timedelta(minutes=n),
            amr=["pwd"],
        )
    make_session(app, "ann@example.com", now, amr=["pwd"])
    # Idle past the timeout: already refused, so not counted against the limit.
    make_session(
        app,
        "rob@example.com",
        now,
        authenticated_at=now - timedelta(hours=2),
        last_seen_at=now - timedelta(hours=2),
        amr=["pwd"],
    )
    with app.app_context():
        row = db.session.get(SecurityPolicy, acme.id)
        row.max_sessions = 2
        row.idle_timeout_seconds = 3600
        db.session.commit()
        counts = checkup.session_counts(acme.id, row, now)
    assert (counts.active, counts.idle, counts.not_allowed) == (6, 1, 1)
    assert counts.over_limit == 2


def test_idle_sessions_appear_in_the_quadrant_at_the_exact_second(app, clock, acme):
    admin = admin_client(app)
    assert (
        post(
            admin, "/idle-timeout", {"enabled": "1", "amount": "1", "unit": "hours"}
        ).status_code
        == 302
    )
    signed_in(app, "rob@example.com")
    clock.advance(hours=1, seconds=-1)
    assert run_checkup(app, acme).sessions.idle == 0
    clock.advance(seconds=1)
    result = run_checkup(app, acme)
    # Both the admin's and Rob's sessions have been idle for the whole hour.
    assert (result.sessions.idle, result.sessions.not_allowed) == (2, 2)
    assert "Idle session timeout" not in result.settings_off


def test_restriction_counts_and_warnings_follow_the_settings(app, acme):
    admin = admin_client(app, "203.0.113.7")
    fresh = {w.code for w in run_checkup(app, acme).warnings}
    assert fresh == {
        "mfa_not_forced",
        "admins_without_mfa",
        "no_ip_restriction",
        "no_idle_timeout",
        "no_relogin",
        "no_session_limit",
        "no_domain_restriction",
    }
    post(admin, "/ip/my-ip", {})
    post(admin, "/ip/entries", {"network": "2001:db8::/32"})
    post(admin, "/ip", {"enabled": "1"})
    post(admin, "/domains/entries", {"domain": "example.com"})
    post(admin, "/domains", {"enabled": "1"})
    post(admin, "/idle-timeout", {"enabled": "1", "amount": "1", "unit": "hours"})
    post(admin, "/max-sessions", {"enabled": "1", "limit": "3"})
    post(admin, "/relogin", {"enabled": "1", "days": "7"})

    result = run_checkup(app, acme)
    assert (result.allowed_ips, result.allowed_domains) == (2, 1)
    assert result.settings_off == ()
    assert {w.code for w in result.warnings} == {"mfa_not_forced", "admins_without_mfa"}
    html = admin.get(PAGE).get_data(as_text=True)
    for w in result.warnings:
        assert f'data-code="{w.code}"' in html
    assert 'href="#force-mfa">Manage</a>' in html


def test_the_check_up_runs_the_same_queries_for_any_number_of_members(app, clock, acme):
    statements: list[str] = []

    def count_queries() -> int:
        statements.clear()
        run_checkup(app, acme)
        return len(statements)

    with app.app_context():
        engine = db.engine

    def listener(*args: Any, **kw: Any) -> None:
        statements.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        small = count_queries()
        for n in range(40):
            make_user(app, acme, f"m{n}@example.com", password=None)
            make_session(app, f"m{n}@example.com", clock.now, amr=["pwd"])
        assert count_queries() == small
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    result = run_checkup(app, acme)
    assert result.active_members == 42
    assert result.sessions.active == 40

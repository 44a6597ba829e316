"""`idp workspace security`: the operator's view of a workspace's security
policy, and the break-glass that turns off forced MFA and the allow-lists
when they lock every admin out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from idp import cli
from idp.db import db
from idp.models import (
    AuditEvent,
    DomainAllowEntry,
    IpAllowEntry,
    SecurityPolicy,
    TotpSecret,
)
from idp.services import security_policy
from tests.conftest import (
    give_authenticator,
    login,
    make_user,
    make_workspace,
    session_cookie,
)

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = "198.51.100.7"
ADMIN = "boss@example.com"


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    make_user(app, ws, ADMIN, role="admin")
    return ws


def set_policy(app, ws, **values: Any) -> None:  # type: ignore[no-untyped-def]
    """Write the policy row directly, so the audit log holds only what the
    command records."""
    with app.app_context():
        row = db.session.get(SecurityPolicy, ws.id)
        for key, value in values.items():
            setattr(row, key, value)
        db.session.commit()


def add_entries(app, ws, ips=(), domains=()) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        for network, description in ips:
            db.session.add(
                IpAllowEntry(
                    workspace_id=ws.id, network=network, description=description
                )
            )
        for domain, subdomains in domains:
            db.session.add(
                DomainAllowEntry(
                    workspace_id=ws.id, domain=domain, include_subdomains=subdomains
                )
            )
        db.session.commit()


def policy(app, ws) -> SecurityPolicy:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(SecurityPolicy, ws.id)
        db.session.expunge(row)
        return row


def security_events(app) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = list(
            db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action.like("security.%"))
                .order_by(AuditEvent.id)
            )
        )
        db.session.expunge_all()
        return rows


def entry_count(app, model) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def sign_in(app, peer: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    return client, login(client, ADMIN)


def assert_by_operator(event: AuditEvent, ws, action: str, old: Any, new: Any) -> None:
    assert event.action == action
    assert (event.actor_type, event.actor_id) == ("operator", None)
    assert event.actor_label == "operator (CLI)"
    assert event.outcome == "success"
    assert event.workspace_id == ws.id
    assert (event.target_type, event.target_id) == ("workspace", str(ws.id))
    assert event.details == {"old": old, "new": new}


# --- showing ---------------------------------------------------------------------


def test_shows_the_default_policy(idp, acme):
    code, out, err = idp("workspace", "security", "acme")

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "workspace: acme",
        "name: Acme",
        "mfa: off",
        "idle timeout: off",
        "max sessions: off",
        "re-login days: off",
        "ip restriction: off",
        "ip allow: (none)",
        "domain restriction: off",
        "domain allow: (none)",
    ]


def test_shows_every_setting_and_entry(app, idp, acme):
    set_policy(
        app,
        acme,
        mfa_mode="force_except_sso",
        idle_timeout_seconds=90 * 60,
        max_sessions=3,
        relogin_days=7,
        ip_restriction_enabled=True,
        domain_restriction_enabled=True,
    )
    add_entries(
        app,
        acme,
        ips=[("2001:db8::/48", ""), ("203.0.113.0/24", "Office, 2nd floor")],
        domains=[("example.org", True), ("example.com", False)],
    )

    code, out, _ = idp("workspace", "security", "acme")

    assert code == 0
    assert out.splitlines() == [
        "workspace: acme",
        "name: Acme",
        "mfa: force_except_sso",
        "idle timeout: 90 minutes",
        "max sessions: 3",
        "re-login days: 7",
        "ip restriction: on",
        "ip allow: 203.0.113.0/24  Office, 2nd floor",
        "ip allow: 2001:db8::/48",
        "domain restriction: on",
        "domain allow: example.com",
        "domain allow: example.org  and subdomains",
    ]
    assert security_events(app) == []


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(3600, "1 hour"), (86400, "1 day"), (2 * 86400, "2 days"), (300, "5 minutes")],
)
def test_shows_the_idle_timeout_in_its_largest_whole_unit(
    app, idp, acme, seconds, shown
):
    set_policy(app, acme, idle_timeout_seconds=seconds)
    _, out, _ = idp("workspace", "security", "acme")
    assert f"idle timeout: {shown}" in out.splitlines()


def test_terminal_control_characters_are_shown_escaped(app, idp):
    make_workspace(app, "Evil\x1b]0;owned\x07 \u202eCorp")
    _, out, _ = idp("workspace", "security", "evil-0-owned-corp")
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "name: Evil\\x1b]0;owned\\x07 \\u202eCorp" in out.splitlines()


# --- break-glass ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["force", "force_except_sso"])
def test_mfa_off_lets_members_sign_in_without_a_factor(app, idp, acme, mode):
    set_policy(app, acme, mfa_mode=mode)
    held, stopped = sign_in(app)
    assert stopped.headers["Location"] == "/login/mfa/setup"
    assert session_cookie(held) is None

    code, out, err = idp("workspace", "security", "acme", "--mfa", "off")

    assert (code, out, err) == (0, f"mfa: {mode} -> off\n", "")
    assert policy(app, acme).mfa_mode == "off"
    (event,) = security_events(app)
    assert_by_operator(event, acme, "security.mfa_mode", mode, "off")
    client, answer = sign_in(app)
    assert answer.status_code == 302
    assert session_cookie(client) is not None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("off", "force"),
        ("off", "force_except_sso"),
        ("force", "force_except_sso"),
        ("force_except_sso", "force"),
    ],
)
def test_mfa_can_be_set_to_each_mode(app, idp, acme, old, new):
    set_policy(app, acme, mfa_mode=old)

    code, out, _ = idp("workspace", "security", "acme", "--mfa", new)

    assert (code, out) == (0, f"mfa: {old} -> {new}\n")
    assert policy(app, acme).mfa_mode == new
    (event,) = security_events(app)
    assert_by_operator(event, acme, "security.mfa_mode", old, new)


def test_ip_restriction_off_lets_an_admin_from_a_new_address_in(app, idp, acme):
    set_policy(app, acme, ip_restriction_enabled=True)
    add_entries(app, acme, ips=[("203.0.113.0/24", "old office")])
    _, refused = sign_in(app, OUTSIDE)
    assert refused.status_code == 403

    code, out, err = idp("workspace", "security", "acme", "--ip-restriction", "off")

    assert (code, out, err) == (0, "ip restriction: on -> off\n", "")
    assert policy(app, acme).ip_restriction_enabled is False
    (event,) = security_events(app)
    assert_by_operator(event, acme, "security.ip_restriction", True, False)
    # The list stays, to be fixed in the Security tab and switched on again.
    assert entry_count(app, IpAllowEntry) == 1
    _, answer = sign_in(app, OUTSIDE)
    assert answer.status_code == 302


def test_domain_restriction_off_keeps_the_list(app, idp, acme):
    set_policy(app, acme, domain_restriction_enabled=True)
    add_entries(app, acme, domains=[("example.com", False)])

    code, out, _ = idp("workspace", "security", "acme", "--domain-restriction", "off")

    assert (code, out) == (0, "domain restriction: on -> off\n")
    assert policy(app, acme).domain_restriction_enabled is False
    (event,) = security_events(app)
    assert_by_operator(event, acme, "security.domain_restriction", True, False)
    assert entry_count(app, DomainAllowEntry) == 1


def test_all_three_at_once_each_audited(app, idp, acme):
    set_policy(
        app,
        acme,
        mfa_mode="force",
        ip_restriction_enabled=True,
        domain_restriction_enabled=True,
    )

    code, out, _ = idp(
        "workspace",
        "security",
        "acme",
        "--domain-restriction",
        "off",
        "--mfa",
        "off",
        "--ip-restriction",
        "off",
    )

    assert code == 0
    assert out.splitlines() == [
        "mfa: force -> off",
        "ip restriction: on -> off",
        "domain restriction: on -> off",
    ]
    mfa, ip, domain = security_events(app)
    assert_by_operator(mfa, acme, "security.mfa_mode", "force", "off")
    assert_by_operator(ip, acme, "security.ip_restriction", True, False)
    assert_by_operator(domain, acme, "security.domain_restriction", True, False)
    row = policy(app, acme)
    assert (
        row.mfa_mode,
        row.ip_restriction_enabled,
        row.domain_restriction_enabled,
    ) == ("off", False, False)


def test_a_setting_already_so_is_reported_and_not_audited(app, idp, acme):
    code, out, _ = idp(
        "workspace",
        "security",
        "acme",
        "--mfa",
        "off",
        "--ip-restriction",
        "off",
        "--domain-restriction",
        "off",
    )

    assert code == 0
    assert out.splitlines() == [
        "mfa: off (unchanged)",
        "ip restriction: off (unchanged)",
        "domain restriction: off (unchanged)",
    ]
    assert security_events(app) == []


def test_changes_only_the_named_workspace(app, idp, acme):
    other = make_workspace(app, "Other")
    set_policy(app, acme, mfa_mode="force", ip_restriction_enabled=True)
    set_policy(app, other, mfa_mode="force", ip_restriction_enabled=True)

    idp("workspace", "security", "other", "--mfa", "off", "--ip-restriction", "off")

    kept = policy(app, acme)
    assert (kept.mfa_mode, kept.ip_restriction_enabled) == ("force", True)
    assert {e.workspace_id for e in security_events(app)} == {other.id}


# --- refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [[], ["--mfa", "off"], ["--ip-restriction", "off"]], ids=str
)
def test_an_unknown_slug_exits_2_with_a_message(app, idp, acme, options):
    set_policy(app, acme, mfa_mode="force")

    code, out, err = idp("workspace", "security", "nope", *options)

    assert code == 2
    assert out == ""
    assert err == "idp: There is no workspace 'nope'.\n"
    assert security_events(app) == []
    assert policy(app, acme).mfa_mode == "force"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mfa", "on"], "invalid choice: 'on'"),
        (["--mfa", "Force"], "invalid choice: 'Force'"),
        (["--mfa", ""], "invalid choice: ''"),
        (["--ip-restriction", "on"], "invalid choice: 'on'"),
        (["--domain-restriction", "on"], "invalid choice: 'on'"),
        (["--mfa"], "expected one argument"),
    ],
)
def test_an_invalid_value_is_refused_by_argparse(app, idp, acme, args, message):
    set_policy(app, acme, mfa_mode="force")

    code, out, err = idp("workspace", "security", "acme", *args)

    assert code == 2
    assert out == ""
    assert message in err
    assert "usage: idp workspace security" in err
    assert policy(app, acme).mfa_mode == "force"
    assert security_events(app) == []


def test_slug_is_required(idp):
    code, _, err = idp("workspace", "security")
    assert code == 2
    assert "SLUG" in err


def test_the_cli_offers_exactly_the_service_modes():
    assert cli.MFA_MODES == security_policy.MFA_MODES


# --- as a person runs it ---------------------------------------------------------


def test_the_installed_command_end_to_end(tmp_path, database_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({"IDP_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "idp.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert run("init", "--quiet").returncode == 0
    assert run("workspace", "create", "Acme").stdout == "acme\n"
    forced = run("workspace", "security", "acme", "--mfa", "force")
    assert (forced.returncode, forced.stdout) == (0, "mfa: off -> force\n")
    shown = run("workspace", "security", "acme")
    assert shown.returncode == 0
    assert "mfa: force" in shown.stdout.splitlines()
    unknown = run("workspace", "security", "nope", "--mfa", "off")
    assert unknown.returncode == 2
    assert unknown.stderr == "idp: There is no workspace 'nope'.\n"
    bad = run("workspace", "security", "acme", "--mfa", "maybe")
    assert bad.returncode == 2
    assert "invalid choice: 'maybe'" in bad.stderr


# --- idp user reset-mfa -------------------------------------------------------


def test_reset_mfa_lets_a_locked_out_admin_in_again(app, acme, idp, mailer):
    """The only admin lost the phone while MFA is forced: the operator
    removes the factors, and the next sign-in sets up a new one."""
    give_authenticator(app, ADMIN)
    set_policy(app, acme, mfa_mode="force")
    assert login(app.test_client(), ADMIN).headers["Location"] == "/login/mfa"

    code, out, err = idp("user", "reset-mfa", "--workspace", acme.slug, ADMIN)

    assert (code, err) == (0, "")
    assert out == f"mfa reset: {ADMIN} (sessions ended, member told by email)\n"
    with app.app_context():
        assert db.session.scalars(sa.select(TotpSecret)).all() == []
        (event,) = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "mfa.reset")
        ).all()
        assert event.actor_label == "operator (CLI)"
    assert [m.to for m in mailer.sent] == [ADMIN]
    client = app.test_client()
    assert login(client, ADMIN).headers["Location"] == "/login/mfa/setup"
    assert session_cookie(client) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workspace", "nope", ADMIN), "There is no workspace"),
        (("--workspace", "{slug}", "nobody@example.com"), "There is no member"),
        (("--workspace", "{slug}", ADMIN), "has no MFA to reset"),
    ],
    ids=["unknown-workspace", "unknown-member", "nothing-to-reset"],
)
def test_reset_mfa_refuses_what_it_cannot_do(app, acme, idp, args, message):
    args = tuple(a.format(slug=acme.slug) for a in args)
    code, out, err = idp("user", "reset-mfa", *args)
    assert code == 2
    assert out == ""
    assert message.lower() in err.lower()

"""The policy pipeline on plain values: no database, no Flask, fixed times."""

import ipaddress
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

import policies
from policies.account_state import account_state
from policies.ip_allowlist import ip_allowlist
from policies.mfa import mfa_enforcement
from policies.time_limits import forced_relogin, idle_timeout, past_lifetime

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
DENY = policies.Outcome.DENY
REAUTH = policies.Outcome.REAUTHENTICATE


def ctx(status: str | None) -> policies.PolicyContext:
    user = (
        None
        if status is None
        else policies.UserFacts(id="u1", role="admin", status=status)
    )
    return policies.PolicyContext(now=NOW, user=user)


def member(*, has_mfa: bool = False, status: str = "active") -> policies.UserFacts:
    return policies.UserFacts(id="u1", role="read_only", status=status, has_mfa=has_mfa)


def session(
    *,
    age: timedelta = timedelta(0),
    idle: timedelta = timedelta(0),
    mfa: bool = False,
    amr: tuple[str, ...] = ("pwd",),
    via_sso: bool = False,
) -> policies.SessionFacts:
    """A session signed in ``age`` ago and last seen ``idle`` ago."""
    return policies.SessionFacts(
        created_at=NOW - age,
        authenticated_at=NOW - age,
        last_seen_at=NOW - idle,
        mfa_at=NOW - age if mfa else None,
        amr=amr,
        via_sso=via_sso,
    )


def check(
    policy: policies.WorkspacePolicy,
    sess: policies.SessionFacts | None = None,
    *,
    user: policies.UserFacts | None = None,
    client_ip: str | None = "198.51.100.7",
    stage: str = "check",
) -> policies.PolicyContext:
    return policies.PolicyContext(
        now=NOW,
        user=user or member(),
        stage=stage,  # type: ignore[arg-type]
        session=sess if sess is not None or stage == "sign_in" else session(),
        client_ip=client_ip,
        policy=policy,
    )


def networks(*entries: str) -> tuple:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


# --- account state ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, "account_deleted"),
        ("disabled", "account_disabled"),
        ("invited", "account_not_active"),
    ],
    ids=["deleted", "disabled", "invited"],
)
def test_account_state_refuses_accounts_that_are_not_active(status, reason):
    decision = account_state(ctx(status))
    assert decision == policies.Decision(policies.Outcome.DENY, reason)


def test_account_state_lets_active_accounts_pass():
    assert account_state(ctx("active")) is None


@pytest.mark.parametrize("status", ["", "Active", "suspended", "ACTIVE "])
def test_account_state_refuses_any_status_it_does_not_know(status):
    assert account_state(ctx(status)) == policies.Decision.deny("account_not_active")


# --- idle timeout, forced re-login, absolute lifetime ------------------------

IDLE = 15 * 60
RELOGIN_DAYS = 7


@pytest.mark.parametrize(
    ("idle", "expected"),
    [
        (timedelta(seconds=IDLE) - SECOND, None),
        (timedelta(seconds=IDLE), "idle_timeout"),
        (timedelta(seconds=IDLE) + SECOND, "idle_timeout"),
    ],
    ids=["one_second_before", "at_the_limit", "one_second_after"],
)
def test_idle_timeout_boundary(idle, expected):
    policy = policies.WorkspacePolicy(idle_timeout_seconds=IDLE)
    decision = idle_timeout(check(policy, session(age=idle, idle=idle)))
    assert (decision and decision.reason) == expected
    if decision:
        assert decision.outcome is REAUTH


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(days=RELOGIN_DAYS) - SECOND, None),
        (timedelta(days=RELOGIN_DAYS), "relogin_required"),
        (timedelta(days=RELOGIN_DAYS) + SECOND, "relogin_required"),
    ],
    ids=["one_second_before", "at_the_limit", "one_second_after"],
)
def test_forced_relogin_boundary(age, expected):
    policy = policies.WorkspacePolicy(relogin_days=RELOGIN_DAYS)
    # Used a moment ago: only the age since authentication matters.
    decision = forced_relogin(check(policy, session(age=age)))
    assert (decision and decision.reason) == expected
    if decision:
        assert decision.outcome is REAUTH


def test_forced_relogin_counts_from_authentication_not_issue():
    """A session re-issued later (a new token after the MFA step) keeps the
    authentication time it was proven at."""
    policy = policies.WorkspacePolicy(relogin_days=1)
    sess = replace(
        session(age=timedelta(days=1) + SECOND), created_at=NOW - timedelta(hours=1)
    )
    assert forced_relogin(check(policy, sess)).reason == "relogin_required"


@pytest.mark.parametrize(
    ("age", "over"),
    [
        (timedelta(days=30) - SECOND, False),
        (timedelta(days=30), True),
        (timedelta(days=30) + SECOND, True),
    ],
    ids=["one_second_before", "at_the_limit", "one_second_after"],
)
def test_absolute_lifetime_boundary(age, over):
    assert past_lifetime(session(age=age), NOW, timedelta(days=30)) is over


@pytest.mark.parametrize(
    "policy",
    [
        policies.WorkspacePolicy(),
        policies.WorkspacePolicy(idle_timeout_seconds=0, relogin_days=0),
    ],
    ids=["none", "zero"],
)
def test_time_limits_that_are_off_never_object(policy):
    ancient = session(age=timedelta(days=3650), idle=timedelta(days=3650))
    assert policies.evaluate(check(policy, ancient)) is None


@pytest.mark.parametrize(
    "policy",
    [
        policies.WorkspacePolicy(idle_timeout_seconds=60),
        policies.WorkspacePolicy(relogin_days=1),
    ],
    ids=["idle", "relogin"],
)
def test_time_limits_do_not_apply_to_the_session_being_issued(policy):
    """At sign-in the session facts are those of the new session; a stale
    value there must not refuse a fresh sign-in."""
    old = session(age=timedelta(days=5), idle=timedelta(days=5))
    assert policies.evaluate(check(policy, old, stage="sign_in")) is None


# --- IP allow-list -----------------------------------------------------------

ALLOW = networks("203.0.113.0/25", "2001:db8:1::/48", "198.51.100.7/32")


@pytest.mark.parametrize(
    ("client_ip", "expected"),
    [
        ("203.0.113.0", None),
        ("203.0.113.9", None),
        ("203.0.113.127", None),
        ("203.0.113.128", "ip_not_allowed"),
        ("203.0.113.200", "ip_not_allowed"),
        ("198.51.100.7", None),
        ("198.51.100.8", "ip_not_allowed"),
        ("2001:db8:1::1", None),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db8:2::1", "ip_not_allowed"),
        ("::ffff:203.0.113.9", None),
        ("::ffff:203.0.113.200", "ip_not_allowed"),
        ("::203.0.113.9", "ip_not_allowed"),
        ("10.0.0.5", "ip_not_allowed"),
    ],
    ids=[
        "v4_first",
        "v4_inside",
        "v4_last",
        "v4_just_past",
        "v4_outside",
        "v4_single_host",
        "v4_next_host",
        "v6_inside",
        "v6_last",
        "v6_outside",
        "v4_mapped_inside",
        "v4_mapped_outside",
        "v4_compatible_is_not_mapped",
        "private",
    ],
)
def test_ip_allowlist_ranges(client_ip, expected):
    policy = policies.WorkspacePolicy(ip_allowlist=ALLOW)
    decision = ip_allowlist(check(policy, client_ip=client_ip))
    assert (decision and decision.reason) == expected
    if decision:
        assert decision.outcome is DENY


@pytest.mark.parametrize(
    "client_ip",
    [
        None,
        "",
        "a",
        "999.1.1.1",
        "203.0.113",
        "203.0.113.9 ",
        "[2001:db8:1::1]",
        "fe80::1%eth0",
        "203.0.113.9, 10.0.0.5",
        "unknown",
    ],
    ids=[
        "none",
        "empty",
        "letter",
        "bad_octet",
        "three_octets",
        "trailing_space",
        "brackets",
        "zone_index",
        "a_list",
        "word",
    ],
)
def test_ip_allowlist_denies_an_unknown_client_and_never_skips(client_ip):
    policy = policies.WorkspacePolicy(ip_allowlist=ALLOW)
    decision = ip_allowlist(check(policy, client_ip=client_ip))
    assert decision == policies.Decision.deny("ip_unknown")


@pytest.mark.parametrize(
    ("client_ip", "reason"),
    [
        ("203.0.113.9", "ip_not_allowed"),
        ("::1", "ip_not_allowed"),
        (None, "ip_unknown"),
    ],
    ids=["v4", "v6", "unknown"],
)
def test_ip_restriction_on_with_an_empty_list_lets_nobody_through(client_ip, reason):
    policy = policies.WorkspacePolicy(ip_allowlist=())
    assert ip_allowlist(check(policy, client_ip=client_ip)).reason == reason


@pytest.mark.parametrize("client_ip", [None, "a", "203.0.113.200"], ids=str)
def test_ip_restriction_off_lets_every_address_through(client_ip):
    policy = policies.WorkspacePolicy(ip_allowlist=None)
    assert ip_allowlist(check(policy, client_ip=client_ip)) is None


@pytest.mark.parametrize(
    ("entry", "client_ip", "allowed"),
    [
        ("::ffff:203.0.113.0/121", "203.0.113.9", True),
        ("::ffff:203.0.113.0/121", "203.0.113.200", False),
        ("::ffff:203.0.113.9", "203.0.113.9", True),
        ("::ffff:203.0.113.9", "::ffff:203.0.113.9", True),
        ("::/0", "203.0.113.9", False),
        ("0.0.0.0/0", "2001:db8::1", False),
    ],
    ids=[
        "mapped_range",
        "mapped_range_outside",
        "mapped_host",
        "mapped_both",
        "all_v6_is_not_v4",
        "all_v4_is_not_v6",
    ],
)
def test_ip_allowlist_entries_written_as_mapped_ipv6_compare_as_ipv4(
    entry, client_ip, allowed
):
    assert policies.ip_allowed(client_ip, networks(entry)) is allowed


# --- MFA enforcement -------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "has_mfa", "via_sso", "expected"),
    [
        ("off", False, False, None),
        ("off", True, False, None),
        ("force", True, False, (policies.Outcome.REQUIRE_MFA, "mfa_required")),
        (
            "force",
            False,
            False,
            (policies.Outcome.ENROLL_MFA, "mfa_enrollment_required"),
        ),
        (
            "force",
            False,
            True,
            (policies.Outcome.ENROLL_MFA, "mfa_enrollment_required"),
        ),
        (
            "force_except_sso",
            True,
            False,
            (policies.Outcome.REQUIRE_MFA, "mfa_required"),
        ),
        (
            "force_except_sso",
            False,
            False,
            (policies.Outcome.ENROLL_MFA, "mfa_enrollment_required"),
        ),
        ("force_except_sso", False, True, None),
        ("force_except_sso", True, True, None),
    ],
    ids=[
        "off",
        "off_with_factor",
        "force_with_factor",
        "force_without_factor",
        "force_sso_is_not_exempt",
        "except_sso_password_with_factor",
        "except_sso_password_without_factor",
        "except_sso_sso_session",
        "except_sso_sso_session_with_factor",
    ],
)
def test_mfa_at_sign_in(mode, has_mfa, via_sso, expected):
    ctx = check(
        policies.WorkspacePolicy(mfa_mode=mode),
        session(via_sso=via_sso),
        user=member(has_mfa=has_mfa),
        stage="sign_in",
    )
    decision = mfa_enforcement(ctx)
    assert (decision and (decision.outcome, decision.reason)) == (expected or None)


@pytest.mark.parametrize(
    "amr",
    [("hwk",), ("pwd", "mfa"), ("pwd", "otp"), ("swk", "user")],
    ids=["passkey_hwk", "mfa", "otp", "swk"],
)
@pytest.mark.parametrize("stage", ["sign_in", "check"])
@pytest.mark.parametrize("mode", ["force", "force_except_sso"])
def test_methods_without_an_mfa_time_never_satisfy_forced_mfa(amr, stage, mode):
    # Only the sign-in that checked the second factor sets the MFA time; a
    # method named in amr proves nothing by itself.
    ctx = check(
        policies.WorkspacePolicy(mfa_mode=mode),
        session(amr=amr),
        user=member(has_mfa=True),
        stage=stage,
    )
    decision = mfa_enforcement(ctx)
    assert decision is not None
    assert decision.reason == "mfa_required"


@pytest.mark.parametrize("stage", ["sign_in", "check"])
def test_a_completed_mfa_step_satisfies_forced_mfa(stage):
    ctx = check(
        policies.WorkspacePolicy(mfa_mode="force"),
        session(mfa=True),
        user=member(has_mfa=True),
        stage=stage,
    )
    assert mfa_enforcement(ctx) is None


@pytest.mark.parametrize(
    ("mode", "via_sso", "has_mfa", "expected"),
    [
        ("force", False, False, "mfa_required"),
        ("force", False, True, "mfa_required"),
        ("force", True, False, "mfa_required"),
        ("force_except_sso", False, False, "mfa_required"),
        ("force_except_sso", True, False, None),
        ("off", False, False, None),
    ],
    ids=[
        "force",
        "force_member_has_factor",
        "force_sso",
        "except_sso_password",
        "except_sso_sso",
        "off",
    ],
)
def test_mfa_at_check_sends_a_session_without_mfa_to_sign_in(
    mode, via_sso, has_mfa, expected
):
    """A session is never upgraded in place: without MFA it signs in again,
    even when the member has a factor."""
    ctx = check(
        policies.WorkspacePolicy(mfa_mode=mode),
        session(via_sso=via_sso),
        user=member(has_mfa=has_mfa),
    )
    decision = mfa_enforcement(ctx)
    assert (decision and decision.reason) == expected
    if decision:
        assert decision.outcome is REAUTH


# --- the runner's order ------------------------------------------------------

EVERYTHING_ON = policies.WorkspacePolicy(
    mfa_mode="force",
    idle_timeout_seconds=IDLE,
    relogin_days=RELOGIN_DAYS,
    ip_allowlist=networks("203.0.113.0/25"),
    max_sessions=1,
)
STALE = timedelta(days=RELOGIN_DAYS) + SECOND


@pytest.mark.parametrize(
    ("user", "client_ip", "sess", "expected"),
    [
        (member(status="disabled"), "203.0.113.200", session(), "account_disabled"),
        (member(status="invited"), None, session(), "account_not_active"),
        (member(), "203.0.113.200", session(idle=STALE, age=STALE), "ip_not_allowed"),
        (member(), None, session(idle=STALE, age=STALE), "ip_unknown"),
        (member(), "203.0.113.9", session(idle=STALE, age=STALE), "idle_timeout"),
        (member(), "203.0.113.9", session(age=STALE), "relogin_required"),
        (member(), "203.0.113.9", session(), "mfa_required"),
        (member(), "203.0.113.9", session(mfa=True), None),
    ],
    ids=[
        "account_before_ip",
        "account_before_unknown_ip",
        "ip_before_time_limits",
        "unknown_ip_before_time_limits",
        "idle_before_relogin_and_mfa",
        "relogin_before_mfa",
        "mfa_last",
        "all_satisfied",
    ],
)
def test_runner_order_at_check(user, client_ip, sess, expected):
    ctx = check(EVERYTHING_ON, sess, user=user, client_ip=client_ip)
    decision = policies.evaluate(ctx)
    assert (decision and decision.reason) == expected


def test_a_stale_session_under_forced_mfa_is_timed_out_not_sent_to_enrol():
    policy = policies.WorkspacePolicy(mfa_mode="force", idle_timeout_seconds=IDLE)
    idle = timedelta(seconds=IDLE) + SECOND
    decision = policies.evaluate(check(policy, session(idle=idle)))
    assert decision == policies.Decision.reauthenticate("idle_timeout")


def test_runner_at_sign_in_asks_for_mfa_only_after_account_and_ip():
    ctx = check(EVERYTHING_ON, user=member(), client_ip="203.0.113.9", stage="sign_in")
    assert policies.evaluate(ctx) == policies.Decision.enroll_mfa(
        "mfa_enrollment_required"
    )
    outside = replace(ctx, client_ip="203.0.113.200")
    assert policies.evaluate(outside) == policies.Decision.deny("ip_not_allowed")


def test_pipeline_holds_every_policy_in_the_documented_order():
    names = [p.__name__ for p in policies.PIPELINE]
    assert names == [
        "account_state",
        "ip_allowlist",
        "idle_timeout",
        "forced_relogin",
        "mfa_enforcement",
    ]
    assert [p.__name__ for p in policies.TIME_LIMITS] == [
        "idle_timeout",
        "forced_relogin",
    ]


def test_runner_stops_at_the_first_objection():
    calls = []

    def first(c):
        calls.append("first")
        return policies.Decision.deny("first_says_no")

    def second(c):
        calls.append("second")

    assert policies.evaluate(ctx("active"), (first, second)).reason == "first_says_no"
    assert calls == ["first"]


def test_runner_with_nothing_on_lets_an_active_member_through():
    assert policies.evaluate(check(policies.WorkspacePolicy())) is None


# --- max concurrent sessions -------------------------------------------------

OPEN = ("s1", "s2", "s3", "s4")


@pytest.mark.parametrize(
    ("limit", "open_count", "ended"),
    [
        (1, 0, ()),
        (1, 1, ("s1",)),
        (1, 2, ("s1", "s2")),
        (1, 3, ("s1", "s2", "s3")),
        (1, 4, ("s1", "s2", "s3", "s4")),
        (2, 0, ()),
        (2, 1, ()),
        (2, 2, ("s1",)),
        (2, 3, ("s1", "s2")),
        (2, 4, ("s1", "s2", "s3")),
        (3, 0, ()),
        (3, 1, ()),
        (3, 2, ()),
        (3, 3, ("s1",)),
        (3, 4, ("s1", "s2")),
    ],
    ids=[f"limit_{limit}_open_{n}" for limit in (1, 2, 3) for n in range(5)],
)
def test_sessions_to_end_makes_room_by_ending_the_oldest(limit, open_count, ended):
    ctx = policies.PolicyContext(
        now=NOW,
        user=member(),
        stage="sign_in",
        policy=policies.WorkspacePolicy(max_sessions=limit),
        open_sessions=OPEN[:open_count],
    )
    assert policies.sessions_to_end(ctx) == ended


@pytest.mark.parametrize("limit", [None, 0], ids=["off", "zero"])
def test_sessions_to_end_with_no_limit_ends_nothing(limit):
    ctx = policies.PolicyContext(
        now=NOW,
        user=member(),
        stage="sign_in",
        policy=policies.WorkspacePolicy(max_sessions=limit),
        open_sessions=OPEN,
    )
    assert policies.sessions_to_end(ctx) == ()


def test_sessions_to_end_never_acts_on_a_check():
    ctx = policies.PolicyContext(
        now=NOW,
        user=member(),
        stage="check",
        policy=policies.WorkspacePolicy(max_sessions=1),
        open_sessions=OPEN,
    )
    assert policies.sessions_to_end(ctx) == ()


def test_the_session_limit_never_refuses_a_sign_in():
    ctx = policies.PolicyContext(
        now=NOW,
        user=member(),
        stage="sign_in",
        policy=policies.WorkspacePolicy(max_sessions=1),
        open_sessions=OPEN,
    )
    assert policies.evaluate(ctx) is None


# --- purity -------------------------------------------------------------------


def test_policies_package_imports_nothing_from_idp_or_flask():
    code = (
        "import policies, sys; "
        "bad=[m for m in sys.modules "
        "if m.split('.')[0] in ('idp','flask','sqlalchemy','werkzeug')]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

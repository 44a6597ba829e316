"""The Audit logs tab's one-line reading of an event's details, and the
action filter's list, which must name every action the code records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from idp.services.audit_query import ACTIONS
from idp.services.audit_text import summary

IDP = Path(__file__).resolve().parents[2] / "idp"


@pytest.mark.parametrize(
    ("action", "details", "expected"),
    [
        ("security.idle_timeout", {"old": None, "new": 1800}, "off → 30 minutes"),
        ("security.idle_timeout", {"old": 3600, "new": 172800}, "1 hour → 2 days"),
        ("security.idle_timeout", {"old": 90, "new": None}, "90 seconds → off"),
        ("security.relogin_days", {"old": 1, "new": 30}, "1 day → 30 days"),
        ("security.max_sessions", {"old": None, "new": 1}, "off → 1 session"),
        ("security.mfa_mode", {"old": "off", "new": "force"}, "Don't force → Force"),
        ("security.ip_restriction", {"old": False, "new": True}, "off → on"),
        (
            "security.ip_entry_added",
            {"old": None, "new": {"network": "10.0.0.0/8", "description": ""}},
            "added 10.0.0.0/8",
        ),
        (
            "security.domain_entry_removed",
            {"old": {"domain": "a.test", "include_subdomains": True}, "new": None},
            "removed a.test and its subdomains",
        ),
        ("user.change_role", {"old": "read_only", "new": "admin"}, "read_only → admin"),
        (
            "session.limit_reached",
            {"sessions_ended": 1, "limit": 2},
            "sessions ended: 1, limit: 2",
        ),
        ("session.end", {"session": "9d0c"}, ""),
        ("signin.success", {"amr": ["pwd"]}, "amr: pwd"),
        ("signin.success", {}, ""),
        ("signin.success", None, ""),
    ],
)
def test_summary(action, details, expected):
    assert summary(action, details) == expected


def test_a_long_value_is_cut():
    text = summary("request.refused", {"path": "/" + "a" * 1000})
    assert len(text) == 300
    assert text.endswith("…")


# Strings shaped like actions that are something else: a permission name
# checked before an action, and a settings key.
NOT_RECORDED = {"security.view", "gateway.routes"}
PREFIXES = (
    "signin|session|password|user|invitation|profile|email|authz|workspace"
    "|request|security|access|gateway"
)


def test_the_action_filter_lists_every_recorded_action():
    found = set()
    for path in IDP.rglob("*.py"):
        found |= set(re.findall(rf'"((?:{PREFIXES})\.[a-z_]+)"', path.read_text()))
    assert found - NOT_RECORDED <= set(ACTIONS)
    assert len(ACTIONS) == len(set(ACTIONS))

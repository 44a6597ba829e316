from datetime import UTC, datetime

import pytest

import policies
from policies.account_state import account_state

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ctx(status: str | None) -> policies.PolicyContext:
    user = (
        None
        if status is None
        else policies.UserFacts(id="u1", role="admin", status=status)
    )
    return policies.PolicyContext(now=NOW, user=user)


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


def test_runner_stops_at_the_first_objection():
    calls = []

    def first(c):
        calls.append("first")
        return policies.Decision.deny("first_says_no")

    def second(c):
        calls.append("second")

    assert policies.evaluate(ctx("active"), (first, second)).reason == "first_says_no"
    assert calls == ["first"]


def test_policies_package_imports_nothing_from_idp_or_flask():
    import subprocess
    import sys

    code = "import policies, sys; bad=[m for m in sys.modules if m.split('.')[0] in ('idp','flask','sqlalchemy')]; print(bad)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

"""An audit event's details as one line a person reads on the Audit logs
tab: "1 hour → 2 hours", "added 203.0.113.0/24 (Office)". The full details
stay in the CSV download."""

from __future__ import annotations

from typing import Any

MFA_MODES = {
    "off": "Don't force",
    "force": "Force",
    "force_except_sso": "Force except enterprise SSO",
}
# Internal ids that say nothing to a reader of the tab.
HIDDEN_KEYS = frozenset({"entry", "session"})
MAX_LENGTH = 300


def summary(action: str, details: dict[str, Any] | None) -> str:
    """The details of one event, for the tab; empty when there are none."""
    if not details:
        return ""
    if "old" in details and "new" in details:
        old, new = details["old"], details["new"]
        if old is None and isinstance(new, dict):
            text = "added " + _entry(new)
        elif new is None and isinstance(old, dict):
            text = "removed " + _entry(old)
        else:
            text = f"{_value(action, old)} → {_value(action, new)}"
    else:
        text = ", ".join(
            f"{key.replace('_', ' ')}: {_plain(value)}"
            for key, value in details.items()
            if key not in HIDDEN_KEYS
        )
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"


def _value(action: str, value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    if action == "security.mfa_mode":
        return MFA_MODES.get(str(value), str(value))
    if action == "security.idle_timeout" and isinstance(value, int):
        return duration(value)
    if action == "security.relogin_days" and isinstance(value, int):
        return _count(value, "day")
    if action == "security.max_sessions" and isinstance(value, int):
        return _count(value, "session")
    return _plain(value)


def _entry(entry: dict[str, Any]) -> str:
    """An allow-list entry: its address or domain, and what qualifies it."""
    if "network" in entry:
        note = entry.get("description")
        return f"{entry['network']} ({note})" if note else str(entry["network"])
    if "domain" in entry:
        suffix = " and its subdomains" if entry.get("include_subdomains") else ""
        return f"{entry['domain']}{suffix}"
    return _plain(entry)


def duration(seconds: int) -> str:
    """Whole days, hours or minutes, as the Security tab lets them be set."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return _count(seconds // size, unit)
    return _count(seconds, "second")


def _count(number: int, unit: str) -> str:
    return f"{number} {unit}" + ("" if number == 1 else "s")


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        # Codes read best as "pwd otp"; names need commas between them.
        return (", " if any(" " in item for item in items) else " ").join(items)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    return str(value)

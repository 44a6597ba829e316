"""Changes to a workspace's security policy: one function per action of the
Security tab. Each is admin-only, validates before it writes, and records
the old and the new value in the audit log."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

import policies
from idp.clock import now
from idp.db import db
from idp.models import DomainAllowEntry, IpAllowEntry, SecurityPolicy, Workspace
from idp.security import InvalidEmail, email_domain, parse_email
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Conflict, InvalidInput, NotFound
from idp.services.permissions import require_admin

MFA_MODES = ("off", "force", "force_except_sso")
MFA_LABELS = {
    "off": "Don't force",
    "force": "Force",
    "force_except_sso": "Force except enterprise SSO",
}
UNITS = {"minutes": 60, "hours": 3600, "days": 86400}
MIN_IDLE_SECONDS = 5 * 60
MAX_IDLE_SECONDS = 30 * 86400
MAX_SESSIONS = (1, 100)
RELOGIN_DAYS = (1, 365)
# Each request that the allow-list guards walks the whole list, and the
# Security tab shows it on one page: a bound keeps both cheap.
MAX_IP_ENTRIES = 500
MAX_DOMAIN_ENTRIES = 500
DESCRIPTION_MAX = 200
# Longer than any address with a prefix ("ffff:...:ffff/128" is 43).
NETWORK_INPUT_MAX = 64
DOMAIN_MAX = 253

_DIGITS = re.compile(r"[0-9]{1,9}")
# Digits, hex letters, dots, colons and one slash: no zone ids ("%eth0"),
# brackets, spaces or Unicode digits, which ipaddress would otherwise parse.
_NETWORK_CHARS = re.compile(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NOT_A_NETWORK = (
    "That is not an IP address or range. Enter one such as 203.0.113.7, "
    "203.0.113.0/24 or 2001:db8::/48."
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Duration:
    """A stored number of seconds as the form shows it."""

    amount: int
    unit: str


def as_duration(seconds: int) -> Duration:
    """The largest unit that divides ``seconds`` exactly."""
    for unit in ("days", "hours", "minutes"):
        if seconds % UNITS[unit] == 0:
            return Duration(seconds // UNITS[unit], unit)
    return Duration(max(1, seconds // 60), "minutes")


def current_policy(workspace: Workspace) -> SecurityPolicy:
    """The workspace's settings as stored, or the defaults when it has none."""
    row = db.session.get(SecurityPolicy, workspace.id)
    if row is None:
        return _default_policy(workspace.id)
    return row


def ip_entries(workspace: Workspace) -> list[IpAllowEntry]:
    """The IP allow-list, IPv4 before IPv6, in address order."""
    rows = db.session.scalars(
        sa.select(IpAllowEntry).where(IpAllowEntry.workspace_id == workspace.id)
    )
    return sorted(rows, key=lambda row: _sort_key(row.network))


def domain_entries(workspace: Workspace) -> list[DomainAllowEntry]:
    return list(
        db.session.scalars(
            sa.select(DomainAllowEntry)
            .where(DomainAllowEntry.workspace_id == workspace.id)
            .order_by(DomainAllowEntry.domain)
        )
    )


def client_allowed(entries: list[IpAllowEntry], client_ip: str | None) -> bool:
    """Whether this address is on the given allow-list entries."""
    return policies.ip_allowed(client_ip, _networks(entries))


# --- Force MFA and the session limits ---------------------------------------


def set_mfa_mode(ctx: Context, workspace: Workspace, mode: str) -> str:
    """*Don't force*, *Force* or *Force except enterprise SSO*."""
    require_admin(ctx, workspace.id, "security.mfa_mode")
    if mode not in MFA_MODES:
        raise InvalidInput(
            "Choose Don't force, Force or Force except enterprise SSO.",
            code="invalid_mfa_mode",
        )
    return _store(ctx, workspace, "security.mfa_mode", "mfa_mode", mode)


def set_idle_timeout(
    ctx: Context,
    workspace: Workspace,
    *,
    enabled: bool,
    amount: int | str | None = None,
    unit: str = "minutes",
) -> int | None:
    """*Idle session timeout*: off, or 5 minutes to 30 days, stored in
    seconds."""
    require_admin(ctx, workspace.id, "security.idle_timeout")
    seconds = None
    if enabled:
        if unit not in UNITS:
            raise InvalidInput(
                "Choose minutes, hours or days for the idle session timeout.",
                code="invalid_unit",
            )
        seconds = _whole_number(amount, "the idle session timeout") * UNITS[unit]
        if not MIN_IDLE_SECONDS <= seconds <= MAX_IDLE_SECONDS:
            raise InvalidInput(
                "The idle session timeout must be at least 5 minutes and at "
                "most 30 days.",
                code="idle_timeout_out_of_range",
            )
    return _store(
        ctx, workspace, "security.idle_timeout", "idle_timeout_seconds", seconds
    )


def set_max_sessions(
    ctx: Context, workspace: Workspace, *, enabled: bool, limit: int | str | None
) -> int | None:
    """*Max concurrent sessions*: off, or 1 to 100 per member. Applies at
    each sign-in, which ends the member's oldest sessions past the limit."""
    require_admin(ctx, workspace.id, "security.max_sessions")
    value = None
    if enabled:
        value = _in_range(
            limit,
            MAX_SESSIONS,
            name="the maximum number of sessions",
            limit="Max concurrent sessions must be between {low} and {high}.",
        )
    return _store(ctx, workspace, "security.max_sessions", "max_sessions", value)


def set_relogin_days(
    ctx: Context, workspace: Workspace, *, enabled: bool, days: int | str | None
) -> int | None:
    """*Force re-login*: off, or every 1 to 365 days after sign-in."""
    require_admin(ctx, workspace.id, "security.relogin_days")
    value = None
    if enabled:
        value = _in_range(
            days,
            RELOGIN_DAYS,
            name="the number of days",
            limit="Force re-login takes between {low} and {high} days.",
        )
    return _store(ctx, workspace, "security.relogin_days", "relogin_days", value)


# --- IP restrictions ---------------------------------------------------------


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR range in canonical form: host bits cleared, an
    IPv4-mapped IPv6 range as its IPv4 range, a lone address as /32 or /128."""
    text = (text or "").strip()
    if not text:
        raise InvalidInput(
            "Enter an IP address or a range, such as 203.0.113.7 or 203.0.113.0/24.",
            code="missing_network",
        )
    if len(text) > NETWORK_INPUT_MAX or not _NETWORK_CHARS.fullmatch(text):
        raise InvalidInput(_NOT_A_NETWORK, code="invalid_network")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise InvalidInput(_NOT_A_NETWORK, code="invalid_network") from exc
    # Stored as the pipeline compares it: ::ffff:203.0.113.0/120 is
    # 203.0.113.0/24.
    return policies.canonical_network(network)


def set_ip_restriction(ctx: Context, workspace: Workspace, enabled: bool) -> bool:
    """Turn the IP allow-list on or off. Turning it on is refused when the
    admin's own address is not on the list: they would be shut out at once."""
    require_admin(ctx, workspace.id, "security.ip_restriction")
    row = _locked_policy(workspace)
    old = row.ip_restriction_enabled
    if old == enabled:
        return enabled
    if enabled:
        networks = _networks(ip_entries(workspace))
        _refuse_lockout(ctx, workspace, networks, "security.ip_restriction")
    row.ip_restriction_enabled = enabled
    _changed(ctx, workspace, row, "security.ip_restriction", old, enabled)
    return enabled


def add_ip_entry(
    ctx: Context, workspace: Workspace, network: str, description: str = ""
) -> IpAllowEntry:
    """Add an address or range to the allow-list."""
    require_admin(ctx, workspace.id, "security.ip_entry_added")
    parsed = parse_network(network)
    note = _description(description)
    row = _locked_policy(workspace)
    return _insert_ip(ctx, workspace, row, parsed, note)


def add_my_ip(
    ctx: Context, workspace: Workspace, description: str = ""
) -> IpAllowEntry:
    """*Add my IP*: the address the server sees for the admin, through
    trusted proxies only."""
    require_admin(ctx, workspace.id, "security.ip_entry_added")
    address = ctx.client.ip
    if not address:
        raise InvalidInput(
            "Portcullis cannot tell your network address, so it cannot add it. "
            "Enter your address or range by hand.",
            code="ip_unknown",
        )
    parsed = parse_network(address)
    note = _description(description) or f"Added by {ctx.label} with Add my IP"
    row = _locked_policy(workspace)
    for entry in ip_entries(workspace):
        if policies.ip_allowed(address, _networks([entry])):
            raise InvalidInput(
                f"Your address {address} is already allowed by {entry.network}.",
                code="ip_already_allowed",
            )
    return _insert_ip(ctx, workspace, row, parsed, note[:DESCRIPTION_MAX])


def remove_ip_entry(
    ctx: Context, workspace: Workspace, entry_id: uuid.UUID | str
) -> str:
    """Remove one entry; returns its network. While the restriction is on,
    removing the entry that lets the admin in is refused."""
    require_admin(ctx, workspace.id, "security.ip_entry_removed")
    row = _locked_policy(workspace)
    entry = _entry(
        IpAllowEntry, workspace, entry_id, "No such IP entry in this workspace."
    )
    if row.ip_restriction_enabled:
        rest = _networks(e for e in ip_entries(workspace) if e.id != entry.id)
        _refuse_lockout(ctx, workspace, rest, "security.ip_entry_removed")
    old = {"network": entry.network, "description": entry.description}
    db.session.delete(entry)
    _changed(
        ctx,
        workspace,
        row,
        "security.ip_entry_removed",
        old,
        None,
        entry=str(entry.id),
    )
    return entry.network


# --- Domain restrictions -----------------------------------------------------


def parse_domain(text: str) -> str:
    """An email domain in the form stored emails use: lower-case, IDNA
    (UTS 46) normalised, one trailing dot removed."""
    text = (text or "").strip()
    example = "Enter a domain such as example.com"
    if not text:
        raise InvalidInput(f"{example}.", code="missing_domain")
    if "://" in text:
        raise InvalidInput(f"{example}, without https://.", code="invalid_domain")
    if "@" in text:
        raise InvalidInput(
            f"{example}: the part after the @ of an email address, not the address.",
            code="invalid_domain",
        )
    if "/" in text:
        raise InvalidInput(f"{example}, without a path.", code="invalid_domain")
    if text.startswith("*"):
        raise InvalidInput(
            f"{example}, without *; tick Include subdomains to allow them.",
            code="invalid_domain",
        )
    if len(text) > DOMAIN_MAX + 1:
        raise InvalidInput("That domain is too long.", code="invalid_domain")
    try:
        # The same normalisation as every stored email address, so an entry
        # matches exactly the addresses it names (ACC-4).
        normal = parse_email(f"x@{text}")
    except InvalidEmail as exc:
        raise InvalidInput(
            f"{text[:100]} is not a valid email domain. {example}.",
            code="invalid_domain",
        ) from exc
    return email_domain(normal)


def set_domain_restriction(ctx: Context, workspace: Workspace, enabled: bool) -> bool:
    """Turn the email-domain allow-list on or off. Existing members are
    unaffected; invitations and joins outside the list are refused."""
    require_admin(ctx, workspace.id, "security.domain_restriction")
    row = _locked_policy(workspace)
    old = row.domain_restriction_enabled
    if old == enabled:
        return enabled
    if enabled and not _count(DomainAllowEntry, workspace):
        raise InvalidInput(
            "Add at least one approved domain before turning on Domain restrictions.",
            code="domain_list_empty",
        )
    row.domain_restriction_enabled = enabled
    _changed(ctx, workspace, row, "security.domain_restriction", old, enabled)
    return enabled


def add_domain(
    ctx: Context,
    workspace: Workspace,
    domain: str,
    include_subdomains: bool = False,
) -> DomainAllowEntry:
    """Approve an email domain (and, if asked, every domain under it)."""
    require_admin(ctx, workspace.id, "security.domain_entry_added")
    name = parse_domain(domain)
    row = _locked_policy(workspace)
    taken = db.session.scalar(
        sa.select(DomainAllowEntry.id).where(
            DomainAllowEntry.workspace_id == workspace.id,
            DomainAllowEntry.domain == name,
        )
    )
    if taken is not None:
        raise InvalidInput(f"{name} is already on the list.", code="duplicate_domain")
    if _count(DomainAllowEntry, workspace) >= MAX_DOMAIN_ENTRIES:
        raise InvalidInput(
            f"The list holds at most {MAX_DOMAIN_ENTRIES} domains.",
            code="too_many_domains",
        )
    entry = DomainAllowEntry(
        workspace_id=workspace.id, domain=name, include_subdomains=include_subdomains
    )
    db.session.add(entry)
    db.session.flush()
    _changed(
        ctx,
        workspace,
        row,
        "security.domain_entry_added",
        None,
        {"domain": name, "include_subdomains": include_subdomains},
        entry=str(entry.id),
    )
    return entry


def remove_domain(ctx: Context, workspace: Workspace, entry_id: uuid.UUID | str) -> str:
    """Remove one approved domain; returns it. The last one cannot go while
    the restriction is on, which would refuse every new member."""
    require_admin(ctx, workspace.id, "security.domain_entry_removed")
    row = _locked_policy(workspace)
    entry = _entry(
        DomainAllowEntry, workspace, entry_id, "No such domain in this workspace."
    )
    if row.domain_restriction_enabled and _count(DomainAllowEntry, workspace) <= 1:
        raise InvalidInput(
            "This is the last approved domain. Turn off Domain restrictions "
            "first, or add another domain.",
            code="domain_list_empty",
        )
    old = {"domain": entry.domain, "include_subdomains": entry.include_subdomains}
    db.session.delete(entry)
    _changed(
        ctx,
        workspace,
        row,
        "security.domain_entry_removed",
        old,
        None,
        entry=str(entry.id),
    )
    return entry.domain


# --- helpers -----------------------------------------------------------------


def _default_policy(workspace_id: uuid.UUID) -> SecurityPolicy:
    return SecurityPolicy(
        workspace_id=workspace_id,
        mfa_mode="off",
        ip_restriction_enabled=False,
        domain_restriction_enabled=False,
    )


def _locked_policy(workspace: Workspace) -> SecurityPolicy:
    """The policy row, read after taking the workspace's write lock.

    Two admins editing at once are serialised, so a lock-out check, a
    duplicate check or the list cap always sees the other's committed
    change. A no-op write rather than SELECT FOR UPDATE: on SQLite only a
    write takes the lock.
    """
    db.session.execute(
        sa.update(Workspace)
        .where(Workspace.id == workspace.id)
        .values(name=Workspace.name)
    )
    row = db.session.get(SecurityPolicy, workspace.id, populate_existing=True)
    if row is None:
        row = _default_policy(workspace.id)
        db.session.add(row)
        db.session.flush()
    return row


def _changed(
    ctx: Context,
    workspace: Workspace,
    row: SecurityPolicy,
    action: str,
    old: Any,
    new: Any,
    **extra: str,
) -> None:
    row.updated_at = now()
    audit.record(
        ctx,
        action,
        workspace_id=workspace.id,
        target=workspace,
        details={"old": old, "new": new, **extra},
    )
    db.session.commit()


def _store(
    ctx: Context, workspace: Workspace, action: str, column: str, value: Any
) -> Any:
    """Write one setting of the policy row and audit it, if it changed."""
    row = _locked_policy(workspace)
    old = getattr(row, column)
    if old != value:
        setattr(row, column, value)
        _changed(ctx, workspace, row, action, old, value)
    return value


def _in_range(
    value: int | str | None, bounds: tuple[int, int], *, name: str, limit: str
) -> int:
    low, high = bounds
    number = _whole_number(value, name)
    if not low <= number <= high:
        raise InvalidInput(limit.format(low=low, high=high), code="out_of_range")
    return number


def _whole_number(value: int | str | None, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"Enter {what} as a whole number.", code="invalid_number")
    if isinstance(value, int):
        return value
    text = (value or "").strip()
    if not text:
        raise InvalidInput(f"Enter {what}.", code="missing_number")
    if not _DIGITS.fullmatch(text):
        raise InvalidInput(
            f"Enter {what} as a whole number, such as 30.", code="invalid_number"
        )
    return int(text)


def _description(text: str) -> str:
    text = " ".join((text or "").split())
    if _CONTROL.search(text):
        raise InvalidInput(
            "The description cannot contain control characters.",
            code="invalid_description",
        )
    if len(text) > DESCRIPTION_MAX:
        raise InvalidInput(
            f"The description can be at most {DESCRIPTION_MAX} characters.",
            code="description_too_long",
        )
    return text


def _network(text: str) -> IPNetwork | None:
    """A stored entry's range, or None for one that no longer parses
    (written by hand, or by an older version). As in the pipeline, such an
    entry lets nobody in; it stays listed so that an admin can remove it,
    and never turns the tab into an error page."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _networks(entries: Iterable[IpAllowEntry]) -> tuple[IPNetwork, ...]:
    """The ranges of the entries that parse."""
    return tuple(
        network for e in entries if (network := _network(e.network)) is not None
    )


def _sort_key(text: str) -> tuple[int, int, int]:
    network = _network(text)
    if network is None:
        return (7, 0, 0)  # after IPv4 and IPv6
    return (network.version, int(network.network_address), network.prefixlen)


def _count(model: type[IpAllowEntry | DomainAllowEntry], ws: Workspace) -> int:
    return (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(model)
            .where(model.workspace_id == ws.id)
        )
        or 0
    )


def _entry(
    model: type[IpAllowEntry | DomainAllowEntry],
    workspace: Workspace,
    entry_id: uuid.UUID | str,
    missing: str,
) -> Any:
    """An entry of this workspace by id; other workspaces' entries do not
    exist here (ASVS 8.2.2)."""
    try:
        eid = entry_id if isinstance(entry_id, uuid.UUID) else uuid.UUID(str(entry_id))
    except ValueError as exc:
        raise NotFound(missing) from exc
    entry = db.session.scalar(
        sa.select(model).where(model.id == eid, model.workspace_id == workspace.id)
    )
    if entry is None:
        raise NotFound(missing)
    return entry


def _insert_ip(
    ctx: Context,
    workspace: Workspace,
    row: SecurityPolicy,
    network: IPNetwork,
    description: str,
) -> IpAllowEntry:
    existing = ip_entries(workspace)
    for entry in existing:
        if _network(entry.network) == network:
            raise InvalidInput(
                f"{network} is already on the list.", code="duplicate_network"
            )
    if len(existing) >= MAX_IP_ENTRIES:
        raise InvalidInput(
            f"The list holds at most {MAX_IP_ENTRIES} addresses and ranges.",
            code="too_many_networks",
        )
    entry = IpAllowEntry(
        workspace_id=workspace.id, network=str(network), description=description
    )
    db.session.add(entry)
    db.session.flush()
    _changed(
        ctx,
        workspace,
        row,
        "security.ip_entry_added",
        None,
        {"network": entry.network, "description": description},
        entry=str(entry.id),
    )
    return entry


def _refuse_lockout(
    ctx: Context,
    workspace: Workspace,
    networks: tuple[IPNetwork, ...],
    action: str,
) -> None:
    """Refuse an allow-list that would not let in the admin saving it."""
    if ctx.actor_type == "operator":
        # The operator's CLI has no network address and is never refused.
        return
    client_ip = ctx.client.ip
    if policies.ip_allowed(client_ip, networks):
        return
    if client_ip:
        message = (
            f"Your address {client_ip} would not be on the list, so this change "
            "would lock you out at once. Add your address (Add my IP) or a range "
            "that includes it first."
        )
    else:
        message = (
            "Portcullis cannot tell your network address, and the list refuses "
            "unknown addresses, so this change would lock you out at once. "
            "Ask the operator to check the trusted proxies setting."
        )
    audit.record_now(
        ctx,
        action,
        workspace_id=workspace.id,
        outcome="denied",
        reason="would_lock_out",
        target=workspace,
        details={"client_ip": client_ip},
    )
    raise Conflict(message, code="would_lock_out", audited=True)

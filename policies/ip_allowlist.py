"""The workspace's IP allow-list. An address that cannot be known is never
on the list (GW-2: "client unknown" denies, it does not skip the policy)."""

from __future__ import annotations

import ipaddress

from policies.context import PolicyContext
from policies.decision import Decision


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # ::ffff:203.0.113.9 is 203.0.113.9 for every rule.
        return address.ipv4_mapped
    return address


def ip_allowed(client_ip: str | None, networks: tuple) -> bool:
    address = _address(client_ip)
    if address is None:
        return False
    return any(
        address.version == network.version and address in network
        for network in networks
    )


def ip_allowlist(ctx: PolicyContext) -> Decision | None:
    networks = ctx.policy.ip_allowlist
    if networks is None:
        return None
    if _address(ctx.client_ip) is None:
        return Decision.deny("ip_unknown")
    if not ip_allowed(ctx.client_ip, networks):
        return Decision.deny("ip_not_allowed")
    return None

"""The workspace's IP allow-list. An address that cannot be known is never
on the list (GW-2: "client unknown" denies, it does not skip the policy)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from policies.context import IPNetwork, PolicyContext
from policies.decision import Decision

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


# Every check asks about the same few clients; addresses are immutable.
@functools.lru_cache(maxsize=4096)
def canonical_address(text: str | None) -> IPAddress | None:
    """The address in the form every rule compares: IPv4-mapped IPv6 as
    IPv4; None when it does not parse or names a link (a zone index)."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # ::ffff:203.0.113.9 is 203.0.113.9 for every rule.
            return address.ipv4_mapped
        if address.scope_id:
            # A zone index names a link on the server's side; it says
            # nothing about who the client is.
            return None
    return address


def canonical_network(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 range in its IPv4 form, so that an entry written
    as ::ffff:203.0.113.0/120 covers 203.0.113.9 like 203.0.113.0/24 does
    (addresses are compared in their IPv4 form too)."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= _MAPPED.prefixlen
        and network.subnet_of(_MAPPED)
    ):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
    return network


def ip_allowed(client_ip: str | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address is inside one of the ranges; never for an
    address that does not parse."""
    address = canonical_address(client_ip)
    if address is None:
        return False
    for entry in networks:
        network = canonical_network(entry)
        if address.version == network.version and address in network:
            return True
    return False


def ip_allowlist(ctx: PolicyContext) -> Decision | None:
    """Deny a client outside the list; an empty list, once switched on,
    lets nobody through."""
    networks = ctx.policy.ip_allowlist
    if networks is None:
        return None
    if canonical_address(ctx.client_ip) is None:
        return Decision.deny("ip_unknown")
    if not ip_allowed(ctx.client_ip, networks):
        return Decision.deny("ip_not_allowed")
    return None

"""The client address: the socket peer, or the right-most untrusted hop of
X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from policies import canonical_address, canonical_network

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The ranges, an IPv4-mapped IPv6 one in its IPv4 form: addresses are
    compared as IPv4 (parse_address), so ::ffff:10.0.0.5 must name the
    proxy that connects as 10.0.0.5, whichever way the socket shows it."""
    return tuple(
        canonical_network(ipaddress.ip_network(entry, strict=False))
        for entry in entries
    )


@functools.lru_cache(maxsize=4096)
def parse_address(text: str | None) -> IPAddress | None:
    """An address in canonical form (IPv4-mapped IPv6 as IPv4), or None.
    Cached: every request parses its peer, and addresses are immutable."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    return canonical_address(text)


def is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    return address is not None and any(
        address.version == net.version and address in net for net in trusted
    )


def resolve_client(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str | None:
    """The client address as text, or None when it cannot be known.

    Forwarded headers are read only when the peer itself is trusted; then the
    hops are walked from the right, skipping trusted proxies, and the first
    untrusted one is the client. A hop that does not parse makes the client
    unknown rather than letting a forged value through.
    """
    peer_address = parse_address(peer)
    if not is_trusted(peer_address, trusted) or forwarded_for is None:
        return str(peer_address) if peer_address else None
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return None
        if not is_trusted(address, trusted):
            return str(address)
    # Every hop was one of our own proxies: the left-most is the client.
    first = parse_address(hops[0]) if hops else None
    return str(first) if first else None

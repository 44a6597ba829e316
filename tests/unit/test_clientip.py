"""resolve_client (GW-2): forwarded headers count only from a trusted peer;
the client is the right-most untrusted hop; anything unparseable is
unknown (None), never a pass."""

import ipaddress

import pytest

from idp.clientip import is_trusted, parse_address, parse_networks, resolve_client

PROXY = parse_networks(["10.0.0.5"])


@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        # (a) an untrusted peer's header is ignored
        ("203.0.113.200", "203.0.113.9", "203.0.113.200"),
        ("203.0.113.200", "10.0.0.5", "203.0.113.200"),
        # (b) through our proxy: the right-most untrusted hop
        ("10.0.0.5", "203.0.113.9, 203.0.113.200", "203.0.113.200"),
        ("10.0.0.5", "203.0.113.9,203.0.113.200", "203.0.113.200"),
        ("10.0.0.5", " 203.0.113.9 ", "203.0.113.9"),
        # (c) unparseable: unknown
        ("10.0.0.5", "a", None),
        ("10.0.0.5", "999.1.1.1", None),
        ("10.0.0.5", "", None),
        ("10.0.0.5", "203.0.113.9, ", None),
        ("10.0.0.5", "203.0.113.9, unknown", None),
        ("10.0.0.5", "203.0.113.9:443", None),
        ("10.0.0.5", "fe80::1%eth0", None),
        ("10.0.0.5", "203.0.113.9\x00", None),
        # a forged left part does not matter: the right-most hop decides
        ("10.0.0.5", "garbage, 203.0.113.200", "203.0.113.200"),
        # no header from the proxy: the proxy itself
        ("10.0.0.5", None, "10.0.0.5"),
        # IPv4-mapped IPv6 compares and answers as IPv4
        ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "::ffff:203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.200", "203.0.113.9", "203.0.113.200"),
        ("10.0.0.5", "203.0.113.9, ::ffff:10.0.0.5", "203.0.113.9"),
        # IPv6, with and without brackets
        ("10.0.0.5", "[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.5", "[2001:db8::1]:8443", "2001:db8::1"),
        ("10.0.0.5", "2001:DB8:0::1", "2001:db8::1"),
        ("2001:db8::7", "203.0.113.9", "2001:db8::7"),
        # no usable peer at all
        (None, "203.0.113.9", None),
        ("", None, None),
        ("not an address", "203.0.113.9", None),
    ],
)
def test_resolve_client(peer, forwarded, expected):
    assert resolve_client(peer, forwarded, PROXY) == expected


def test_a_chain_of_trusted_proxies_is_walked_from_the_right():
    trusted = parse_networks(["10.0.0.0/24", "2001:db8:ffff::/48"])
    assert (
        resolve_client("10.0.0.1", "198.51.100.7, 10.0.0.2, 10.0.0.3", trusted)
        == "198.51.100.7"
    )
    assert (
        resolve_client("2001:db8:ffff::1", "198.51.100.7, 2001:db8:ffff::2", trusted)
        == "198.51.100.7"
    )
    # Every hop one of ours: the left-most is the client.
    assert resolve_client("10.0.0.1", "10.0.0.9, 10.0.0.2", trusted) == "10.0.0.9"


def test_parse_address_canonical_forms():
    assert parse_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert parse_address("[::1]") == ipaddress.IPv6Address("::1")
    assert parse_address("  192.0.2.1 ") == ipaddress.IPv4Address("192.0.2.1")
    for text in (
        None,
        "",
        "[",
        "[]",
        "192.0.2",
        "192.0.2.1/32",
        "0x7f.1",
        "１２７.0.0.1",
    ):
        assert parse_address(text) is None, text


def test_is_trusted_never_trusts_unknown_or_the_other_family():
    trusted = parse_networks(["10.0.0.0/8"])
    assert not is_trusted(None, trusted)
    assert not is_trusted(ipaddress.IPv6Address("::a00:5"), trusted)
    assert is_trusted(parse_address("::ffff:10.1.2.3"), trusted)
    assert not is_trusted(parse_address("10.0.0.5"), ())

"""Fetching what an IdP publishes (SAML metadata, OIDC discovery, JWKS) and
posting to its token endpoint, with the URL rules of SECURITY.md (1.3.6).

The host is resolved once, every address it resolves to is checked, and the
connection goes to the checked address (TLS still verifies the host name),
so a name that resolves to a public address at the check and to a loopback
one at the connect (DNS rebinding) reaches nothing. Redirects are not
followed; answers are read up to a size limit.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """The URL was refused or the IdP could not be reached; ``str`` is fit
    to show the admin."""


@dataclass(frozen=True)
class FetchRules:
    timeout_seconds: float = 5
    max_bytes: int = 1024 * 1024
    # Loopback, link-local, private and other non-public addresses.
    allow_private: bool = False
    # Plain http (only with allow_private: an IdP on the operator's network
    # or a test server; a public IdP is reached over https).
    allow_http: bool = False


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"{host} could not be resolved") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# IPv6 ranges whose last 32 bits are an IPv4 address they reach (IPv4-
# compatible, SIIT-translated, NAT64's well-known prefix): Python counts
# them global whatever the IPv4 address, so 64:ff9b::a9fe:a9fe would pass
# for public and a NAT64 gateway would take it to 169.254.169.254.
_IPV4_INSIDE = tuple(
    ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# The local-use NAT64 prefix puts the IPv4 address where the operator chose.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif any(ip in network for network in _IPV4_INSIDE):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def check_url(url: str, rules: FetchRules) -> tuple[str, str, int]:
    """Scheme, host and port of an acceptable URL, or FetchError."""
    if len(url) > 2048:
        raise FetchError("The URL is too long.")
    # urlsplit drops tabs and newlines before it parses, so they would pass
    # here and then end up in a Location header (a 500 at every sign-in).
    if any(c.isspace() or not c.isprintable() for c in url):
        raise FetchError("The URL must not hold spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("The URL is not valid.") from exc
    allowed = ("https", "http") if rules.allow_http else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        if parts.scheme == "http" and parts.hostname:
            raise FetchError(
                "The URL must start with https://. Plain http is allowed only to "
                "an IdP on a private address, which the operator allows with "
                "sso.allow_private_urls."
            )
        raise FetchError("The URL must start with https:// and name a host.")
    if parts.username or parts.password:
        raise FetchError("The URL must not carry a user name or password.")
    return (
        parts.scheme,
        parts.hostname,
        port or (443 if parts.scheme == "https" else 80),
    )


def _address(host: str, port: int, rules: FetchRules, resolve: Resolver) -> str:
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolve(host, port)
    if not addresses:
        raise FetchError(f"{host} could not be resolved")
    if not rules.allow_private:
        for address in addresses:
            if not is_public(address):
                raise FetchError(
                    f"{host} resolves to a loopback, link-local or private "
                    "address, which the operator has not allowed "
                    "(sso.allow_private_urls)."
                )
    return addresses[0]


def _request(
    method: str,
    url: str,
    rules: FetchRules,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    resolve: Resolver = system_resolver,
) -> tuple[int, bytes]:
    scheme, host, port = check_url(url, rules)
    address = _address(host, port, rules, resolve)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timeout = urllib3.Timeout(total=rules.timeout_seconds)
    if scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    sent = {"Host": host if parts.port is None else f"{host}:{port}"}
    sent.update(headers or {})
    try:
        with pool:
            response = pool.urlopen(
                method,
                target,
                body=body,
                headers=sent,
                redirect=False,
                preload_content=False,
            )
            data = response.read(rules.max_bytes + 1, decode_content=True)
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(
            f"{host} could not be reached ({type(exc).__name__})."
        ) from exc
    if len(data) > rules.max_bytes:
        raise FetchError(
            f"The answer from {host} is larger than {rules.max_bytes} bytes."
        )
    return response.status, data


def get(url: str, rules: FetchRules, *, resolve: Resolver = system_resolver) -> bytes:
    status, data = _request(
        "GET", url, rules, headers={"Accept": "*/*"}, resolve=resolve
    )
    if status != 200:
        raise FetchError(f"{urlsplit(url).hostname} answered {status}.")
    return data


def get_json(
    url: str, rules: FetchRules, *, resolve: Resolver = system_resolver
) -> dict[str, Any]:
    try:
        value = json.loads(get(url, rules, resolve=resolve))
    except ValueError as exc:
        raise FetchError(f"{urlsplit(url).hostname} did not answer with JSON.") from exc
    if not isinstance(value, dict):
        raise FetchError(f"{urlsplit(url).hostname} did not answer with a JSON object.")
    return value


def post_form(
    url: str,
    fields: Mapping[str, str],
    rules: FetchRules,
    *,
    headers: Mapping[str, str] | None = None,
    resolve: Resolver = system_resolver,
) -> tuple[int, dict[str, Any]]:
    """POST a form (a token request); the status and the JSON answer."""
    sent = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    sent.update(headers or {})
    status, data = _request(
        "POST",
        url,
        rules,
        body=urlencode(fields).encode(),
        headers=sent,
        resolve=resolve,
    )
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise FetchError(
            f"{urlsplit(url).hostname} did not answer with JSON (status {status})."
        ) from exc
    if not isinstance(value, dict):
        raise FetchError(f"{urlsplit(url).hostname} did not answer with a JSON object.")
    return status, value

"""What an IdP publishes is fetched under SECURITY.md 1.3.6: https to public
addresses only (unless the operator allows private ones), the address
checked is the address connected to, no redirects, bounded size and time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from connectors.fetch import (
    FetchError,
    FetchRules,
    check_url,
    get,
    get_json,
    is_public,
    post_form,
)

LOCAL = FetchRules(
    timeout_seconds=2, max_bytes=1000, allow_private=True, allow_http=True
)
PUBLIC_ONLY = FetchRules(timeout_seconds=2, max_bytes=1000)


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str, bytes]]] = []

    def log_message(self, *args):  # type: ignore[no-untyped-def]
        pass

    def _answer(self, body: bytes) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/big":
            body = b"x" * 5000
        elif self.path == "/text":
            body = b"not json"
        else:
            body = json.dumps(
                {"issuer": "https://idp.example", "echo": body.decode()}
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        Handler.seen.append(("GET", self.path, self.headers.get("Host", ""), b""))
        self._answer(b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.seen.append(("POST", self.path, self.headers.get("Host", ""), body))
        self._answer(body)


@pytest.fixture
def server() -> Iterator[int]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def resolving(*addresses: str):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return list(addresses)

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/metadata",
        "ftp://idp.example/metadata",
        "https://user:pass@idp.example/metadata",
        "https:///metadata",
        "https://idp.example:99999/",
        "javascript:alert(1)",
        "https://idp.example/" + "a" * 3000,
        # urlsplit drops these before parsing; a Location header cannot.
        "https://idp.example/sso\r\nSet-Cookie: x=1",
        "https://idp.example/s\tso",
        "https://idp.example/a b",
        "https://idp.example/\x00",
    ],
)
def test_only_plain_https_urls_are_accepted(url):
    with pytest.raises(FetchError):
        check_url(url, PUBLIC_ONLY)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "172.16.5.4",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        # IPv4 inside IPv6, which Python counts global: NAT64 (well-known
        # and local-use prefixes), 6to4, IPv4-compatible, SIIT-translated.
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:1",
        "2002:a9fe:a9fe::1",
        "::a9fe:a9fe",
        "::ffff:0:a00:1",
    ],
)
def test_non_public_addresses_are_refused(address):
    resolve = resolving(address)
    with pytest.raises(FetchError, match="sso.allow_private_urls"):
        get("https://idp.example/metadata", PUBLIC_ONLY, resolve=resolve)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "169.254.169.254"])
def test_literal_private_addresses_are_refused(host):
    with pytest.raises(FetchError, match="sso.allow_private_urls"):
        get(f"https://{host}/metadata", PUBLIC_ONLY, resolve=resolving("192.0.2.1"))


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_stay_public_inside_ipv6(address):
    assert is_public(address)


def test_one_private_address_among_public_ones_is_refused():
    with pytest.raises(FetchError):
        get(
            "https://idp.example/x",
            PUBLIC_ONLY,
            resolve=resolving("93.184.216.34", "127.0.0.1"),
        )


def test_the_address_checked_is_the_address_connected_to(server):
    # Resolved once; the connection goes to that address, with the name in
    # the Host header, so a second (rebound) answer is never asked for.
    resolve = resolving("127.0.0.1")
    data = get_json(f"http://idp.test:{server}/discovery", LOCAL, resolve=resolve)
    assert data["issuer"] == "https://idp.example"
    assert resolve.calls == ["idp.test"]  # type: ignore[attr-defined]
    assert Handler.seen[0][:3] == ("GET", "/discovery", f"idp.test:{server}")


def test_redirects_are_not_followed(server):
    with pytest.raises(FetchError, match="302"):
        get(f"http://127.0.0.1:{server}/redirect", LOCAL)
    assert [s[1] for s in Handler.seen] == ["/redirect"]


def test_answers_are_bounded_in_size_and_time(server):
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        get(f"http://127.0.0.1:{server}/big", LOCAL)
    with pytest.raises(FetchError, match="could not be reached"):
        get(f"http://127.0.0.1:{server}/slow", FetchRules(0.5, 1000, True, True))


def test_json_answers_must_be_objects(server):
    with pytest.raises(FetchError, match="JSON"):
        get_json(f"http://127.0.0.1:{server}/text", LOCAL)


def test_unreachable_host_is_a_clean_error():
    with pytest.raises(FetchError):
        get("http://127.0.0.1:9/none", LOCAL)
    with pytest.raises(FetchError, match="could not be resolved"):
        get("https://no-such-host.invalid/x", PUBLIC_ONLY)


def test_post_form_sends_a_form_and_reads_json(server):
    status, answer = post_form(
        f"http://127.0.0.1:{server}/token",
        {"grant_type": "authorization_code", "code": "a b&c"},
        LOCAL,
    )
    assert status == 200
    assert answer["echo"] == "grant_type=authorization_code&code=a+b%26c"

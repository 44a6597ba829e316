"""Through real nginx and real Caddy, running the shipped configurations:
who reaches the app, with which identity, and what a client cannot forge.

Each test runs once per proxy; `proxy.app` is what the app behind it saw.
"""

from __future__ import annotations

import re
import socket
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from idp.gateway.forward import IDENTITY_HEADERS
from idp.services.reasons import MESSAGES
from tests.gateway.client import HTML, JSON, Client
from tests.gateway.conftest import (
    ADMIN_PREFIX,
    FORGED_IDENTITY,
    FORGED_USER,
    PASSWORD,
    Invite,
    Member,
    Portcullis,
)
from tests.gateway.proxies import Proxy
from tests.gateway.upstream import APP_BODY

pytestmark = pytest.mark.gateway

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def forged_request(proxy: Proxy, path: str) -> dict[str, str]:
    """Headers claiming the request was for ``path`` (which the member may
    reach) whatever URL it really asks for."""
    return {
        "X-Original-URL": proxy.url(path),
        "X-Original-Method": "GET",
        "X-Forwarded-Uri": path,
        "X-Forwarded-Host": urlsplit(proxy.origin).netloc,
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "http",
        "X-Rewrite-URL": path,
    }


def disable(portcullis: Portcullis, admin: Member, user_id: str) -> None:
    """The admin's *Disable User*, through the portal."""
    page = admin.client.get(f"{portcullis.url}/portal/privacy-security")
    match = CSRF_RE.search(page.body)
    assert match, page.status
    done = admin.client.post(
        f"{portcullis.url}/portal/users/{user_id}/disable",
        {"csrf_token": match.group(1)},
    )
    assert "is disabled" in done.body, (done.status, done.url)


# --- 1, 2: signing in --------------------------------------------------------


def test_browser_without_session_signs_in_and_returns_to_the_page(
    proxy: Proxy, portcullis: Portcullis, reader: Member
) -> None:
    browser = Client()
    target = proxy.url("/reports/q3?view=full&sort=-date")

    page = browser.get(target, {"Accept": HTML})

    assert page.url.startswith(f"{portcullis.url}/login?")
    assert parse_qs(urlsplit(page.url).query)["rd"] == [target]
    assert "Sign in" in page.body
    assert proxy.app.seen == []

    page = browser.submit(page, {"email": reader.email})
    page = browser.submit(page, {"password": PASSWORD})

    assert (page.status, page.url) == (200, target)
    assert APP_BODY in page.body
    assert len(proxy.app.seen) == 1
    assert proxy.app.last().one("X-Auth-Email") == reader.email


@pytest.mark.parametrize(
    "accept",
    [JSON, "application/json, text/plain, */*", "*/*"],
    ids=["json", "fetch-library", "curl"],
)
def test_api_client_without_session_gets_401(proxy: Proxy, accept: str) -> None:
    answer = Client().get(proxy.url("/api/things"), {"Accept": accept}, follow=False)

    assert answer.status == 401
    assert answer.identity_headers() == []
    assert proxy.app.seen == []


# --- 3: what the app receives ------------------------------------------------


def test_signed_in_request_reaches_the_app_with_identity_and_assertion(
    proxy: Proxy, portcullis: Portcullis, reader: Member
) -> None:
    answer = reader.client.get(proxy.url("/reports?x=1"), {"Accept": JSON})

    assert answer.status == 200
    seen = proxy.app.last()
    assert seen.path == "/reports?x=1"
    user_id = seen.one("X-Auth-User")
    uuid.UUID(user_id)
    assert seen.one("X-Auth-Email") == reader.email
    assert unquote(seen.one("X-Auth-Name")) == "Zoë Müller"
    assert seen.one("X-Auth-Name").isascii()
    assert seen.one("X-Auth-Role") == "read_only"
    workspace = seen.one("X-Auth-Workspace")
    # Verified by the app against the JWKS, for the proxy's origin.
    assert seen.assertion_error is None
    assert seen.claims is not None
    assert seen.claims["iss"] == portcullis.url
    assert seen.claims["aud"] == proxy.origin
    assert seen.claims["sub"] == user_id
    assert seen.claims["email"] == reader.email
    assert seen.claims["name"] == "Zoë Müller"
    assert seen.claims["role"] == "read_only"
    assert seen.claims["workspace"] == workspace
    assert seen.claims["amr"] == ["pwd"]


def test_signed_in_post_reaches_the_app_with_its_body(
    proxy: Proxy, reader: Member
) -> None:
    body = b'{"title": "Q3 report"}'

    answer = reader.client.post(
        proxy.url("/items"), body, {"Accept": JSON, "Content-Type": JSON}
    )

    assert answer.status == 200
    seen = proxy.app.last()
    assert (seen.method, seen.path, seen.body) == ("POST", "/items", body)
    assert seen.claims is not None


def test_route_for_admins_lets_an_admin_through_and_refuses_a_reader(
    proxy: Proxy, admin: Member, reader: Member
) -> None:
    path = f"{ADMIN_PREFIX}/settings"

    allowed = admin.client.get(proxy.url(path), {"Accept": JSON})
    refused = reader.client.get(proxy.url(path), {"Accept": HTML})

    assert allowed.status == 200
    assert refused.status == 403
    assert MESSAGES["role_not_allowed"] in refused.body
    assert refused.identity_headers() == []
    assert [s.one("X-Auth-Role") for s in proxy.app.seen] == ["admin"]


# --- 4: revocation -----------------------------------------------------------


def test_disabled_member_is_refused_on_the_next_request(
    proxy: Proxy, portcullis: Portcullis, admin: Member, invite: Invite
) -> None:
    member = invite(name="Dan Disabled")
    assert member.client.get(proxy.url("/"), {"Accept": JSON}).status == 200
    user_id = proxy.app.last().one("X-Auth-User")
    proxy.app.clear()

    disable(portcullis, admin, user_id)
    api = member.client.get(proxy.url("/"), {"Accept": JSON}, follow=False)
    page = member.client.get(proxy.url("/"), {"Accept": HTML})

    assert api.status == 401
    assert api.identity_headers() == []
    assert page.url.startswith(f"{portcullis.url}/login")
    assert proxy.app.seen == []


# --- 6: forged headers -------------------------------------------------------


@pytest.mark.parametrize("accept", [HTML, JSON], ids=["browser", "api"])
def test_anonymous_forged_identity_is_still_sent_to_sign_in(
    proxy: Proxy, portcullis: Portcullis, accept: str
) -> None:
    headers = {**FORGED_IDENTITY, **forged_request(proxy, "/"), "Accept": accept}

    answer = Client().get(proxy.url("/"), headers, follow=False)

    if accept == HTML:
        assert answer.status == 302
        assert answer.headers["Location"].startswith(f"{portcullis.url}/login")
    else:
        assert answer.status == 401
    assert answer.identity_headers() == []
    assert proxy.app.seen == []


def test_signed_in_app_sees_our_identity_never_the_clients(
    proxy: Proxy, reader: Member
) -> None:
    headers = {**FORGED_IDENTITY, **forged_request(proxy, "/other"), "Accept": JSON}

    answer = reader.client.get(proxy.url("/mine"), headers)

    assert answer.status == 200
    seen = proxy.app.last()
    assert seen.path == "/mine"
    assert seen.one("X-Auth-User") != FORGED_USER
    assert seen.one("X-Auth-User") == (seen.claims or {}).get("sub")
    assert seen.one("X-Auth-Email") == reader.email
    assert seen.one("X-Auth-Role") == "read_only"
    assert seen.one("X-Auth-Workspace") != "evil"
    assert seen.assertion_error is None
    # The proxy is the edge: the client's own address claims are replaced.
    assert seen.one("X-Forwarded-For") == "127.0.0.1"
    assert seen.all("X-Real-IP") in ([], ["127.0.0.1"])
    for name in (
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Uri",
        "X-Forwarded-Prefix",
        "X-Host",
        "Forwarded",
    ):
        assert seen.all(name) == [], name
    if proxy.strips_every_auth_header:
        assert seen.auth_header_names() == set(IDENTITY_HEADERS)
    else:
        assert seen.auth_header_names() >= set(IDENTITY_HEADERS)


def set_ip_restriction(portcullis: Portcullis, admin: Member, on: bool) -> None:
    """The admin's *IP restrictions* switch, through the portal. The admin
    talks to Portcullis directly from 127.0.0.1, which the list holds."""
    url = f"{portcullis.url}/portal/security"
    token = CSRF_RE.search(admin.client.get(url).body)
    assert token
    fields = {"csrf_token": token.group(1)}
    if on:
        admin.client.post(f"{url}/ip/entries", {**fields, "network": "127.0.0.1/32"})
        fields["enabled"] = "1"
    page = admin.client.post(f"{url}/ip", fields)
    assert (page.status, urlsplit(page.url).query) == (200, "saved=ip-restrictions")


def test_gw_2_a_client_cannot_claim_an_allowed_address_through_the_proxy(
    proxy: Proxy, portcullis: Portcullis, admin: Member, reader: Member
) -> None:
    """GW-2 through the shipped configurations: the allow-list holds
    127.0.0.1, and a client connecting from 127.0.0.2 claims to be
    127.0.0.1 in every header a proxy or framework might read."""
    token = reader.client.cookie("portcullis_session")
    claims = {
        "X-Forwarded-For": "127.0.0.1",
        "X-Real-IP": "127.0.0.1",
        "Forwarded": "for=127.0.0.1",
        "Cookie": f"portcullis_session={token}",
        "Accept": JSON,
    }
    set_ip_restriction(portcullis, admin, on=True)
    try:
        outside = Client(source="127.0.0.2").get(proxy.url("/"), claims)
        inside = Client().get(
            proxy.url("/"), {**claims, "X-Forwarded-For": "203.0.113.9"}
        )
    finally:
        set_ip_restriction(portcullis, admin, on=False)

    assert outside.status == 403
    assert outside.identity_headers() == []
    assert inside.status == 200
    assert [seen.one("X-Forwarded-For") for seen in proxy.app.seen] == ["127.0.0.1"]


def test_role_rule_holds_whatever_the_client_says_it_asked_for(
    proxy: Proxy, reader: Member
) -> None:
    headers = {**forged_request(proxy, "/public"), "Accept": HTML}

    answer = reader.client.get(proxy.url(f"{ADMIN_PREFIX}/settings"), headers)

    assert answer.status == 403
    assert MESSAGES["role_not_allowed"] in answer.body
    assert proxy.app.seen == []


def test_request_without_host_never_reaches_the_app(
    proxy: Proxy, reader: Member
) -> None:
    # nginx would send Portcullis "http:///path", naming no site at all.
    token = reader.client.cookie("portcullis_session")
    port = int(urlsplit(proxy.origin).port or 0)
    request = (
        f"GET {ADMIN_PREFIX}/settings HTTP/1.0\r\n"
        f"Cookie: portcullis_session={token}\r\n\r\n"
    )

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        status_line = sock.makefile("rb").readline().decode()

    # The nginx example refuses it; Caddy matches sites by Host, so it
    # matches none and Caddy gives its own empty 200.
    expected = {"nginx": 400, "caddy": 200}[proxy.name]
    assert status_line.split()[1] == str(expected)
    assert proxy.app.seen == []


# --- 7: cookies --------------------------------------------------------------


@pytest.mark.parametrize(
    "cookies",
    [
        "{session}; theme=dark",
        "theme=dark; {session}; lang=en",
        "theme=dark;{session}",
        "{session}; __Host-portcullis_session=old; theme=dark",
        "theme=dark; portcullis_flow=f; {session}; __Secure-portcullis_session=x",
        "{session}",
    ],
    ids=["first", "middle", "last", "two-names", "flow-and-secure", "alone"],
)
def test_portcullis_cookies_never_reach_the_app(
    proxy: Proxy, reader: Member, cookies: str
) -> None:
    token = reader.client.cookie("portcullis_session")
    assert token
    header = cookies.format(session=f"portcullis_session={token}")
    others = [
        pair.split("=")[0].strip()
        for pair in header.split(";")
        if "portcullis" not in pair
    ]

    answer = Client().get(proxy.url("/"), {"Accept": JSON, "Cookie": header})

    assert answer.status == 200
    seen = proxy.app.last()
    assert seen.cookie_names() == others
    assert token not in " ".join(seen.all("Cookie"))

"""deploy/traefik/portcullis.toml, read as Traefik's file provider would.

Traefik is not packaged for the test machines, so only the header handling
is checked here: client-sent identity headers are removed before the
check, the answer's identity headers are the only ones copied, and the
check is /auth/forward with the client's forwarded headers not trusted.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from idp.gateway.forward import IDENTITY_HEADERS

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "traefik" / "portcullis.toml"


@pytest.fixture(scope="module")
def http() -> dict[str, Any]:
    return tomllib.loads(CONFIG.read_text())["http"]


def _forward_auth_names(http: dict[str, Any]) -> list[str]:
    return [name for name, body in http["middlewares"].items() if "forwardAuth" in body]


def test_there_is_one_forward_auth_to_auth_forward(http: dict[str, Any]) -> None:
    (name,) = _forward_auth_names(http)
    address = urlsplit(http["middlewares"][name]["forwardAuth"]["address"])

    assert address.scheme in ("http", "https")
    assert address.path == "/auth/forward"
    assert address.query == ""


def test_forward_auth_copies_exactly_the_identity_headers(
    http: dict[str, Any],
) -> None:
    (name,) = _forward_auth_names(http)
    forward = http["middlewares"][name]["forwardAuth"]

    assert forward["authResponseHeaders"] == list(IDENTITY_HEADERS)
    assert forward["trustForwardHeader"] is False


@pytest.mark.parametrize(
    "header, removed",
    [
        *((name, True) for name in IDENTITY_HEADERS),
        ("X-Auth-Groups", True),
        ("X-Auth-", True),
        ("X-Authorization", False),
        ("Authorization", False),
        ("X-Forwarded-For", False),
    ],
)
def test_regex_takes_out_every_other_client_auth_header(
    http: dict[str, Any], header: str, removed: bool
) -> None:
    # Traefik canonicalises header names before matching (Go's
    # CanonicalHeaderKey), so the names here are in that form.
    (name,) = _forward_auth_names(http)
    pattern = http["middlewares"][name]["forwardAuth"]["authResponseHeadersRegex"]

    assert bool(re.search(pattern, header)) is removed


def test_every_router_strips_client_identity_headers_before_the_check(
    http: dict[str, Any],
) -> None:
    (auth,) = _forward_auth_names(http)
    routers = [r for r in http["routers"].values() if auth in r.get("middlewares", [])]

    assert routers
    for router in routers:
        chain = router["middlewares"]
        before = chain[: chain.index(auth)]
        removed = {
            header
            for name in before
            for header, value in http["middlewares"][name]
            .get("headers", {})
            .get("customRequestHeaders", {})
            .items()
            if value == ""
        }
        assert set(IDENTITY_HEADERS) <= removed
        assert {
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-Forwarded-Prefix",
            "X-Host",
            "Forwarded",
        } <= removed


def test_routers_send_to_a_service_that_exists(http: dict[str, Any]) -> None:
    for router in http["routers"].values():
        assert router["service"] in http["services"]

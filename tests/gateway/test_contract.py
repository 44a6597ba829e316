"""What the shipped configurations rely on from Portcullis itself, asked
directly from 127.0.0.1, which this Portcullis trusts as a proxy.

A trusted proxy that cannot say which request it is asking about (nginx
sends `http:///path` for an HTTP/1.0 request without Host; Traefik drops
X-Forwarded-Host when the Host is empty) must not be answered 200: with
no host and path, neither the protected-host list nor the route's role
rule can be applied.
"""

from __future__ import annotations

import pytest

from tests.gateway.client import JSON, Answer, Client
from tests.gateway.conftest import ADMIN_PREFIX, Member, Portcullis

pytestmark = pytest.mark.gateway

ADMIN_PATH = f"{ADMIN_PREFIX}/settings"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Original-URL": "garbage"},
        {"X-Original-URL": ADMIN_PATH},
        {"X-Original-URL": f"http://{ADMIN_PATH}", "X-Original-Method": "GET"},
    ],
    ids=["nothing", "garbage", "path-only", "no-host"],
)
def test_check_that_names_no_usable_request_is_not_allowed(
    portcullis: Portcullis, reader: Member, headers: dict[str, str]
) -> None:
    answer = _ask(portcullis, reader, "/auth/check", headers)

    assert answer.status == 403
    assert answer.headers["X-Portcullis-Reason"] == "bad_original_request"
    assert answer.identity_headers() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Forwarded-Uri": ADMIN_PATH},
        {"X-Forwarded-Host": "", "X-Forwarded-Uri": ADMIN_PATH},
    ],
    ids=["nothing", "no-host", "empty-host"],
)
def test_forward_that_names_no_usable_request_is_not_allowed(
    portcullis: Portcullis, reader: Member, headers: dict[str, str]
) -> None:
    answer = _ask(portcullis, reader, "/auth/forward", headers)

    assert answer.status == 403
    assert answer.headers["X-Portcullis-Reason"] == "bad_original_request"
    assert answer.identity_headers() == []


def _ask(
    portcullis: Portcullis, reader: Member, path: str, headers: dict[str, str]
) -> Answer:
    token = reader.client.cookie("portcullis_session")
    assert token
    return Client().get(
        f"http://127.0.0.1:{portcullis.port}{path}",
        {**headers, "Accept": JSON, "Cookie": f"portcullis_session={token}"},
        follow=False,
    )

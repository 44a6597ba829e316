"""When Portcullis is down, each proxy answers an error and the app is
never reached, whatever the client sends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.client import HTML, JSON, Client
from tests.gateway.conftest import (
    FORGED_IDENTITY,
    Member,
    Portcullis,
    start_proxy,
    stop_proxy,
)
from tests.gateway.proxies import Proxy

pytestmark = pytest.mark.gateway

# nginx turns a failed auth subrequest into 500; Caddy's forward_auth,
# a reverse proxy underneath, answers 502 for an unreachable upstream.
STATUS_WHEN_DOWN = {"nginx": 500, "caddy": 502}
KINDS = tuple(STATUS_WHEN_DOWN)


@pytest.fixture(scope="module")
def portcullis_stopped(
    tmp_path_factory: pytest.TempPathFactory, portcullis: Portcullis, reader: Member
) -> Iterator[dict[str, tuple[Proxy, int]]]:
    """Each proxy in front of a second Portcullis (same database, so the
    reader's session is good there), with the status of one request made
    while it ran; then that Portcullis is stopped."""
    twin = portcullis.spare
    assert twin is not None
    proxies: dict[str, Proxy] = {}
    try:
        twin.wait_healthy()
        for kind in KINDS:
            folder = tmp_path_factory.mktemp(f"twin-{kind}")
            proxies[kind] = start_proxy(kind, folder, twin)
        before = {
            kind: reader.client.get(proxy.url("/"), {"Accept": JSON}).status
            for kind, proxy in proxies.items()
        }
        twin.stop()
        for proxy in proxies.values():
            proxy.app.clear()
        yield {kind: (proxy, before[kind]) for kind, proxy in proxies.items()}
    finally:
        for proxy in proxies.values():
            stop_proxy(proxy)
        twin.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "who",
    ["signed-in", "anonymous", "forged"],
    ids=["signed-in", "anonymous", "forged"],
)
@pytest.mark.parametrize("accept", [HTML, JSON], ids=["browser", "api"])
def test_proxy_fails_closed_when_portcullis_is_down(
    portcullis_stopped: dict[str, tuple[Proxy, int]],
    reader: Member,
    kind: str,
    who: str,
    accept: str,
) -> None:
    proxy, status_while_up = portcullis_stopped[kind]
    client = reader.client if who == "signed-in" else Client()
    headers = {"Accept": accept, **(FORGED_IDENTITY if who == "forged" else {})}

    answer = client.get(proxy.url("/reports"), headers, follow=False)

    assert status_while_up == 200
    assert answer.status == STATUS_WHEN_DOWN[kind]
    assert answer.identity_headers() == []
    assert proxy.app.seen == []

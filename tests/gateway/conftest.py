"""Real nginx and real Caddy, running the configurations shipped in deploy/,
in front of a real `idp serve` and a small app that records what reaches it.

One Portcullis serves the run (a fresh database of the run's kind); each
proxy is started once with its own app. When CI is set, a missing nginx or
Caddy fails the run instead of skipping.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import empty_database
from tests.gateway.client import Client
from tests.gateway.proxies import (
    CADDY,
    NGINX,
    Proxy,
    free_port,
    start_caddy,
    start_nginx,
    stop_process,
)
from tests.gateway.upstream import App
from tests.serve import spawn_serve, stop

PASSWORD = "a long gateway passphrase"
WORKSPACE = "Gateway"
START_TIMEOUT_SECONDS = 30
# A route only admins may pass, for the role rule and for spoofed URLs.
ADMIN_PREFIX = "/admin"
ROUTES = [{"host": "localhost", "path": ADMIN_PREFIX, "roles": ["admin"]}]
FORGED_USER = "00000000-0000-0000-0000-000000000000"
# What a client might send to pass as someone else.
FORGED_IDENTITY = {
    "X-Auth-User": FORGED_USER,
    "X-Auth-Email": "ceo@evil.test",
    "X-Auth-Name": "The CEO",
    "X-Auth-Role": "admin",
    "X-Auth-Workspace": "evil",
    "X-Auth-Assertion": "eyJhbGciOiJub25lIn0.e30.",
    "X-Auth-Groups": "admins",
    "X-Forwarded-For": "203.0.113.9",
    "X-Real-IP": "203.0.113.9",
    "Forwarded": "for=203.0.113.9;host=evil.test;proto=https",
    "X-Forwarded-Prefix": "/evil",
    "X-Host": "evil.test",
}


def require(binary: str) -> None:
    if Path(binary).exists():
        return
    message = f"no {binary} (./scripts/test installs Debian's nginx and caddy)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- Portcullis -------------------------------------------------------------


@dataclass
class Portcullis:
    url: str
    port: int
    env: dict[str, str]
    log: Path
    instance: Path
    process: subprocess.Popen[bytes] | None = None
    # A second server on the same database, started early so that it is up
    # by the time the fail-closed tests stop it.
    spare: Portcullis | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "idp.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"idp {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def link_mailed_to(self, address: str) -> str:
        """The link in the newest outbox mail to ``address``."""
        for path in sorted((self.instance / "outbox").glob("*.eml"), reverse=True):
            message = email.message_from_bytes(
                path.read_bytes(), policy=email.policy.default
            )
            if message["To"] != address:
                continue
            body = message.get_body(("plain",))
            assert body is not None
            match = re.search(re.escape(self.url) + r"/\S+", body.get_content())
            assert match, f"no link in the mail to {address}"
            return match.group(0)
        raise AssertionError(f"no mail to {address} in the outbox")

    def start(self) -> None:
        self.spawn()
        self.wait_healthy()

    def spawn(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = spawn_serve(self.port, 1, self.env, self.log)

    def wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        probe = Client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"idp serve exited with {self.process.returncode}:\n"
                    + self.log.read_text()
                )
            try:
                if probe.get(f"http://127.0.0.1:{self.port}/healthz").status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"idp serve not healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        # Once reaped, its process group id may belong to someone else.
        if self.process is not None and self.process.poll() is None:
            stop(self.process)

    def twin(self, folder: Path) -> Portcullis:
        """A second `idp serve` on the same database, keys and instance
        folder, at its own port: sessions made at one are good at the other."""
        port = free_port()
        env = {**self.env, "IDP_PUBLIC_URL": f"http://localhost:{port}"}
        return Portcullis(
            f"http://localhost:{port}", port, env, folder / "serve.log", self.instance
        )


@pytest.fixture(scope="session")
def gateway_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of the run's kind; `idp serve` migrates it."""
    with empty_database(tmp_path_factory, "gateway") as url:
        yield url


@pytest.fixture(scope="session")
def portcullis(
    tmp_path_factory: pytest.TempPathFactory, gateway_database_url: str
) -> Iterator[Portcullis]:
    tmp = tmp_path_factory.mktemp("gateway-portcullis")
    port = free_port()
    # Unknown IDP_ variables stop start-up, so none leak in from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        {
            "IDP_PUBLIC_URL": f"http://localhost:{port}",
            "IDP_DATABASE_URL": gateway_database_url,
            "IDP_INSTANCE_DIR": str(tmp / "instance"),
            "IDP_KEYS_DIR": str(tmp / "keys"),
            "IDP_GATEWAY__TRUSTED_PROXIES": "127.0.0.1",
            "IDP_GATEWAY__PROTECTED_HOSTS": "localhost",
            "IDP_GATEWAY__ROUTES": json.dumps(ROUTES),
            "IDP_PASSWORDS__ARGON2_MEMORY_KIB": "1024",
            "IDP_PASSWORDS__ARGON2_TIME_COST": "1",
            "IDP_SIGNIN__IP_LIMITS": "1000 per minute",
            # The test SAML IdP of test_sso_browser.py is on loopback, by http.
            "IDP_SSO__ALLOW_PRIVATE_URLS": "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    server = Portcullis(
        f"http://localhost:{port}", port, env, tmp / "serve.log", tmp / "instance"
    )
    try:
        server.start()
        # Only once the first has migrated the database.
        server.spare = server.twin(tmp / "spare")
        server.spare.spawn()
        yield server
    finally:
        if server.spare is not None:
            server.spare.stop()
        server.stop()


# --- people -----------------------------------------------------------------


@dataclass
class Member:
    email: str
    name: str
    role: str
    client: Client


def accept(portcullis: Portcullis, link: str, name: str) -> Client:
    """Open an invitation or set-up link in a new browser and join."""
    client = Client()
    page = client.get(link)
    assert page.url == f"{portcullis.url}/invite", (page.status, page.url)
    joined = client.submit(
        page, {"full_name": name, "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert joined.url == f"{portcullis.url}/portal/profile", (joined.status, joined.url)
    return client


@pytest.fixture(scope="session")
def admin(portcullis: Portcullis) -> Member:
    slug = portcullis.cli("workspace", "create", WORKSPACE)
    email_address = "owner@gateway.test"
    link = portcullis.cli("admin", "create", "--workspace", slug, email_address)
    client = accept(portcullis, link, "Olive Owner")
    return Member(email_address, "Olive Owner", "admin", client)


Invite = Callable[..., Member]


@pytest.fixture(scope="session")
def invite(portcullis: Portcullis, admin: Member) -> Invite:
    """A new member, invited by the admin through the portal, who has joined
    (and so is signed in, in their own browser)."""

    def make(role: str = "read_only", name: str = "Rita Reader") -> Member:
        address = f"{uuid.uuid4().hex[:10]}@gateway.test"
        page = admin.client.get(f"{portcullis.url}/portal/users/invite")
        sent = admin.client.submit(
            page, {"email": address, "role": role, "full_name": name}
        )
        assert f"Invitation sent to {address}." in sent.body, sent.status
        client = accept(portcullis, portcullis.link_mailed_to(address), name)
        return Member(address, name, role, client)

    return make


# --- proxies ----------------------------------------------------------------


def start_proxy(kind: str, folder: Path, portcullis: Portcullis) -> Proxy:
    require(NGINX if kind == "nginx" else CADDY)
    app = App(portcullis.url, f"{portcullis.url}/.well-known/jwks.json")
    try:
        start = start_nginx if kind == "nginx" else start_caddy
        return start(folder, portcullis.port, app)
    except BaseException:
        app.close()
        raise


def stop_proxy(proxy: Proxy) -> None:
    try:
        stop_process(proxy.process)
    finally:
        proxy.app.close()


@pytest.fixture(scope="session", params=["nginx", "caddy"])
def running_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    portcullis: Portcullis,
) -> Iterator[Proxy]:
    proxy = start_proxy(
        request.param, tmp_path_factory.mktemp(request.param), portcullis
    )
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


@pytest.fixture
def proxy(running_proxy: Proxy) -> Proxy:
    """The proxy under test, its app's record emptied."""
    running_proxy.app.clear()
    return running_proxy


@pytest.fixture(scope="session")
def reader(invite: Invite) -> Member:
    """A read-only member, signed in; the name is not plain ASCII, so the
    X-Auth-Name encoding is exercised on every pass."""
    return invite(role="read_only", name="Zoë Müller")

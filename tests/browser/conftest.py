"""Browser fixtures: a real `idp serve` on a free port with its own database,
an SMTP server on loopback that keeps every message, and Debian's Chromium
driven by Playwright.

The server is started once per run and shared; each test module makes its
own workspace through the CLI, so modules never see each other's users.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from tests.conftest import empty_database
from tests.serve import spawn_serve, stop

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TABLET = {"width": 800, "height": 1024}
SCREENSHOTS = Path(__file__).parent / "screenshots"
PASSWORD = "a long browser passphrase"
START_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- mail -------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps what it receives, for tests to read."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(
            envelope.content, policy=email.policy.default
        )
        with self._arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(
        self, to: str, *, subject: str = "", timeout: float = 10
    ) -> EmailMessage:
        """The newest message to ``to`` whose subject contains ``subject``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in reversed(self.messages):
                    if message["To"] == to and subject in message["Subject"]:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m["To"], m["Subject"]) for m in self.messages]
                    raise AssertionError(
                        f"no mail to {to} within {timeout} s; seen: {seen}"
                    )
                self._arrived.wait(left)


def link_in(message: EmailMessage, base_url: str) -> str:
    body = message.get_body(("plain",))
    assert body is not None, "the mail has no text part"
    match = re.search(re.escape(base_url) + r"/\S+", body.get_content())
    assert match, f"no link to {base_url} in the mail"
    return match.group(0)


@pytest.fixture(scope="session")
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


# --- database and server ----------------------------------------------------


@pytest.fixture(scope="session")
def server_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of the run's kind; `idp serve` migrates it."""
    with empty_database(tmp_path_factory, "browser") as url:
        yield url


@dataclass
class Server:
    url: str
    env: dict[str, str]
    log: Path
    inbox: Inbox

    def cli(self, *args: str) -> str:
        """Run `idp ARGS` against this server's settings; its stdout, stripped."""
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

    def new_workspace(self, name: str) -> str:
        return self.cli("workspace", "create", name)

    def setup_link(self, slug: str, email_address: str) -> str:
        link = self.cli("admin", "create", "--workspace", slug, email_address)
        assert link.startswith(f"{self.url}/invite/"), link
        return link


def _environment(
    tmp: Path, port: int, database_url: str, smtp_port: int
) -> dict[str, str]:
    # Unknown IDP_ variables stop start-up, so none leak in from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        {
            "IDP_PUBLIC_URL": f"http://localhost:{port}",
            "IDP_DATABASE_URL": database_url,
            "IDP_INSTANCE_DIR": str(tmp / "instance"),
            "IDP_KEYS_DIR": str(tmp / "keys"),
            "IDP_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "IDP_MAIL_FROM": "Portcullis <no-reply@portcullis.test>",
            "IDP_PASSWORDS__ARGON2_MEMORY_KIB": "1024",
            "IDP_PASSWORDS__ARGON2_TIME_COST": "1",
            # Every test signs in from the same address; the real limit is
            # covered by the integration tests.
            "IDP_SIGNIN__IP_LIMITS": "1000 per minute",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"idp serve exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(
        f"idp serve not healthy after {START_TIMEOUT_SECONDS} s:\n{log.read_text()}"
    )


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    server_database_url: str,
    inbox: tuple[Inbox, int],
) -> Iterator[Server]:
    handler, smtp_port = inbox
    tmp = tmp_path_factory.mktemp("browser-server")
    port = free_port()
    env = _environment(tmp, port, server_database_url, smtp_port)
    log = tmp / "server.log"
    process = spawn_serve(port, 1, env, log)
    running = Server(url=f"http://localhost:{port}", env=env, log=log, inbox=handler)
    try:
        _wait_healthy(running.url, process, log)
        yield running
    finally:
        stop(process)


# --- browser ----------------------------------------------------------------


@dataclass
class Contexts:
    """Opens browser contexts (separate cookie jars) and keeps every console
    message and page error they produce."""

    browser: Browser
    base_url: str
    console: list[str] = field(default_factory=list)
    opened: list[BrowserContext] = field(default_factory=list)

    def new_page(
        self, *, storage_state: Any = None, user_agent: str | None = None
    ) -> Page:
        options: dict[str, Any] = {"base_url": self.base_url, "viewport": DESKTOP}
        if storage_state is not None:
            options["storage_state"] = storage_state
        if user_agent is not None:
            options["user_agent"] = user_agent
        context = self.browser.new_context(**options)
        context.set_default_timeout(10_000)
        context.on("console", self._on_console)
        context.on(
            "weberror", lambda error: self.console.append(f"pageerror: {error.error}")
        )
        self.opened.append(context)
        return context.new_page()

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(
            f"{message.type}: {message.text} ({message.location.get('url', '')})"
        )

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "content security policy" in m.lower()]

    def close(self) -> None:
        for context in self.opened:
            context.close()


@pytest.fixture
def contexts(browser: Browser, server: Server) -> Iterator[Contexts]:
    opened = Contexts(browser, server.url)
    try:
        yield opened
    finally:
        opened.close()
    assert opened.csp_violations() == [], "\n".join(opened.csp_violations())


Shoot = Callable[[Page, str], None]


@pytest.fixture(scope="session")
def screenshot() -> Shoot:
    SCREENSHOTS.mkdir(exist_ok=True)

    def shoot(page: Page, name: str) -> None:
        """Full-page shots of the page at desktop and phone widths. At those
        and at a tablet's width the page must not scroll sideways (a wide
        table may, inside its own box)."""
        original = page.viewport_size or DESKTOP
        for label, size in (("desktop", DESKTOP), ("tablet", TABLET), ("phone", PHONE)):
            page.set_viewport_size(size)
            if size is not TABLET:
                page.screenshot(
                    path=SCREENSHOTS / f"{name}-{label}.png", full_page=True
                )
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"{name} is {width} px wide at {label} width"
        page.set_viewport_size(original)

    return shoot

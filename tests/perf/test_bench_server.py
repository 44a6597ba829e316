"""A real server (`idp serve`, gunicorn, two workers, real argon2 cost):
idle memory against a bare Python process, and password sign-ins per
second against argon2id verifications per second, both measured here.

PORTCULLIS_BENCH_SIGNIN_SECONDS and PORTCULLIS_BENCH_CLIENTS change the
length and the concurrency of the sign-in run.
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher, Type

from tests.perf._support import (
    Scratch,
    create_workspaces,
    mib,
    report,
    rss_bytes,
    scratch_database,
)
from tests.serve import spawn_serve, stop

ACCOUNTS = 200
PASSWORD = "a benchmark passphrase that is long enough"
SECONDS = float(os.environ.get("PORTCULLIS_BENCH_SIGNIN_SECONDS", "30"))
CLIENTS = int(os.environ.get("PORTCULLIS_BENCH_CLIENTS", "8"))
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# The cost `idp serve` uses by default (OWASP: 19 MiB, 2 passes, 1 lane).
ARGON2 = {"memory_cost": 19456, "time_cost": 2, "parallelism": 1}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    scratch: Scratch

    def pids(self) -> list[int]:
        """The gunicorn master (the process we started) and its workers."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed(scratch: Scratch) -> None:
    """One workspace and its members, written directly, sharing one hash
    made with the server's own cost."""
    from idp.db import db
    from idp.models import User
    from idp.state import state

    workspace_id = create_workspaces(scratch, 1)[0]
    app = scratch.app()
    with app.app_context():
        password_hash = state().passwords.hash(PASSWORD)
        for n in range(ACCOUNTS):
            db.session.add(
                User(
                    workspace_id=workspace_id,
                    email=f"member{n:03d}@example.com",
                    full_name=f"Member {n}",
                    role="admin" if n == 0 else "read_only",
                    status="active",
                    password_hash=password_hash,
                )
            )
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with scratch_database() as scratch:
        _seed(scratch)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        env.update(
            {
                "IDP_DATABASE_URL": scratch.url,
                "IDP_INSTANCE_DIR": str(scratch.workdir / "instance"),
                "IDP_KEYS_DIR": str(scratch.keys_dir),
                "IDP_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "IDP_GATEWAY__TRUSTED_PROXIES": "127.0.0.1",
                "IDP_SIGNIN__IP_LIMITS": "1000000 per minute",
            }
        )
        log = scratch.workdir / "server.log"
        process = spawn_serve(port, 2, env, log, cwd=scratch.workdir)
        running = Server(process, port, log, scratch)
        try:
            _wait_ready(running)
            yield running
        finally:
            stop(process)


def _wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited: {server.log.read_text()[-2000:]}")
        try:
            status, _headers, _body = Browser(server.port).request("GET", "/readyz")
            if status == 200 and len(server.pids()) == 3:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready: {server.log.read_text()[-2000:]}")


@dataclass
class Browser:
    """One visitor: a keep-alive connection and its own cookie jar."""

    port: int
    forwarded_for: str = ""
    cookies: dict[str, str] = field(default_factory=dict)
    connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, str]:
        headers = {"User-Agent": "portcullis-bench"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.forwarded_for:
            headers["X-Forwarded-For"] = self.forwarded_for
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=30
                )
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                text = response.read().decode()
                break
            except (http.client.HTTPException, ConnectionError):
                # The server closed an idle keep-alive connection: once more.
                self.connection.close()
                self.connection = None
                if attempt == 2:
                    raise
        for cookie in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value and "Max-Age=0" not in cookie and "1970" not in cookie:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response.status, response.headers, text

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def sign_in(browser: Browser, email: str) -> str:
    """The password sign-in as a browser does it. Returns "ok", "429" or
    what else came back."""
    browser.cookies.clear()
    status, _h, page = browser.request("GET", "/login")
    if status != 200:
        return str(status)
    status, _h, _b = browser.request(
        "POST", "/login", {"email": email, "csrf_token": CSRF.search(page).group(1)}
    )
    if status != 302:
        return str(status)
    status, _h, page = browser.request("GET", "/login/password")
    if status != 200:
        return str(status)
    status, headers, _b = browser.request(
        "POST",
        "/login/password",
        {"password": PASSWORD, "csrf_token": CSRF.search(page).group(1)},
    )
    if status == 302 and headers.get("Location", "").endswith("/portal/profile"):
        return "ok"
    return str(status)


def _addresses() -> Iterator[str]:
    # A new client address for every sign-in (100.64.0.0/10), so per-address
    # limits never answer in place of the password check.
    for n in itertools.count(1):
        yield f"100.{64 + (n >> 16) % 64}.{(n >> 8) & 255}.{n & 255}"


def _drive(port: int, seconds: float, clients: int) -> tuple[Counter[str], float]:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    addresses = _addresses()
    accounts = itertools.count()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        browser = Browser(port)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    browser.forwarded_for = next(addresses)
                    email = f"member{next(accounts) % ACCOUNTS:03d}@example.com"
                try:
                    result = sign_in(browser, email)
                except (OSError, http.client.HTTPException) as exc:
                    result = type(exc).__name__
                with lock:
                    outcomes[result] += 1
        finally:
            browser.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.monotonic() - started


def _argon2_rate(seconds: float, threads: int = 2) -> tuple[float, int]:
    """Verifications per second with argon2-cffi in this process."""
    hasher = PasswordHasher(**ARGON2, hash_len=32, salt_len=16, type=Type.ID)
    stored = hasher.hash(PASSWORD)
    counts = [0] * threads
    stop_at = time.monotonic() + seconds

    def work(slot: int) -> None:
        while time.monotonic() < stop_at:
            hasher.verify(stored, PASSWORD)
            counts[slot] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started), sum(counts)


def _pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _memory(server: Server) -> tuple[int, int, list[int]]:
    pids = server.pids()
    each = [rss_bytes(pid) for pid in pids]
    return sum(each), sum(_pss_bytes(pid) for pid in pids), each


def _bare_python_rss() -> int:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(1.5)
        return rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait()


def test_idle_memory(server: Server) -> None:
    time.sleep(2)
    baseline = _bare_python_rss()
    idle_rss, idle_pss, idle_each = _memory(server)

    # A few requests on fresh connections, so both workers serve some.
    for _ in range(10):
        browser = Browser(server.port)
        assert browser.request("GET", "/login")[0] == 200
        browser.close()
    for n in range(4):
        browser = Browser(server.port, forwarded_for=f"192.0.2.{n + 1}")
        assert sign_in(browser, f"member{n:03d}@example.com") == "ok"
        for path in (
            "/portal/profile",
            "/portal/users",
            "/portal/audit-logs",
            "/portal/privacy-security",
        ):
            assert browser.request("GET", path)[0] == 200
        browser.close()
    time.sleep(1)
    used_rss, used_pss, used_each = _memory(server)

    def line(rss: int, pss: int, each: list[int]) -> str:
        per = " + ".join(mib(b) for b in each)
        return f"{mib(rss)} = {rss / baseline:.1f} x baseline ({per}); PSS {mib(pss)}"

    report(
        f"idle memory, idp serve with 2 workers on {server.scratch.kind}",
        [
            ("baseline: RSS of python -c 'import time; time.sleep(5)'", mib(baseline)),
            (
                "RSS master + 2 workers, after start",
                line(idle_rss, idle_pss, idle_each),
            ),
            (
                "RSS master + 2 workers, after a few requests",
                line(used_rss, used_pss, used_each),
            ),
        ],
    )


def test_sign_ins_per_second(server: Server) -> None:
    verify_rate, verified = _argon2_rate(10)
    # A short warm-up, so that both workers have every module loaded.
    _drive(server.port, 2, CLIENTS)
    outcomes, elapsed = _drive(server.port, SECONDS, CLIENTS)
    rss, _pss, _each = _memory(server)
    succeeded = outcomes["ok"]
    rate = succeeded / elapsed
    others = ", ".join(
        f"{k}: {v}" for k, v in sorted(outcomes.items()) if k not in ("ok", "429")
    )
    report(
        f"password sign-ins, idp serve with 2 workers on {server.scratch.kind}",
        [
            (
                "baseline: argon2id verifications/s (2 threads, in-process, 19 MiB, 2 passes)",
                f"{verify_rate:.1f}/s ({verified} in 10 s)",
            ),
            (
                f"sign-ins/s ({CLIENTS} clients, {elapsed:.0f} s, 4 requests each)",
                f"{rate:.1f}/s = {rate / verify_rate:.2f} x baseline",
            ),
            ("verifications run by the server (= successful sign-ins)", str(succeeded)),
            ("answered 429 (hash slots busy or limits)", str(outcomes["429"])),
            ("other outcomes", others or "none"),
            ("RSS master + 2 workers after the run", mib(rss)),
        ],
    )
    assert succeeded > 0, outcomes

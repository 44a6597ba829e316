"""The gateway's hot path, measured against ceilings taken in the same run.

1. `/auth/check` of `idp serve` with a valid session and every policy on,
   against a bare Flask endpoint that answers 200, both under gunicorn with
   config/gunicorn.conf.py: requests per second and p50/p99 at 32
   connections.
2. End to end through nginx `auth_request` against nginx proxying the same
   upstream with no auth.
3. The check again while 50 clients hammer sign-in with wrong passwords
   from many client addresses through a trusted proxy, so argon2 really
   runs; the check's p99 against its own figure from step 1.

Load comes from wrk (Debian's package, installed by scripts/bench). Nothing
here asserts a time: the figures are printed for the issue note. Each
comparison runs in ROUNDS alternating rounds (baseline, subject, baseline,
...) and reports the median of each side with its range, so that a slow
patch of a shared machine lands on both sides rather than on one.
PORTCULLIS_BENCH_GATEWAY_SECONDS sets the length of each wrk run,
PORTCULLIS_BENCH_GATEWAY_ROUNDS the number of rounds.
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Self
from urllib.parse import urlencode

import pytest

from tests.perf._support import Scratch, create_workspaces, report, scratch_database
from tests.serve import spawn_serve, stop

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("PORTCULLIS_BENCH_GATEWAY_SECONDS", "10"))
ROUNDS = int(os.environ.get("PORTCULLIS_BENCH_GATEWAY_ROUNDS", "3"))
CONNECTIONS = 32
STORM_CLIENTS = 50
PASSWORD = "a benchmark passphrase that is long enough"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(port: int, path: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready: {log.read_text()[-2000:]}")


def _seed(scratch: Scratch) -> str:
    """A workspace with every policy on, one member, and a session token
    that satisfies all of them (MFA done, seen now, inside the allow-list)."""
    from idp.db import db
    from idp.models import IpAllowEntry, SecurityPolicy, Session, User
    from idp.security import new_token, token_digest
    from idp.state import state

    workspace_id = create_workspaces(scratch, 1)[0]
    app = scratch.app()
    with app.app_context():
        now = state().clock()
        policy = db.session.get(SecurityPolicy, workspace_id)
        policy.mfa_mode = "force"
        policy.idle_timeout_seconds = 3600
        policy.max_sessions = 5
        policy.relogin_days = 7
        policy.ip_restriction_enabled = True
        db.session.add(IpAllowEntry(workspace_id=workspace_id, network="127.0.0.0/8"))
        user = User(
            workspace_id=workspace_id,
            email="member@example.com",
            full_name="Bench Member",
            role="admin",
            status="active",
            password_hash=state().passwords.hash(PASSWORD),
        )
        db.session.add(user)
        db.session.flush()
        token = new_token()
        db.session.add(
            Session(
                workspace_id=workspace_id,
                user_id=user.id,
                token_hash=token_digest(token),
                created_at=now - timedelta(minutes=1),
                authenticated_at=now - timedelta(minutes=1),
                mfa_at=now - timedelta(minutes=1),
                last_seen_at=now,
                amr=["pwd", "otp"],
                ip="127.0.0.1",
            )
        )
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return token


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


@dataclass(frozen=True)
class Rounds:
    """Several runs of one load: medians, and the range of each figure."""

    runs: tuple[Load, ...]

    def _median(self, field: str) -> float:
        return statistics.median(getattr(run, field) for run in self.runs)

    def _span(self, field: str) -> str:
        values = [getattr(run, field) for run in self.runs]
        return f"{min(values):,.1f}-{max(values):,.1f}"

    @property
    def rps(self) -> float:
        return self._median("rps")

    @property
    def p50_ms(self) -> float:
        return self._median("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self._median("p99_ms")

    @property
    def non_2xx(self) -> int:
        return sum(run.non_2xx for run in self.runs)

    def line(self) -> str:
        return (
            f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
            f" (medians of {len(self.runs)}; req/s {self._span('rps')},"
            f" p99 {self._span('p99_ms')} ms; {self.non_2xx} non-2xx)"
        )


def alternate(*loads: Callable[[], Load]) -> list[Rounds]:
    """Each load ROUNDS times, interleaved: a, b, a, b, ..."""
    runs: list[list[Load]] = [[] for _ in loads]
    for _ in range(ROUNDS):
        for index, load in enumerate(loads):
            runs[index].append(load())
    return [Rounds(tuple(r)) for r in runs]


@dataclass
class Stack:
    scratch: Scratch
    token: str
    idp_port: int
    bare_port: int
    nginx_auth_port: int
    nginx_plain_port: int
    processes: list[subprocess.Popen]
    idp: subprocess.Popen


def _gunicorn_bare(port: int, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "config" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "8",
                "tests.perf.bare_app:app",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


NGINX = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream portcullis {{ server 127.0.0.1:{idp}; keepalive 32; }}
    upstream app {{ server 127.0.0.1:{app}; keepalive 32; }}

    # The upstream app: as fast as nginx can answer.
    server {{
        listen 127.0.0.1:{app};
        location / {{ return 200 "ok\\n"; }}
    }}
    # Protected by Portcullis.
    server {{
        listen 127.0.0.1:{auth};
        location = /_portcullis/check {{
            internal;
            proxy_pass http://portcullis/auth/check;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}
        location / {{
            auth_request /_portcullis/check;
            auth_request_set $auth_user $upstream_http_x_auth_user;
            auth_request_set $auth_assertion $upstream_http_x_auth_assertion;
            proxy_set_header X-Auth-User $auth_user;
            proxy_set_header X-Auth-Assertion $auth_assertion;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
    # The same upstream, no auth.
    server {{
        listen 127.0.0.1:{plain};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed; scripts/bench installs it")
    with scratch_database() as scratch:
        token = _seed(scratch)
        work = scratch.workdir
        idp_port, bare_port, app_port, auth_port, plain_port = (
            _free_port() for _ in range(5)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        env.update(
            {
                "IDP_DATABASE_URL": scratch.url,
                "IDP_INSTANCE_DIR": str(work / "instance"),
                "IDP_KEYS_DIR": str(scratch.keys_dir),
                "IDP_PUBLIC_URL": f"http://localhost:{idp_port}",
                "IDP_GATEWAY__TRUSTED_PROXIES": "127.0.0.1",
                "IDP_GATEWAY__ROUTES": '[{"host": "localhost", "path": "/app", '
                '"roles": ["admin"]}]',
                "IDP_SIGNIN__IP_LIMITS": "1000000 per minute",
                "IDP_SIGNIN__ACCOUNT_FAILURE_LIMIT": "1000000",
                "IDP_LOG__LEVEL": "WARNING",
            }
        )
        processes: list[subprocess.Popen] = []
        try:
            idp = spawn_serve(idp_port, 2, env, work / "idp.log", cwd=work)
            processes.append(idp)
            bare = _gunicorn_bare(bare_port, work / "bare.log")
            processes.append(bare)
            conf = work / "nginx.conf"
            conf.write_text(
                NGINX.format(
                    tmp=work,
                    idp=idp_port,
                    app=app_port,
                    auth=auth_port,
                    plain=plain_port,
                )
            )
            nginx = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", str(work), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=(work / "nginx.out").open("wb"),
                start_new_session=True,
            )
            processes.append(nginx)
            _wait_http(idp_port, "/readyz", idp, work / "idp.log")
            _wait_http(bare_port, "/auth/check", bare, work / "bare.log")
            _wait_http(plain_port, "/", nginx, work / "nginx.out")
            yield Stack(
                scratch,
                token,
                idp_port,
                bare_port,
                auth_port,
                plain_port,
                processes,
                idp,
            )
        finally:
            for process in reversed(processes):
                stop(process)
            _report_errors(work / "idp.log")


def _report_errors(log: Path) -> None:
    """Print every error the server logged during the run: a benchmark must
    not hide a 500 behind its figures."""
    if not log.exists():
        return
    lines = log.read_text(errors="replace").splitlines()
    errors = [i for i, line in enumerate(lines) if "ERROR" in line]
    if errors:
        print(f"\n!! {len(errors)} errors in the server log; the first:")
        print("\n".join(lines[errors[0] : errors[0] + 40]))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, headers: dict[str, str], seconds: int = SECONDS) -> Load:
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if not {"50", "99"} <= percentiles.keys():
        raise AssertionError(f"no latency distribution from wrk:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(re.search(r"(\d+) requests in", out).group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def _check_headers(stack: Stack) -> dict[str, str]:
    return {
        "Cookie": f"portcullis_session={stack.token}",
        "X-Original-URL": "http://localhost/app/dashboard?tab=1",
        "X-Original-Method": "GET",
    }


def _assert_allowed(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.idp_port, timeout=10)
    conn.request("GET", "/auth/check", headers=_check_headers(stack))
    response = conn.getresponse()
    response.read()
    assert response.status == 200, (response.status, response.getheaders())


def test_check_against_bare_flask(stack: Stack) -> None:
    _assert_allowed(stack)
    headers = _check_headers(stack)
    bare_url = f"http://127.0.0.1:{stack.bare_port}/auth/check"
    check_url = f"http://127.0.0.1:{stack.idp_port}/auth/check"
    # Warm both, so every worker has its modules and connections ready.
    wrk(bare_url, headers, 3)
    wrk(check_url, headers, 3)
    bare, check = alternate(
        lambda: wrk(bare_url, headers), lambda: wrk(check_url, headers)
    )
    assert check.non_2xx == 0, check
    report(
        f"/auth/check vs bare Flask, gunicorn 2 workers x 8 threads, "
        f"{CONNECTIONS} connections, {ROUNDS} rounds of {SECONDS} s, {stack.scratch.kind}",
        [
            ("baseline: bare Flask 200", bare.line()),
            ("/auth/check, valid session, every policy on", check.line()),
            ("ratio req/s (goal >= 0.85)", f"{check.rps / bare.rps:.2f}"),
            ("p99 (goal <= 10 ms)", f"{check.p99_ms:.2f} ms"),
        ],
    )


def test_through_nginx(stack: Stack) -> None:
    headers = {
        "Cookie": f"portcullis_session={stack.token}",
        "Host": "localhost",
    }
    plain_url = f"http://127.0.0.1:{stack.nginx_plain_port}/app/x"
    auth_url = f"http://127.0.0.1:{stack.nginx_auth_port}/app/x"
    wrk(auth_url, headers, 3)
    plain, authed = alternate(
        lambda: wrk(plain_url, headers), lambda: wrk(auth_url, headers)
    )
    assert authed.non_2xx == 0, authed
    report(
        f"end to end through nginx, {CONNECTIONS} connections, {ROUNDS} rounds of {SECONDS} s",
        [
            ("baseline: nginx proxying the upstream, no auth", plain.line()),
            ("nginx auth_request to /auth/check, then the upstream", authed.line()),
            ("ratio req/s", f"{authed.rps / plain.rps:.2f}"),
        ],
    )


class Storm:
    """Clients signing in with wrong passwords, each attempt from a new
    address behind the trusted proxy and for a new email, so neither the
    per-address nor the per-account limit answers before the hash."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counter = itertools.count(1)
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _request(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        address: str,
        cookies: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        headers = {"X-Forwarded-For": address}
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        for cookie in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            cookies[name] = rest.split(";", 1)[0]
        return response.status, text

    def _attempt(self, conn: http.client.HTTPConnection) -> str:
        n = next(self.counter)
        address = f"100.{64 + (n >> 16) % 64}.{(n >> 8) & 255}.{n & 255}"
        email = f"nobody{n}@example.com" if n % 2 else "member@example.com"
        cookies: dict[str, str] = {}
        status, page = self._request(conn, "GET", "/login", address, cookies)
        if status != 200:
            return str(status)
        status, _ = self._request(
            conn,
            "POST",
            "/login",
            address,
            cookies,
            {"email": email, "csrf_token": CSRF.search(page).group(1)},
        )
        status, page = self._request(conn, "GET", "/login/password", address, cookies)
        if status != 200:
            return str(status)
        status, _ = self._request(
            conn,
            "POST",
            "/login/password",
            address,
            cookies,
            {
                "password": secrets.token_hex(8),
                "csrf_token": CSRF.search(page).group(1),
            },
        )
        # 401: the password was hashed and refused; 429: no hash slot.
        return str(status)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            try:
                result = self._attempt(conn)
            except (OSError, http.client.HTTPException) as exc:
                result = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.outcomes[result] += 1
        conn.close()


def test_check_during_password_storm(stack: Stack) -> None:
    headers = _check_headers(stack)
    url = f"http://127.0.0.1:{stack.idp_port}/auth/check"
    outcomes: Counter[str] = Counter()

    def during() -> Load:
        with Storm(stack.idp_port, STORM_CLIENTS) as storm:
            time.sleep(2)
            load = wrk(url, headers)
        outcomes.update(storm.outcomes)
        return load

    alone, stormy = alternate(lambda: wrk(url, headers), during)
    hashed = outcomes["401"]
    report(
        f"/auth/check while {STORM_CLIENTS} clients send wrong passwords, "
        f"{ROUNDS} rounds of {SECONDS} s",
        [
            ("baseline: /auth/check alone", alone.line()),
            ("/auth/check during the storm", stormy.line()),
            (
                "p99 during / p99 alone (goal <= 2)",
                f"{stormy.p99_ms / alone.p99_ms:.2f}",
            ),
            ("wrong passwords hashed and refused (401)", str(hashed)),
            ("answered 429 (hash slots busy)", str(outcomes["429"])),
            (
                "other outcomes",
                ", ".join(
                    f"{k}: {v}"
                    for k, v in sorted(outcomes.items())
                    if k not in ("401", "429")
                )
                or "none",
            ),
        ],
    )
    assert stormy.non_2xx == 0, stormy
    assert hashed > 0, outcomes

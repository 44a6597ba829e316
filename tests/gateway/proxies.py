"""The shipped proxy configurations from deploy/, with their example
addresses swapped for loopback ports, run as real nginx and Caddy."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.gateway.upstream import App

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX = "/usr/sbin/nginx"
CADDY = "/usr/bin/caddy"
START_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    """Return once 127.0.0.1:port accepts connections; fail with the log if
    the process dies or never listens."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{what} exited with {process.returncode}:\n{_tail(log)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} not listening on {port}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Each example value must be in the shipped file: a test that silently
    replaced nothing would be testing some other configuration."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the shipped configuration"
        text = text.replace(old, new)
    return text


def nginx_site(portcullis_port: int, app_port: int, listen_port: int) -> str:
    return substitute(
        (DEPLOY / "nginx" / "portcullis.conf").read_text(),
        {
            "listen 80;": f"listen 127.0.0.1:{listen_port};",
            "server_name app.example.com;": "server_name localhost;",
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{portcullis_port};",
            "server 127.0.0.1:9000;": f"server 127.0.0.1:{app_port};",
        },
    )


def nginx_main(folder: Path, site: Path) -> str:
    """Just enough of nginx.conf to run the site as this user, with every
    file it writes inside ``folder``."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"pid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log info;\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {folder}/access.log;\n"
        f"    client_body_temp_path {folder}/body;\n"
        f"    proxy_temp_path {folder}/proxy;\n"
        f"    fastcgi_temp_path {folder}/fastcgi;\n"
        f"    uwsgi_temp_path {folder}/uwsgi;\n"
        f"    scgi_temp_path {folder}/scgi;\n"
        f"    include {site};\n"
        "}\n"
    )


def caddyfile(
    portcullis_port: int, app_port: int, listen_port: int, folder: Path
) -> str:
    site = substitute(
        (DEPLOY / "caddy" / "Caddyfile").read_text(),
        {
            "app.example.com {": f"http://localhost:{listen_port} {{",
            "forward_auth 127.0.0.1:8000 {": f"forward_auth 127.0.0.1:{portcullis_port} {{",
            "reverse_proxy 127.0.0.1:9000 {": f"reverse_proxy 127.0.0.1:{app_port} {{",
        },
    )
    # Global options go first; the shipped file has none.
    options = (
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\tstorage file_system {folder}/storage\n"
        "}\n\n"
    )
    return options + site


@dataclass
class Proxy:
    name: str
    origin: str
    app: App
    process: subprocess.Popen[bytes]
    log: Path
    # nginx cannot remove headers by pattern: only the six identity headers
    # are replaced there, any other client-sent X-Auth-* passes.
    strips_every_auth_header: bool

    def url(self, path: str) -> str:
        return self.origin + path


def start_nginx(folder: Path, portcullis_port: int, app: App) -> Proxy:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = folder / "site.conf"
    site.write_text(nginx_site(portcullis_port, app.port, port))
    main = folder / "nginx.conf"
    main.write_text(nginx_main(folder, site))
    log = folder / "error.log"
    with (folder / "stderr.log").open("wb") as out:
        process = subprocess.Popen(
            [NGINX, "-e", str(log), "-p", str(folder), "-c", str(main)]
            + ["-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _started("nginx", port, app, process, log, strips=False)


def start_caddy(folder: Path, portcullis_port: int, app: App) -> Proxy:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "Caddyfile"
    config.write_text(caddyfile(portcullis_port, app.port, port, folder))
    log = folder / "caddy.log"
    # Caddy keeps state under HOME and the XDG folders: all in the scratch
    # folder, never in the real home.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "XDG_CONFIG_HOME": str(folder / "config"),
        "XDG_DATA_HOME": str(folder / "data"),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _started("caddy", port, app, process, log, strips=True)


def _started(
    name: str,
    port: int,
    app: App,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    strips: bool,
) -> Proxy:
    try:
        wait_for_port(port, process, log, name)
    except BaseException:
        stop_process(process)
        raise
    origin = f"http://localhost:{port}"
    app.audience = origin
    return Proxy(name, origin, app, process, log, strips)

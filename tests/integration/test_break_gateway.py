"""A second attack pass on issue 3: the shipped nginx example, the built-in
reverse proxy, start-up checks of the routes, trusted proxies and the
Security tab. Each test is an attack that must hold; the earlier pass is in
test_gateway_attacks.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from idp.app import create_app
from idp.db import db
from idp.models import IpAllowEntry, SecurityPolicy
from idp.settings import SettingsError, load_settings
from tests.conftest import login, make_user, make_workspace, post_form, signed_in
from tests.conftest import session_cookie as cookie_of
from tests.gateway.proxies import nginx_main, nginx_site
from tests.integration.test_gateway import (
    APP_HOST,
    PUBLIC,
    issue,
    nginx,
)
from tests.integration.test_gateway_attacks import _free_port, _wait_port
from tests.integration.test_reverse_proxy import (
    API,
    Upstream,
    _running_upstream,
)

# --- the nginx example judges the site it serves ----------------------------


@pytest.fixture
def nginx_example(tmp_path: Path) -> Iterator[tuple[int, Upstream, Upstream]]:
    """deploy/nginx/portcullis.conf as shipped (server_name localhost), with
    a recording stand-in for Portcullis that allows every request, and a
    recording app."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("nginx is not installed (./scripts/test installs it)")
    with _running_upstream() as check, _running_upstream() as app:
        port = _free_port()
        site = tmp_path / "site.conf"
        site.write_text(
            nginx_site(urlsplit(check.url).port, urlsplit(app.url).port, port)
        )
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / name).mkdir()
        main = tmp_path / "nginx.conf"
        main.write_text(nginx_main(tmp_path, site))
        process = subprocess.Popen(
            [binary, "-e", str(tmp_path / "error.log"), "-p", str(tmp_path)]
            + ["-c", str(main), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(port, process)
            yield port, check, app
        finally:
            process.terminate()
            process.wait(10)


def _raw(port: int, request: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        return int(sock.makefile("rb").readline().split()[1])


def _asked_about(check: Upstream) -> list[str | None]:
    return [
        urlsplit(seen.header("X-Original-URL") or "").hostname for seen in check.seen
    ]


def test_nginx_example_asks_about_the_site_it_serves(nginx_example):
    port, check, app = nginx_example
    status = _raw(port, f"GET /page HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")
    assert status == 200
    assert app.seen[-1].path == "/page"
    assert check.seen[-1].header("X-Original-URL") == f"http://localhost:{port}/page"


@pytest.mark.parametrize(
    "request_line_and_host",
    [
        # nginx picks the server by the request line's host and ignores Host;
        # X-Original-URL was built from Host.
        "GET http://localhost:{port}/admin HTTP/1.1\r\nHost: wiki.example.com",
        "GET http://LOCALHOST/admin HTTP/1.1\r\nHost: wiki.example.com:{port}",
        # A Host no server_name matches goes to the default server: this one.
        "GET /admin HTTP/1.1\r\nHost: wiki.example.com",
        "GET /admin HTTP/1.1\r\nHost: localhost.wiki.example.com",
    ],
    ids=["absolute-form", "absolute-form-upper", "default-server", "suffix"],
)
def test_nginx_example_never_judges_another_site_than_it_serves(
    nginx_example, request_line_and_host
):
    # With a second protected host whose rules are looser (wiki.example.com,
    # open to every member), Portcullis would allow a reader here by wiki's
    # rules while nginx hands the request to this app.
    port, check, app = nginx_example
    request = request_line_and_host.format(port=port) + "\r\n\r\n"
    status = _raw(port, request)
    assert app.seen == [] or set(_asked_about(check)) == {"localhost"}, (
        status,
        _asked_about(check),
    )


# --- the built-in proxy: the upstream's base path is a boundary --------------

TOOLS = "tools.localhost"


class TestUpstreamBasePath:
    """One backend mounted twice: the host's "/" at /site for everyone, and
    /reports (admins only) at /private."""

    @pytest.fixture
    def overrides(self, upstream: Upstream) -> dict[str, Any]:
        return {
            "gateway": {
                "protected_hosts": [TOOLS],
                "routes": [
                    {"host": TOOLS, "path": "/", "upstream": upstream.url + "/site"},
                    {
                        "host": TOOLS,
                        "path": "/reports",
                        "roles": ["admin"],
                        "upstream": upstream.url + "/private",
                    },
                ],
            },
            "sessions": {"cookie_domain": "localhost"},
        }

    @pytest.fixture
    def reader(self, app) -> str:  # type: ignore[no-untyped-def]
        ws = make_workspace(app)
        make_user(app, ws, "clerk@example.com")
        token = cookie_of(signed_in(app, "clerk@example.com"))
        assert token
        return token

    @staticmethod
    def send(app, path: str, token: str, **headers: str):  # type: ignore[no-untyped-def]
        client = app.test_client(use_cookies=False)
        sent = {**API, "Cookie": f"portcullis_session={token}", **headers}
        return client.get(path, base_url=f"http://{TOOLS}", headers=sent)

    def test_paths_within_the_base_reach_it(self, app, upstream, reader):
        assert self.send(app, "/a/b?c=1", reader).status_code == 200
        assert self.send(app, "/a/../b", reader).status_code == 200
        assert [seen.path for seen in upstream.seen] == ["/site/a/b?c=1", "/site/b"]
        assert self.send(app, "/reports/q3", reader).status_code == 403

    @pytest.mark.parametrize(
        "path",
        [
            "/../private/q3",
            "/x/../../private/q3",
            "/%2e%2e/private/q3",
            "/x/%2E%2E/%2e%2e/private/q3",
            "/..%2fprivate/q3",
            "/..;/private/q3",
            "/x//../../private/q3",
            "/..\\private/q3",
            "/..",
        ],
    )
    def test_dot_segments_never_climb_out_of_the_base(
        self, app, upstream, reader, path
    ):
        # Each server, ours (urllib3 resolves literal dot segments) or the
        # upstream, clamps a climb at its own root: /site/../private is the
        # admins-only mount, reached through the route open to everyone.
        response = self.send(app, path, reader)
        assert response.status_code in (400, 403), (path, response.status_code)
        assert upstream.seen == []

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("X-Original-URL", "/reports/q3"),
            ("X-Rewrite-URL", "/reports/q3"),
            ("X-Original-Method", "DELETE"),
            ("X-Host", "evil.example"),
        ],
    )
    def test_headers_that_rename_the_request_never_reach_the_upstream(
        self, app, upstream, reader, name, value
    ):
        # Some frameworks route by these (IIS, older Symfony and Zend): the
        # app would serve /reports, which the check never judged. The nginx,
        # Caddy and Traefik examples drop the same names.
        response = self.send(app, "/public", reader, **{name: value})
        assert response.status_code == 200
        assert upstream.seen[-1].header(name) is None
        assert all(value not in v for _, v in upstream.seen[-1].headers)


# --- start-up: a route may not take Portcullis's own pages -------------------


@pytest.mark.parametrize(
    "path", ["/Login", "/PORTAL", "/Auth/", "/.Well-Known", "/Static/x", "/LOGOUT"]
)
def test_a_route_on_the_public_host_cannot_take_our_pages_by_case(
    database_url, keys_dir, tmp_path, path
):
    # Routes match paths regardless of case, so /Login would send /login,
    # the sign-in page, to the upstream on Portcullis's own origin.
    values = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(tmp_path / "instance"),
        "public_url": "http://localhost",
        "gateway": {
            "routes": [
                {"host": "localhost", "path": path, "upstream": "http://127.0.0.1:9"}
            ]
        },
    }
    with pytest.raises(SettingsError, match="overlaps Portcullis's own pages"):
        create_app(load_settings(environ={}, overrides=values))


# --- trusted proxies written as IPv4-mapped IPv6 ----------------------------


@pytest.mark.parametrize(
    ("trusted", "peer"),
    [
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("::ffff:10.0.0.0/120", "10.0.0.5"),
        ("::ffff:10.0.0.5/128", "::ffff:10.0.0.5"),
    ],
)
def test_a_mapped_trusted_proxy_is_the_same_proxy(
    database_url, keys_dir, tmp_path, clock, trusted, peer
):
    # The listening socket decides whether a peer shows as 10.0.0.5 or as
    # ::ffff:10.0.0.5, and every address is compared in its IPv4 form: the
    # setting must be too, or the proxy is never trusted.
    values = {
        "database_url": database_url,
        "keys_dir": str(keys_dir),
        "instance_dir": str(tmp_path / "instance"),
        "public_url": PUBLIC,
        "gateway": {"trusted_proxies": [trusted], "protected_hosts": [APP_HOST]},
    }
    app = create_app(load_settings(environ={}, overrides=values), clock=clock)
    try:
        ws = make_workspace(app)
        member = make_user(app, ws, "ann@example.com")
        response = nginx(app, token=issue(app, member), peer=peer)
        assert response.status_code == 200, response.headers.get("X-Portcullis-Reason")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# --- the Security tab survives an entry it cannot read -----------------------

SECURITY = "/portal/security"


@pytest.fixture
def workspace_with_bad_entry(app):  # type: ignore[no-untyped-def]
    """A workspace whose stored allow-list holds an entry that does not
    parse (written by hand, or by an older version): the pipeline leaves
    it out, and the admin must be able to see and remove it."""
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    with app.app_context():
        for network in ("not-a-network", "127.0.0.1/32"):
            db.session.add(IpAllowEntry(workspace_id=ws.id, network=network))
        db.session.commit()
    return ws


def _set_restriction(app, ws, on: bool) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.session.execute(
            sa.update(SecurityPolicy)
            .where(SecurityPolicy.workspace_id == ws.id)
            .values(ip_restriction_enabled=on)
        )
        db.session.commit()


def _entry_id(app, network: str) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        return str(
            db.session.scalar(
                sa.select(IpAllowEntry.id).where(IpAllowEntry.network == network)
            )
        )


@pytest.mark.parametrize("restriction", [False, True], ids=["off", "on"])
def test_an_unreadable_entry_never_breaks_the_security_tab(
    app, workspace_with_bad_entry, restriction
):
    ws = workspace_with_bad_entry
    _set_restriction(app, ws, restriction)
    admin = app.test_client()
    assert login(admin, "ann@example.com").status_code == 302

    page = admin.get(SECURITY)
    assert page.status_code == 200
    assert "not-a-network" in page.get_data(as_text=True)

    def post(path: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
        return post_form(admin, SECURITY + path, data, csrf_page=SECURITY)

    assert post("/ip/entries", {"network": "198.51.100.0/24"}).status_code == 302
    assert post("/ip/my-ip", {}).status_code == 400  # 127.0.0.1 is listed
    # Switched to the other state; on needs the admin's 127.0.0.1 listed.
    assert post("/ip", {} if restriction else {"enabled": "1"}).status_code == 302
    bad = _entry_id(app, "not-a-network")
    assert post(f"/ip/{bad}/remove", {}).status_code == 302
    with app.app_context():
        left = sorted(db.session.scalars(sa.select(IpAllowEntry.network)))
    assert left == ["127.0.0.1/32", "198.51.100.0/24"]


def test_an_unreadable_entry_never_vouches_for_the_admin(app):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    with app.app_context():
        db.session.add(IpAllowEntry(workspace_id=ws.id, network="not-a-network"))
        db.session.commit()
    admin = app.test_client()
    assert login(admin, "ann@example.com").status_code == 302
    refused = post_form(admin, SECURITY + "/ip", {"enabled": "1"}, csrf_page=SECURITY)
    assert refused.status_code == 409


# --- a member deleted while their request is being checked -------------------


def _delete_member(app, user) -> None:  # type: ignore[no-untyped-def]
    """What deleting a member does to the rows, committed on another
    connection, as another request would."""
    from idp.models import Session, User

    with db.engine.begin() as connection:
        connection.execute(sa.delete(Session).where(Session.user_id == user.id))
        connection.execute(sa.delete(User).where(User.id == user.id))


GATEWAY_ROUTES = [{"host": APP_HOST, "path": "/admin", "roles": ["admin"]}]


class TestDeletedDuringTheCheck:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {
            "public_url": PUBLIC,
            "gateway": {
                "trusted_proxies": ["10.0.0.5"],
                "protected_hosts": [APP_HOST],
                "routes": GATEWAY_ROUTES,
            },
        }

    def test_while_a_policy_refuses_the_session(self, app, monkeypatch):
        from idp.services import sessions

        ws = make_workspace(app)
        member = make_user(app, ws, "rob@example.com")
        token = issue(app, member)
        with app.app_context():
            db.session.execute(
                sa.update(SecurityPolicy)
                .where(SecurityPolicy.workspace_id == ws.id)
                .values(relogin_days=1)
            )
            db.session.commit()
        app.extensions["idp"].clock.advance(days=2)
        judge = sessions._judge

        def deleted_meanwhile(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
            decision = judge(*args, **kwargs)
            _delete_member(app, member)
            return decision

        monkeypatch.setattr(sessions, "_judge", deleted_meanwhile)
        response = nginx(app, f"https://{APP_HOST}/x", token=token)
        assert response.status_code == 401

    def test_while_the_role_rule_refuses_it(self, app, monkeypatch):
        from idp.services import gateway

        ws = make_workspace(app)
        member = make_user(app, ws, "rob@example.com")
        token = issue(app, member)

        def deleted_meanwhile(host: str, path: str, role: str) -> bool:
            _delete_member(app, member)
            return False

        monkeypatch.setattr(gateway, "role_allowed", deleted_meanwhile)
        response = nginx(app, f"https://{APP_HOST}/admin", token=token)
        assert response.status_code == 401

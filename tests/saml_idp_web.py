"""The test SAML IdP (tests/saml_idp.py) behind a small web server, for
browser tests: it takes our AuthnRequest by HTTP-Redirect, shows a sign-in
page, and answers the ACS with a signed Response by HTTP-POST, as a company
IdP would."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.saml_idp import TestIdp

Environ = Mapping[str, object]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        # Request lines carry SAMLRequest and RelayState; keep them out.
        pass


@dataclass
class WebIdp:
    """The IdP at ``url``; ``people`` maps an email the sign-in page accepts
    to the attributes sent for it."""

    idp: TestIdp
    url: str
    sp_entity_id: str
    people: dict[str, dict[str, Sequence[str]]] = field(default_factory=dict)
    # AuthnRequest ids received, in order.
    requests: list[str] = field(default_factory=list)

    def __call__(self, environ: Environ, start_response):  # type: ignore[no-untyped-def]
        path = str(environ.get("PATH_INFO", ""))
        method = str(environ.get("REQUEST_METHOD", "GET"))
        if path == "/sso" and method == "GET":
            return self._sign_in_page(environ, start_response)
        if path == "/sso/login" and method == "POST":
            return self._answer(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    def _sign_in_page(self, environ: Environ, start_response):  # type: ignore[no-untyped-def]
        url = f"{self.url}/sso?{environ.get('QUERY_STRING', '')}"
        seen = self.idp.read_request(url, "")
        self.requests.append(seen.id)
        fields = {
            "request_id": seen.id,
            "acs_url": seen.acs_url or "",
            "relay_state": seen.relay_state or "",
        }
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
            for k, v in fields.items()
        )
        body = (
            "<!doctype html><title>Test IdP</title><h1>Test IdP sign-in</h1>"
            f'<form method="post" action="/sso/login">{hidden}'
            '<label>Company email <input name="email" type="email"></label>'
            "<button>Sign in at the IdP</button></form>"
        )
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode()]

    def _answer(self, environ: Environ, start_response):  # type: ignore[no-untyped-def]
        size = int(str(environ.get("CONTENT_LENGTH") or "0"))
        stream = environ["wsgi.input"]
        form = {
            k: v[0]
            for k, v in parse_qs(stream.read(size).decode()).items()  # type: ignore[attr-defined]
        }
        email = form.get("email", "")
        if email not in self.people:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"unknown person at the test IdP"]
        acs = form["acs_url"]
        response = self.idp.response(
            now=datetime.now(UTC),
            audience=self.sp_entity_id,
            recipient=acs,
            destination=acs,
            in_response_to=form["request_id"],
            name_id=email,
            attributes=self.people[email],
        )
        # The HTTP-POST binding: a form the person sends on (a button
        # rather than a script, so the test clicks what a person would).
        body = (
            "<!doctype html><title>Test IdP</title>"
            f'<form method="post" action="{html.escape(acs)}">'
            f'<input type="hidden" name="SAMLResponse" value="{response}">'
            '<input type="hidden" name="RelayState" '
            f'value="{html.escape(form.get("relay_state", ""))}">'
            "<button>Continue to the app</button></form>"
        )
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode()]


@contextmanager
def serve_idp(folder: Path, sp_entity_id: str) -> Iterator[WebIdp]:
    """A WebIdp on a free port of localhost, in a thread."""
    server: WSGIServer = make_server(
        "127.0.0.1", 0, lambda e, s: [], handler_class=_Quiet
    )
    port = server.server_address[1]
    url = f"http://localhost:{port}"
    web = WebIdp(
        TestIdp(folder, entity_id=f"{url}/metadata", sso_url=f"{url}/sso"),
        url,
        sp_entity_id,
    )
    server.set_app(web)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()


def host_of(url: str) -> str:
    return urlsplit(url).netloc

"""The app behind the proxies: it records every request it receives and
verifies the identity assertion as a real app would."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

APP_BODY = "hello from the protected app"


@dataclass
class Seen:
    """One request as the app received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    # The verified assertion's claims, or why it did not verify.
    claims: dict[str, Any] | None
    assertion_error: str | None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def one(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"{name}: {values}"
        return values[0]

    def auth_header_names(self) -> set[str]:
        return {k.title() for k, _ in self.headers if k.lower().startswith("x-auth-")}

    def cookie_names(self) -> list[str]:
        names = []
        for header in self.all("Cookie"):
            for pair in header.split(";"):
                if pair.strip():
                    names.append(pair.split("=", 1)[0].strip())
        return names


class App:
    """The upstream behind a proxy: records every request and verifies the
    assertion as a real app would, against Portcullis's published keys,
    for its own origin as audience."""

    def __init__(self, issuer: str, jwks_url: str) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audience = ""
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def last(self) -> Seen:
        with self._lock:
            assert self.seen, "the app was never reached"
            return self.seen[-1]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid assertion for this app; raises otherwise."""
        if self._keys is None:
            with urllib.request.urlopen(self.jwks_url, timeout=5) as response:
                self._keys = KeySet.import_key_set(json.load(response))
        decoded = jwt.decode(token, self._keys, algorithms=["ES256"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        ).validate(decoded.claims)
        return dict(decoded.claims)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(self.rfile.read(length))

            def _answer(self, body: bytes) -> None:
                claims, error = None, None
                token = self.headers.get("X-Auth-Assertion")
                if token:
                    try:
                        claims = app.verify(token)
                    except (JoseError, ValueError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                app.record(
                    Seen(
                        self.command,
                        self.path,
                        list(self.headers.items()),
                        body,
                        claims,
                        error,
                    )
                )
                text = f"<!doctype html><title>App</title><p>{APP_BODY}</p>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

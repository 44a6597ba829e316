"""OpenID providers on loopback for the relying-party tests.

``running_mock``: the oidc-provider-mock package, a real provider (authlib
underneath) whose authorization page takes a subject in a form.
``StubIdp``: a few lines of WSGI that publish a discovery document and a
JWKS and answer the token endpoint with whatever ID token a test crafted,
for the attacks no honest provider would sign (OIDC-1, OIDC-2, Entra).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

CLIENT_ID = "portcullis-test"
CLIENT_SECRET = "test-client-secret-Zq8v"
TENANT = "9b1c2d3e-4f50-4a6b-8c7d-8e9fa0b1c2d3"
OTHER_TENANT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"


class _Quiet(WSGIRequestHandler):
    # Request lines carry states, nonces and codes: keep them out of the
    # captured logs the suite searches for secrets.
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def serving(app: Callable[..., Any]) -> Iterator[BaseWSGIServer]:
    """A WSGI app on 127.0.0.1 in a thread, for the length of the block."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


def base_url(server: BaseWSGIServer) -> str:
    return f"http://127.0.0.1:{server.server_port}"


# --- oidc-provider-mock -----------------------------------------------------


@dataclass
class MockProvider:
    issuer: str

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        status, _, _ = _http("PUT", f"{self.issuer}/users/{sub}", json_body=claims)
        assert status == 204, status

    def authorize(self, url: str, sub: str) -> dict[str, str]:
        """Sign ``sub`` in at the authorization URL, as its form does; the
        query the provider redirects back with."""
        assert url.startswith(self.issuer + "/"), url
        status, headers, body = _http("POST", url, form={"sub": sub})
        assert status == 302, (status, body[:500])
        return dict(parse_qsl(urlsplit(headers["location"]).query))


@contextmanager
def running_mock(**options: Any) -> Iterator[MockProvider]:
    import oidc_provider_mock

    with serving(oidc_provider_mock.app(**options)) as server:
        yield MockProvider(issuer=base_url(server))


def _http(
    method: str,
    url: str,
    *,
    form: dict[str, str] | None = None,
    json_body: Any = None,
) -> tuple[int, dict[str, str], str]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers, body = {}, None
    if form is not None:
        from urllib.parse import urlencode

        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(form)
    elif json_body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(json_body)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text
    finally:
        conn.close()


# --- crafted tokens ---------------------------------------------------------


def rsa_key(kid: str = "rsa-1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)


def ec_key(kid: str = "ec-1", curve: str = "P-256") -> ECKey:
    return ECKey.generate_key(curve, parameters={"kid": kid}, private=True)


def ed_key(kid: str = "ed-1") -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid}, private=True)


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def id_claims(
    issuer: str,
    nonce: str | None,
    *,
    sub: str = "person-1",
    at: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The claims of a good ID token, issued ``at`` (Unix time, default now)."""
    moment = int(time.time() if at is None else at)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": CLIENT_ID,
        "sub": sub,
        "iat": moment,
        "exp": moment + 600,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def sign(
    claims: dict[str, Any],
    key: Key,
    alg: str = "RS256",
    header: dict[str, Any] | None = None,
) -> str:
    head = {"alg": alg, **({"kid": key.kid} if key.kid else {}), **(header or {})}
    with warnings.catch_warnings():
        # joserfc warns about the EdDSA name; the tests sign with it anyway.
        warnings.simplefilter("ignore")
        return jwt.encode(head, claims, key, algorithms=[alg])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def unsigned(claims: dict[str, Any]) -> str:
    """OIDC-1: alg none with an empty signature."""
    return _segments({"alg": "none", "typ": "JWT"}, claims) + "."


def hmac_with_public_key(claims: dict[str, Any], key: RSAKey) -> str:
    """OIDC-1: HS256 under the RSA key's kid, MACed with the text of its
    public PEM, as a verifier that trusts the header would check it."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims)
    secret = key.as_pem(private=False)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


# --- a stub IdP -------------------------------------------------------------


@dataclass
class StubIdp:
    """Publishes discovery and a JWKS; the token endpoint answers with
    ``id_token`` (or ``token_status``/``token_answer``). Counts hits."""

    base: str = ""
    # The issuer path, e.g. "/common/v2.0"; the discovery document sits
    # under it. ``published_issuer`` overrides what the document says.
    path: str = ""
    published_issuer: str | None = None
    keys: list[Key] = field(default_factory=lambda: [rsa_key()])
    algorithms: list[str] = field(default_factory=lambda: ["RS256"])
    auth_methods: list[str] | None = field(
        default_factory=lambda: ["client_secret_post", "client_secret_basic"]
    )
    sends_iss: bool = False
    id_token: str | None = None
    token_status: int = 200
    token_answer: dict[str, Any] | None = None
    jwks_status: int = 200
    hits: dict[str, int] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return self.base + self.path

    @property
    def key(self) -> Key:
        return self.keys[0]

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "issuer": self.published_issuer or self.issuer,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token",
            "jwks_uri": f"{self.base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self.algorithms,
        }
        if self.auth_methods is not None:
            document["token_endpoint_auth_methods_supported"] = self.auth_methods
        if self.sends_iss:
            document["authorization_response_iss_parameter_supported"] = True
        return document

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == f"{self.path}/.well-known/openid-configuration":
            response = _json(self.document())
        elif path == "/jwks":
            response = _json(public_jwks(*self.keys), self.jwks_status)
        elif path == "/token" and request.method == "POST":
            self.token_requests.append(
                {
                    "form": dict(request.form),
                    "authorization": request.headers.get("Authorization"),
                }
            )
            answer = self.token_answer or {
                "access_token": "stub-access-token",
                "token_type": "Bearer",
                "id_token": self.id_token,
            }
            response = _json(answer, self.token_status)
        else:
            response = Response("not found", 404)
        return response(environ, start_response)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status, mimetype="application/json")


@contextmanager
def running_stub(**options: Any) -> Iterator[StubIdp]:
    stub = StubIdp(**options)
    with serving(stub) as server:
        stub.base = base_url(server)
        yield stub

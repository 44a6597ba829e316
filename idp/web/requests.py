"""Per-request plumbing: request id, client address, the session, and the
headers every answer carries."""

from __future__ import annotations

import functools
import logging
import secrets
import time

from flask import Flask, Response, g, request

from idp.clientip import resolve_client
from idp.services import sessions
from idp.services.context import Client, Context
from idp.services.errors import InvalidInput
from idp.services.returnurl import protected_hosts
from idp.state import settings, state

log = logging.getLogger(__name__)


def session_cookie_name() -> str:
    s = settings()
    if s.public_scheme != "https":
        return "portcullis_session"
    if s["sessions"]["cookie_domain"]:
        return "__Secure-portcullis_session"
    return "__Host-portcullis_session"


def current_client() -> Client:
    client = g.get("client")
    if client is None:
        peer = request.remote_addr
        ip = resolve_client(
            peer, request.headers.get("X-Forwarded-For"), state().trusted_proxies
        )
        client = Client(
            ip=ip, peer_ip=peer, user_agent=request.headers.get("User-Agent")
        )
        g.client = client
    return client


def context() -> Context:
    """The acting party for this request."""
    loaded = g.get("loaded")
    if loaded is not None:
        return Context.for_user(loaded.user, current_client(), loaded.session)
    return Context.anonymous(current_client())


def set_session_cookie(response: Response, token: str) -> None:
    s = settings()
    response.set_cookie(
        session_cookie_name(),
        token,
        path="/",
        domain=s["sessions"]["cookie_domain"] or None,
        secure=s.public_scheme == "https",
        httponly=True,
        samesite="Lax",
    )


def clear_session_cookie(response: Response) -> None:
    s = settings()
    response.delete_cookie(
        session_cookie_name(),
        path="/",
        domain=s["sessions"]["cookie_domain"] or None,
        secure=s.public_scheme == "https",
        httponly=True,
        samesite="Lax",
    )


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action {form_action}; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


# Every answer's, unless the view set its own.
STATIC_HEADERS = [
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
]


def content_security_policy() -> str:
    """Our CSP. Browsers apply form-action to the redirect that answers a
    form too, so the sign-in forms may lead to the protected hosts, where
    the person was going; to nowhere else."""
    return _csp(settings().public_scheme, frozenset(protected_hosts()))


@functools.lru_cache(maxsize=8)
def _csp(public_scheme: str, hosts: frozenset[str]) -> str:
    schemes = ("https",) if public_scheme == "https" else ("http", "https")
    sources = ["'self'"] + [
        f"{scheme}://{host}:*" for host in sorted(hosts) for scheme in schemes
    ]
    return CSP.format(form_action=" ".join(sources))


def _refuse_nul() -> None:
    # No field of ours takes a NUL, and PostgreSQL refuses one in any text
    # column: stop it here, once, rather than as a 500 deep in a query.
    for values in (request.args, request.form):
        for key, value in values.items(multi=True):
            if "\x00" in key or "\x00" in value:
                raise InvalidInput(
                    "The request contains a NUL character, which no field accepts.",
                    code="nul_character",
                )


def _larger_bodies(fetch_max_bytes: int) -> dict[str, int]:
    """The POSTs that may run past the app's 64 KiB body limit, and theirs:
    IdP metadata uploads (AD FS publishes 70 KiB) and the IdP's answer at
    the ACS (many groups, an encrypted assertion)."""
    return {
        "portal.sso_saml": fetch_max_bytes + 64 * 1024,
        "sso.saml_acs": 1024 * 1024,
    }


def init_app(app: Flask) -> None:
    larger = _larger_bodies(app.extensions["idp"].settings["sso"]["fetch_max_bytes"])

    @app.before_request
    def _load() -> None:
        g.request_id = secrets.token_hex(8)
        g.started = time.perf_counter()
        g.loaded = None
        g.refused = None
        limit = larger.get(request.endpoint or "") if request.method == "POST" else None
        if limit is not None:
            # Before anything reads the form: Werkzeug applies the limits
            # when it parses the body.
            request.max_content_length = limit
            request.max_form_memory_size = limit
        if request.endpoint in (None, "static", "health.healthz", "health.readyz"):
            return
        if request.endpoint.startswith("gateway."):
            # The gateway checks the session against the original request
            # itself, and never answers with a cookie.
            return
        _refuse_nul()
        token = request.cookies.get(session_cookie_name())
        if token is not None:
            result = sessions.load(token, current_client())
            if isinstance(result, sessions.Refused):
                g.refused = result
            else:
                g.loaded = result
            # Set once the store has answered: a database outage must not
            # clear every cookie it could not check and sign everyone out.
            g.had_session_cookie = True

    https = app.extensions["idp"].settings.public_scheme == "https"

    @app.after_request
    def _headers(response: Response) -> Response:
        # One pass over the answer's headers, not one per default: this runs
        # on every gateway check.
        headers = response.headers
        present = {name.lower() for name, _ in headers}
        defaults = [("Content-Security-Policy", content_security_policy())]
        defaults += STATIC_HEADERS
        if https:
            defaults.append(("Strict-Transport-Security", "max-age=31536000"))
        if request.endpoint != "static":
            defaults.append(("Cache-Control", "no-store"))
        headers.extend(
            [(name, value) for name, value in defaults if name.lower() not in present]
        )
        if (
            g.get("had_session_cookie")
            and g.get("loaded") is None
            and not g.get("cookie_set")
            and not (g.get("refused") is not None and not g.refused.ended)
        ):
            clear_session_cookie(response)
        if request.endpoint != "static":
            # The route pattern, never the path: paths of links carry secrets.
            route = request.url_rule.rule if request.url_rule else "(no route)"
            elapsed = (
                time.perf_counter() - g.get("started", time.perf_counter())
            ) * 1000
            log.info(
                "request method=%s route=%s status=%d ms=%.1f client=%s",
                request.method,
                route,
                response.status_code,
                elapsed,
                current_client().ip or "unknown",
            )
        return response

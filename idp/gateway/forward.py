"""Forward-auth, following each proxy's contract.

``/auth/check`` is for nginx ``auth_request``, which understands only 2xx,
401 and 403 and drops the body: the snippet turns 401 into a redirect to
the ``Location`` we send, and 403 into our refusal page. ``/auth/forward``
is for Caddy ``forward_auth`` and Traefik ``ForwardAuth``, which hand any
non-2xx answer to the client as it is.

Neither endpoint reads or writes the Flask session or sets a cookie: their
answers are about the protected app's request, not about this site.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface

from idp.clientip import is_trusted, parse_address
from idp.services import gateway, reasons
from idp.services.assertions import signer
from idp.state import settings, state
from idp.web.requests import current_client, session_cookie_name

log = logging.getLogger(__name__)
bp = Blueprint("gateway", __name__)

# Identity headers of an allowed answer; never on any other answer (GW-3).
IDENTITY_HEADERS = (
    "X-Auth-User",
    "X-Auth-Email",
    "X-Auth-Name",
    "X-Auth-Role",
    "X-Auth-Workspace",
    "X-Auth-Assertion",
)
# Kept readable in an encoded header value: everything printable in ASCII but
# "%" itself, so that decoding is never ambiguous.
HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
# Only what the proxies send. OPTIONS is not answered for us by Flask: its
# automatic 200 would read as "allowed" to a proxy that forwards the method.
CHECK_METHODS = ["GET", "HEAD"]


CHECK_PATH = "/auth/check"
FORWARD_PATH = "/auth/forward"
CHECK_PATHS = frozenset({CHECK_PATH, FORWARD_PATH})

# What a proxy sends to name the request it asks about.
ORIGINAL_HEADERS = (
    "X-Original-URL",
    "X-Original-Method",
    "X-Forwarded-Host",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
)


def is_check() -> bool:
    """Whether this request is one of the two checks, which no rate limit
    applies to. By path, so that it can be asked before routing."""
    return request.path in CHECK_PATHS


def _from_trusted_proxy() -> bool:
    if is_trusted(parse_address(request.remote_addr), state().trusted_proxies):
        return True
    if any(name in request.headers for name in ORIGINAL_HEADERS):
        # Ignored, as from any client; but a proxy missing from
        # gateway.trusted_proxies gets no route rule and no return URL, and
        # the operator should hear of it.
        log.warning("gateway.untrusted_peer peer=%s", request.remote_addr)
    return False


def _original_for_nginx() -> gateway.Original | gateway.Unreadable | None:
    """nginx's X-Original-URL and X-Original-Method; nothing else is read,
    since nginx hands the client's own headers to the subrequest too."""
    if not _from_trusted_proxy():
        return None
    headers = request.headers
    url = headers.get("X-Original-URL")
    method = headers.get("X-Original-Method")
    return gateway.Original.parse(method, url) or gateway.Unreadable(
        f"{method or ''} {url or '(no X-Original-URL)'}"
    )


def _original_for_forward() -> gateway.Original | gateway.Unreadable | None:
    """Caddy's and Traefik's X-Forwarded-Method/-Proto/-Host/-Uri."""
    if not _from_trusted_proxy():
        return None
    headers = request.headers
    method = headers.get("X-Forwarded-Method")
    proto = headers.get("X-Forwarded-Proto")
    host = headers.get("X-Forwarded-Host")
    uri = headers.get("X-Forwarded-Uri")
    return gateway.Original.from_parts(method, proto, host, uri) or gateway.Unreadable(
        f"{method or ''} {proto or ''}://{host or ''}{uri or ''}"
    )


def _verdict(original: gateway.Original | gateway.Unreadable | None) -> gateway.Verdict:
    token = request.cookies.get(session_cookie_name())
    return gateway.check(token, current_client(), original)


def header_value(text: str) -> str:
    """Printable ASCII without "%" as is; anything else percent-encoded as
    UTF-8, so a header never carries bytes a proxy or app could misread and
    an app may always percent-decode."""
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    return quote(text, safe=HEADER_SAFE)


def _allowed(identity: gateway.Identity) -> Response:
    response = Response(status=200)
    response.headers.update(
        {
            "X-Auth-User": identity.user_id,
            "X-Auth-Email": header_value(identity.email),
            "X-Auth-Name": header_value(identity.name),
            "X-Auth-Role": identity.role,
            "X-Auth-Workspace": identity.workspace,
            "X-Auth-Assertion": identity.assertion,
        }
    )
    return response


def _wants_html() -> bool:
    """A browser navigating: it names text/html in Accept and prefers it to
    JSON. ``*/*`` alone (curl, fetch) is not a browser."""
    accept = request.accept_mimetypes
    named = any(
        value in ("text/html", "application/xhtml+xml") and quality > 0
        for value, quality in accept
    )
    return named and accept.best_match(["text/html", "application/json"]) == (
        "text/html"
    )


def _denied(reason: str) -> Response:
    """The refusal page, shown under the protected app's address as often as
    under ours: every asset comes from the public URL, and nothing else may
    load or run."""
    base = settings().public_url
    page = render_template(
        "gateway/denied.html",
        reason=reason,
        message=reasons.message(reason),
        asset_base=base,
        public_url=base,
    )
    response = Response(page, 403, mimetype="text/html")
    response.headers["X-Portcullis-Reason"] = reason
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {base}; img-src {base}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return response


@bp.route(CHECK_PATH, methods=CHECK_METHODS, provide_automatic_options=False)
def check() -> Response:
    """nginx auth_request: 200, 401 with the sign-in URL, or 403 with a
    reason code."""
    verdict = _verdict(_original_for_nginx())
    if verdict.outcome == "allow":
        assert verdict.identity is not None
        return _allowed(verdict.identity)
    reason = verdict.reason or "denied"
    if verdict.outcome == "sign_in":
        response = Response(status=401)
        response.headers["Location"] = verdict.login_url or ""
        response.headers["X-Portcullis-Reason"] = reason
        return response
    response = Response(status=403)
    response.headers["X-Portcullis-Reason"] = reason
    return response


@bp.route(FORWARD_PATH, methods=CHECK_METHODS, provide_automatic_options=False)
def forward() -> Response:
    """Caddy forward_auth and Traefik ForwardAuth: 200; a browser is sent to
    sign in (302), anything else gets 401; 403 with a page saying why."""
    verdict = _verdict(_original_for_forward())
    if verdict.outcome == "allow":
        assert verdict.identity is not None
        return _allowed(verdict.identity)
    if verdict.outcome == "deny":
        return _denied(verdict.reason or "denied")
    return sign_in_answer(verdict)


def sign_in_answer(verdict: gateway.Verdict) -> Response:
    """Someone to sign in: a browser is sent to the sign-in page (302),
    anything else gets 401 with the reason."""
    if _wants_html():
        response = Response(status=302)
        response.headers["Location"] = verdict.login_url or ""
    else:
        response = Response(
            '{"error": "unauthenticated"}\n', 401, mimetype="application/json"
        )
        response.headers["WWW-Authenticate"] = 'Cookie realm="portcullis"'
    response.headers["X-Portcullis-Reason"] = verdict.reason or "not_signed_in"
    return response


@bp.get("/auth/denied")
def denied() -> Response:
    """The refusal page the nginx snippet shows for a 403 from /auth/check.
    Only known reason codes are shown; anything else reads as a plain
    refusal, so a crafted link cannot make the page say something else."""
    reason = request.args.get("reason", "")
    if reason not in reasons.MESSAGES:
        reason = "denied"
    response = _denied(reason)
    # The page itself was served as asked; the refusal's 403 is the one
    # nginx keeps from the check (error_page without "=").
    response.status_code = 200
    return response


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    """The public keys that verify assertions, the previous ones included."""
    response = jsonify(signer().jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    # Public keys: any page may read them.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


class _FlowCookieExceptForChecks(SecureCookieSessionInterface):
    """Flask's signed-cookie session (our flow cookie), never opened for the
    two checks: they answer about another site's request, and opening it
    would cost a serializer and a signature check on every one."""

    def open_session(self, app: Flask, request):  # type: ignore[no-untyped-def]
        if request.path in CHECK_PATHS:
            return self.null_session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    app.session_interface = _FlowCookieExceptForChecks()

    @app.after_request
    def _no_identity_unless_allowed(response: Response) -> Response:
        # Whatever path produced it (an error handler included), a non-200
        # answer carries no identity.
        if response.status_code != 200:
            for name in IDENTITY_HEADERS:
                response.headers.pop(name, None)
        return response

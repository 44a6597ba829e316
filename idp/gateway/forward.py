"""Forward-auth, following each proxy's contract.

``/auth/check`` is for nginx ``auth_request``, which understands only 2xx,
401 and 403 and drops the body: the snippet turns 401 into a redirect to
the ``Location`` we send, and 403 into our refusal page. ``/auth/forward``
is for Caddy ``forward_auth`` and Traefik ``ForwardAuth``, which hand any
non-2xx answer to the client as it is.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, jsonify, render_template, request

from idp.clientip import is_trusted, parse_address
from idp.services import gateway, reasons
from idp.services.assertions import signer
from idp.state import settings, state
from idp.web.requests import current_client, session_cookie_name

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


def _from_trusted_proxy() -> bool:
    return is_trusted(parse_address(request.remote_addr), state().trusted_proxies)


def _original_for_nginx() -> gateway.Original | None:
    if not _from_trusted_proxy():
        return None
    headers = request.headers
    return (
        gateway.Original.parse(
            headers.get("X-Original-Method"), headers.get("X-Original-URL")
        )
        or _original_for_forward()
    )


def _original_for_forward() -> gateway.Original | None:
    if not _from_trusted_proxy():
        return None
    headers = request.headers
    return gateway.Original.from_parts(
        headers.get("X-Forwarded-Method"),
        headers.get("X-Forwarded-Proto"),
        headers.get("X-Forwarded-Host"),
        headers.get("X-Forwarded-Uri"),
    )


def _verdict(original: gateway.Original | None) -> gateway.Verdict:
    token = request.cookies.get(session_cookie_name())
    return gateway.check(token, current_client(), original)


def header_value(text: str) -> str:
    """Plain ASCII as is; anything else percent-encoded as UTF-8, so a
    header never carries bytes a proxy or app could misread."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=" !#$&'()*+,/:;=?@[]~")


def _allowed(identity: gateway.Identity) -> Response:
    response = Response(status=200)
    response.headers.update(
        {
            "X-Auth-User": identity.user_id,
            "X-Auth-Email": identity.email,
            "X-Auth-Name": header_value(identity.name),
            "X-Auth-Role": identity.role,
            "X-Auth-Workspace": identity.workspace,
            "X-Auth-Assertion": identity.assertion,
        }
    )
    return response


def _wants_html() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "text/html" and request.accept_mimetypes["text/html"] > 0


@bp.route("/auth/check", methods=["GET", "HEAD"])
def check() -> Response:
    verdict = _verdict(_original_for_nginx())
    if verdict.outcome == "allow":
        assert verdict.identity is not None
        return _allowed(verdict.identity)
    if verdict.outcome == "sign_in":
        response = Response(status=401)
        response.headers["Location"] = verdict.login_url or ""
        response.headers["X-Portcullis-Reason"] = verdict.reason or "not_signed_in"
        return response
    response = Response(status=403)
    response.headers["X-Portcullis-Reason"] = verdict.reason or "denied"
    return response


@bp.route("/auth/forward", methods=["GET", "HEAD"])
def forward() -> Response | tuple[str, int]:
    verdict = _verdict(_original_for_forward())
    if verdict.outcome == "allow":
        assert verdict.identity is not None
        return _allowed(verdict.identity)
    reason = verdict.reason or "denied"
    if verdict.outcome == "sign_in":
        if _wants_html():
            response = Response(status=302)
            response.headers["Location"] = verdict.login_url or ""
        else:
            response = Response(
                '{"error": "unauthenticated"}\n', 401, mimetype="application/json"
            )
            response.headers["WWW-Authenticate"] = 'Cookie realm="portcullis"'
        response.headers["X-Portcullis-Reason"] = reason
        return response
    response = Response(_denied_page(reason), 403, mimetype="text/html")
    response.headers["X-Portcullis-Reason"] = reason
    # Shown under the protected app's address: its styles come from ours.
    base = settings().public_url
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {base}; img-src {base}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return response


def _denied_page(reason: str) -> str:
    base = settings().public_url
    return render_template(
        "gateway/denied.html",
        reason=reason,
        message=reasons.message(reason),
        asset_base=base,
        public_url=base,
    )


@bp.get("/auth/denied")
def denied() -> tuple[str, int]:
    """The refusal page the nginx snippet shows for a 403 from /auth/check.
    Only known reason codes are shown; anything else reads as a plain
    refusal."""
    reason = request.args.get("reason", "")
    if reason not in reasons.MESSAGES:
        reason = "denied"
    return _denied_page(reason), 403


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(signer().jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def init_app(app) -> None:  # type: ignore[no-untyped-def]
    @app.after_request
    def _no_identity_unless_allowed(response: Response) -> Response:
        # Whatever path produced it, a non-200 answer carries no identity.
        if response.status_code != 200:
            for name in IDENTITY_HEADERS:
                response.headers.pop(name, None)
        return response

"""Enterprise SSO endpoints: our SAML metadata, the start of a sign-in at the
company IdP, and the IdP's answer (SAML ACS, OIDC callback).

The answer comes back cross-site (the IdP POSTs to the ACS, or redirects to
the callback), when the Lax session cookie is not sent on a POST. A separate
short-lived cookie, ``SameSite=None; Secure``, binds the sign-in to the
browser that began it: its hash is stored with the outstanding request, and
an answer arriving without it is refused (login CSRF, SECURITY.md 7.6.2).
Browsers keep ``Secure`` cookies on ``http://localhost`` too.
"""

from __future__ import annotations

import secrets
import uuid

from flask import Blueprint, Response, abort, redirect, request, url_for

from idp.db import db
from idp.models import SsoConnection, Workspace
from idp.services.returnurl import safe_return_url
from idp.services.sso import SsoRefused, connections, federation
from idp.services.sso import requests as sso_requests
from idp.state import settings
from idp.web.errors import error_page
from idp.web.requests import context

bp = Blueprint("sso", __name__, url_prefix="/sso")

BINDING_SECONDS = 600
MAX_FORM_FIELD = 512 * 1024


def binding_cookie_name() -> str:
    return (
        "__Host-portcullis_sso"
        if settings().public_scheme == "https"
        else "portcullis_sso"
    )


def current_binding() -> str | None:
    """This browser's SSO binding, as its cookie holds it."""
    value = request.cookies.get(binding_cookie_name())
    if not value or len(value) > 128:
        return None
    return value


def send_to_idp(
    workspace: Workspace,
    connection: SsoConnection,
    *,
    purpose: str = "signin",
    return_to: str | None = None,
    requested_by: uuid.UUID | None = None,
) -> Response:
    """Begin a sign-in (or a *Test connection*) at the company IdP: the
    request recorded, the binding cookie set, the browser sent on."""
    binding = current_binding() or secrets.token_urlsafe(32)
    start = _protocol(connection).start
    target = start(
        context(),
        workspace,
        connection,
        binding=binding,
        purpose=purpose,
        return_to=safe_return_url(return_to),
        requested_by=requested_by,
    )
    response = redirect(target)
    response.set_cookie(
        binding_cookie_name(),
        binding,
        max_age=BINDING_SECONDS,
        path="/",
        # None: the IdP's POST or redirect back is cross-site. Secure is
        # what browsers require of SameSite=None (and keep on localhost).
        secure=True,
        httponly=True,
        samesite="None",
    )
    return response


def _protocol(connection: SsoConnection):  # type: ignore[no-untyped-def]
    if connection.protocol == "saml":
        from idp.services.sso import saml

        return saml
    from idp.services.sso import oidc

    return oidc


@bp.get("/saml/<slug>/metadata")
def saml_metadata(slug: str):  # type: ignore[no-untyped-def]
    from idp.services.sso import saml

    workspace = db.session.scalar(
        db.select(Workspace).where(Workspace.slug == slug[:63])
    )
    connection = (
        connections.for_workspace(workspace.id) if workspace is not None else None
    )
    # Published once the admin chose SAML, enabled or not: the IT team
    # copies it into the IdP before anyone signs in.
    if connection is None or connection.protocol != "saml":
        abort(404)
    return Response(
        saml.sp_metadata(workspace),
        mimetype="application/samlmetadata+xml",
        headers={"Cache-Control": "no-cache"},
    )


@bp.get("/<protocol>/<slug>/start")
def start(protocol: str, slug: str):  # type: ignore[no-untyped-def]
    if protocol not in ("saml", "oidc"):
        abort(404)
    workspace, connection = connections.by_slug(slug, protocol)
    return send_to_idp(workspace, connection, return_to=request.args.get("rd"))


@bp.post("/saml/<slug>/acs")
def saml_acs(slug: str):  # type: ignore[no-untyped-def]
    from idp.services.sso import saml

    workspace, connection = connections.by_slug(slug, "saml")
    saml_response = request.form.get("SAMLResponse", "")
    relay_state = request.form.get("RelayState")
    if not saml_response or len(saml_response) > MAX_FORM_FIELD:
        raise federation.refuse(
            context(),
            connection,
            "saml_malformed",
            message="The sign-in answer from your company's IdP was missing or too large.",
            status=400,
        )
    claims, pending = saml.consume(
        context(),
        workspace,
        connection,
        saml_response=saml_response,
        relay_state=(relay_state or "")[:1024] or None,
        binding=current_binding(),
    )
    return _finish(workspace, connection, claims, pending)


@bp.get("/oidc/<slug>/callback")
def oidc_callback(slug: str):  # type: ignore[no-untyped-def]
    from idp.services.sso import oidc

    workspace, connection = connections.by_slug(slug, "oidc")
    args = {k: v[:4096] for k, v in request.args.items()}
    claims, pending = oidc.callback(
        context(), workspace, connection, args=args, binding=current_binding()
    )
    return _finish(workspace, connection, claims, pending)


def _finish(workspace, connection, claims, pending):  # type: ignore[no-untyped-def]
    from idp.services.audit import record
    from idp.web import auth_mfa

    ctx = context()
    if pending is not None and pending.purpose == "test":
        # *Test connection*: show the admin what arrived; no account is
        # touched and no session begins.
        sso_requests.store_result(
            pending, federation.test_result(workspace, connection, claims)
        )
        record(
            ctx,
            "sso.connection_tested",
            workspace_id=workspace.id,
            details={"protocol": connection.protocol, "subject": claims.subject[:200]},
        )
        db.session.commit()
        # The binding cookie stays: the result page is read with it.
        return redirect(url_for("portal.sso_test_result", request_id=pending.id))
    user = federation.resolve_member(ctx, workspace, connection, claims)
    record(
        ctx,
        "sso.signin_success",
        workspace_id=workspace.id,
        target=user,
        details={
            "protocol": connection.protocol,
            **{k: v for k, v in claims.details.items() if k in _AUDITED_DETAILS},
        },
    )
    # Flushed, not committed: when the sign-in policy refuses (an IP
    # allow-list, say), its refusal rolls back the account, link and role
    # change these claims made, so nothing is left of the attempt.
    db.session.flush()
    response = auth_mfa.proceed_federated(
        user, connection.id, pending.return_to if pending is not None else None
    )
    db.session.commit()
    _clear_binding(response)
    return response


# Claim details worth keeping in the audit trail (no attribute values).
_AUDITED_DETAILS = ("assertion_id", "idp_initiated", "tenant", "name_id_format")


def _clear_binding(response: Response) -> None:
    response.delete_cookie(
        binding_cookie_name(), path="/", secure=True, httponly=True, samesite="None"
    )


@bp.errorhandler(SsoRefused)
def _refused(exc: SsoRefused):  # type: ignore[no-untyped-def]
    """A refused answer: the page says why, in the IdP's words where they
    help; the event is already in the audit trail."""
    db.session.rollback()
    if not exc.audited:
        from idp.web.errors import audit_refusal

        audit_refusal(exc)
    return error_page(
        exc.status,
        "Single sign-on refused",
        exc.message,
    )

"""Passkeys and security keys: portal pages, passkey sign-in, set-up at sign-in.

Each ceremony takes two requests: a POST for the options (JSON, read by
static/webauthn.js), then the form carrying the browser's answer. The
challenge handed out is also kept in this browser's flow cookie, so the
answer is accepted only from the browser that asked.
"""

from __future__ import annotations

import json
from typing import Any

from flask import (
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from idp.clock import now
from idp.models import User, WebAuthnCredential
from idp.services import mfa, signin
from idp.services.context import Context
from idp.services.errors import Forbidden, InvalidInput
from idp.services.mfa import webauthn
from idp.services.returnurl import safe_return_url
from idp.services.sso import enforce as sso_enforce
from idp.state import settings
from idp.web import auth_mfa
from idp.web.auth import bp as auth_bp
from idp.web.auth import finish_sign_in, sso_required_page
from idp.web.errors import audit_refusal, error_page
from idp.web.portal import bp as portal_bp
from idp.web.portal import login_required
from idp.web.portal.reauth import offer_logout_others, recent_auth_required
from idp.web.requests import context

# Flow-cookie key of the challenges this browser was handed, by ceremony.
ISSUED = "webauthn"
MAX_NAME_FIELD = 400
TITLES = {"passkey": "Set up passkey", "security_key": "Add security key"}
LABELS = webauthn.KIND_LABELS


def _available() -> bool:
    return settings().webauthn_available


def _json_error(status: int, message: str, reason: str) -> tuple[Response, int]:
    audit_refusal(reason=reason)
    return jsonify(error="Request refused", message=message), status


def _options(options: str, ceremony: str) -> Response:
    """The options for the page's script; their challenge is remembered in
    the flow cookie for ``ceremony``."""
    issued = session.get(ISSUED)
    issued = dict(issued) if isinstance(issued, dict) else {}
    issued[ceremony] = json.loads(options)["challenge"]
    session[ISSUED] = issued
    return Response(options, mimetype="application/json")


def handed_out(ceremony: str) -> str:
    """The challenge this browser was handed for ``ceremony``, forgotten on
    use; "" (matching nothing) when it was handed none."""
    issued = session.get(ISSUED)
    if not isinstance(issued, dict):
        return ""
    issued = dict(issued)
    value = issued.pop(ceremony, "")
    session[ISSUED] = issued
    return value if isinstance(value, str) else ""


# --- portal -------------------------------------------------------------------


@portal_bp.context_processor
def _portal_globals() -> dict[str, Any]:
    def listed(kind: str) -> list[WebAuthnCredential]:
        user = g.get("user")
        return webauthn.credentials(user, kind) if user is not None else []

    return {
        "webauthn_credentials": listed,
        "webauthn_unavailable": webauthn.UNAVAILABLE,
    }


def _setup_page(kind: str, *, at_signin: bool, email: str = "", **extra: Any) -> str:
    if at_signin:
        layout = "layout_auth.html"
        options_url = url_for("auth.mfa_setup_webauthn_options", kind=kind)
        action = url_for("auth.mfa_setup_webauthn", kind=kind)
        cancel = url_for("auth.mfa_setup")
    else:
        layout = "portal/layout.html"
        options_url = url_for("portal.webauthn_options", kind=kind)
        action = url_for("portal.webauthn_new", kind=kind)
        cancel = url_for("portal.privacy_security")
    return render_template(
        "mfa/webauthn_setup.html",
        layout=layout,
        kind=kind,
        title=TITLES[kind],
        options_url=options_url,
        action=action,
        cancel=cancel,
        email=email,
        max_name=webauthn.MAX_NAME,
        **extra,
    )


def _unavailable_page() -> tuple[Response | str, int]:
    audit_refusal(reason="webauthn_unavailable")
    return error_page(404, "Not available", webauthn.UNAVAILABLE)


@portal_bp.route(
    "/privacy-security/passkeys/new",
    methods=["GET", "POST"],
    defaults={"kind": "passkey"},
)
@portal_bp.route(
    "/privacy-security/security-keys/new",
    methods=["GET", "POST"],
    defaults={"kind": "security_key"},
)
@recent_auth_required
def webauthn_new(kind: str):  # type: ignore[no-untyped-def]
    """*Set up*: the page whose script registers the credential, and the
    POST of the browser's answer."""
    if not _available():
        return _unavailable_page()
    if request.method == "GET":
        return _setup_page(kind, at_signin=False)
    name = request.form.get("name", "")[:MAX_NAME_FIELD]
    try:
        added = webauthn.register(
            context(),
            g.user,
            kind,
            request.form.get("credential", ""),
            name,
            issued=handed_out(f"register_{kind}"),
        )
    except (webauthn.RegistrationFailed, InvalidInput) as exc:
        audit_refusal(exc)
        page = _setup_page(kind, at_signin=False, error=exc.message, name=name)
        return page, exc.status
    offer_logout_others()
    flash(f"{LABELS[kind]} “{added.name}” added.")
    return auth_mfa.enrolled(
        g.user, [mfa.AMR_KEY], continue_url=url_for("portal.privacy_security")
    )


@portal_bp.post("/privacy-security/passkeys/options", defaults={"kind": "passkey"})
@portal_bp.post(
    "/privacy-security/security-keys/options", defaults={"kind": "security_key"}
)
@recent_auth_required
def webauthn_options(kind: str):  # type: ignore[no-untyped-def]
    if not _available():
        return _json_error(404, webauthn.UNAVAILABLE, "webauthn_unavailable")
    options = webauthn.registration_options(context(), g.user, kind)
    return _options(options, f"register_{kind}")


def _own(kind: str, credential_id: str) -> WebAuthnCredential:
    """One of the member's own credentials, of the kind the address names."""
    credential = webauthn.credential_of(g.user, credential_id)
    if credential.kind != kind:
        abort(404)
    return credential


@portal_bp.route(
    "/privacy-security/passkeys/<credential_id>/rename",
    methods=["GET", "POST"],
    defaults={"kind": "passkey"},
)
@portal_bp.route(
    "/privacy-security/security-keys/<credential_id>/rename",
    methods=["GET", "POST"],
    defaults={"kind": "security_key"},
)
@login_required
def webauthn_rename(kind: str, credential_id: str):  # type: ignore[no-untyped-def]
    credential = _own(kind, credential_id)
    if request.method == "GET":
        return render_template(
            "mfa/webauthn_rename.html",
            credential=credential,
            name=credential.name,
            label=LABELS[kind],
            max_name=webauthn.MAX_NAME,
        )
    name = request.form.get("name", "")[:MAX_NAME_FIELD]
    try:
        webauthn.rename(context(), g.user, credential.id, name)
    except InvalidInput as exc:
        audit_refusal(exc)
        return render_template(
            "mfa/webauthn_rename.html",
            credential=credential,
            name=name,
            label=LABELS[kind],
            max_name=webauthn.MAX_NAME,
            error=exc.message,
        ), exc.status
    flash(f"{LABELS[kind]} renamed.")
    return redirect(url_for("portal.privacy_security"))


@portal_bp.route(
    "/privacy-security/passkeys/<credential_id>/delete",
    methods=["GET", "POST"],
    defaults={"kind": "passkey"},
)
@portal_bp.route(
    "/privacy-security/security-keys/<credential_id>/delete",
    methods=["GET", "POST"],
    defaults={"kind": "security_key"},
)
@recent_auth_required
def webauthn_delete(kind: str, credential_id: str):  # type: ignore[no-untyped-def]
    """A warning, then *Delete*."""
    credential = _own(kind, credential_id)
    page = {"credential": credential, "label": LABELS[kind]}
    if request.method == "GET":
        return render_template("mfa/webauthn_delete.html", **page)
    try:
        webauthn.delete(context(), g.user, credential.id)
    except Forbidden as exc:
        audit_refusal(exc)
        return render_template(
            "mfa/webauthn_delete.html", error=exc.message, **page
        ), exc.status
    offer_logout_others()
    flash(f"{LABELS[kind]} “{credential.name}” deleted.")
    return redirect(url_for("portal.privacy_security"))


# --- sign-in with a passkey ---------------------------------------------------


@auth_bp.context_processor
def _auth_globals() -> dict[str, Any]:
    return {"passkeys_available": _available()}


@auth_bp.post("/login/passkey/options")
def passkey_options():  # type: ignore[no-untyped-def]
    """Options for a passkey sign-in: no account named, no allow list; the
    passkey the person picks names the account."""
    if not _available():
        return _json_error(404, webauthn.UNAVAILABLE, "webauthn_unavailable")
    return _options(webauthn.authentication_options(None), "passkey_signin")


@auth_bp.post("/login/passkey")
def passkey_signin():  # type: ignore[no-untyped-def]
    """Sign in without a password. The passkey verified the person, so the
    session counts as multi-factor; every sign-in policy still applies (a
    refusal is the usual 403 page)."""
    rd = safe_return_url(request.form.get("rd"))
    if not _available():
        return _unavailable_page()
    ctx = context()
    try:
        done = webauthn.authenticate(
            ctx,
            None,
            request.form.get("credential", ""),
            issued=handed_out("passkey_signin"),
        )
    except mfa.MfaFailed as exc:
        return render_template(
            "auth/login_email.html", rd=rd, error=exc.message
        ), exc.status
    member = Context.for_user(done.user, ctx.client, ctx.session)
    try:
        # *Require SSO* holds for passkeys as for passwords.
        sso_enforce.admit_password(member, done.user, method="passkey")
    except sso_enforce.SsoRequired as exc:
        return sso_required_page(exc, rd)
    signed_in = signin.complete_sign_in(
        member,
        done.user,
        amr=[mfa.AMR_KEY, mfa.AMR_USER_VERIFIED, mfa.AMR_MFA],
        mfa_at=now(),
    )
    return finish_sign_in(signed_in, rd)


# --- the MFA step and set-up at sign-in ---------------------------------------


@auth_bp.post("/login/mfa/webauthn/options")
def mfa_webauthn_options():  # type: ignore[no-untyped-def]
    """Options for the MFA step: the pending member's keys of both kinds."""
    user = auth_mfa.pending()
    if user is None:
        return _json_error(401, _EXPIRED_SIGNIN, "signin_flow_expired")
    if not _available():
        return _json_error(404, webauthn.UNAVAILABLE, "webauthn_unavailable")
    have = mfa.factors(user.id)
    if not have.passkeys + have.security_keys:
        return _json_error(400, "You have no passkey or security key.", "no_key")
    # Kept for the step's answer too: auth_mfa may pass
    # handed_out("mfa_step") as ``issued`` to bind it to this browser.
    return _options(webauthn.authentication_options(user), "mfa_step")


_EXPIRED_SIGNIN = "This sign-in has expired. Start again."


def _setup_user() -> tuple[User | None, str]:
    """The member setting up a first factor at sign-in; else None and where
    the browser goes instead."""
    user = auth_mfa.pending()
    if user is None:
        return None, url_for("auth.login", expired=1)
    flow = session.get(auth_mfa.FLOW)
    if not (isinstance(flow, dict) and flow.get("enroll") is True):
        # A sign-in at the MFA step proves a factor first; adding one here
        # would skip it.
        audit_refusal(reason="mfa_setup_not_allowed")
        return None, url_for("auth.mfa_step")
    if mfa.factors(user.id).has_mfa:
        return None, url_for("auth.mfa_setup_done")
    if not _available():
        return None, url_for("auth.mfa_setup")
    return user, ""


@auth_bp.route(
    "/login/mfa/setup/passkey", methods=["GET", "POST"], defaults={"kind": "passkey"}
)
@auth_bp.route(
    "/login/mfa/setup/security-key",
    methods=["GET", "POST"],
    defaults={"kind": "security_key"},
)
def mfa_setup_webauthn(kind: str):  # type: ignore[no-untyped-def]
    """Forced MFA and no factor yet: set up a passkey or security key."""
    user, elsewhere = _setup_user()
    if user is None:
        return redirect(elsewhere)
    if request.method == "GET":
        return _setup_page(kind, at_signin=True, email=user.email)
    name = request.form.get("name", "")[:MAX_NAME_FIELD]
    try:
        webauthn.register(
            Context.for_user(user, context().client),
            user,
            kind,
            request.form.get("credential", ""),
            name,
            issued=handed_out(f"register_{kind}"),
        )
    except (webauthn.RegistrationFailed, InvalidInput) as exc:
        audit_refusal(exc)
        page = _setup_page(
            kind, at_signin=True, email=user.email, error=exc.message, name=name
        )
        return page, exc.status
    return auth_mfa.enrolled(
        user, [mfa.AMR_KEY], continue_url=url_for("auth.mfa_setup_done")
    )


@auth_bp.post("/login/mfa/setup/passkey/options", defaults={"kind": "passkey"})
@auth_bp.post(
    "/login/mfa/setup/security-key/options", defaults={"kind": "security_key"}
)
def mfa_setup_webauthn_options(kind: str):  # type: ignore[no-untyped-def]
    user, elsewhere = _setup_user()
    if user is None:
        # Whatever stops the page stops its script, which goes where told.
        expired = auth_mfa.pending() is None
        if expired:
            audit_refusal(reason="signin_flow_expired")
        body = jsonify(
            error="Request refused",
            message=_EXPIRED_SIGNIN if expired else "This step of signing in is over.",
            location=elsewhere,
        )
        return body, 401 if expired else 409
    options = webauthn.registration_options(
        Context.for_user(user, context().client), user, kind
    )
    return _options(options, f"register_{kind}")

"""Authenticator app and recovery codes: portal pages and set-up at sign-in."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, session, url_for

from idp.models import User
from idp.services import mfa
from idp.services.errors import InvalidInput, Throttled
from idp.services.mfa import recovery, totp
from idp.web import auth_mfa
from idp.web.auth import bp as auth_bp
from idp.web.errors import audit_refusal
from idp.web.portal import bp as portal_bp
from idp.web.portal import reauth
from idp.web.requests import context

MAX_CODE_FIELD = 64
# The set-up this browser was shown (totp.Setup.ref), in its flow cookie.
SETUP_REF = "totp_setup"


def _shown() -> str:
    value = session.get(SETUP_REF)
    return value if isinstance(value, str) else ""


def _new_page(
    user: User, *, layout: str, action: str, cancel: str, email: str | None = None
) -> str:
    """The set-up page: the set-up this browser was shown, again (a reload),
    or a new one; never one shown to another browser."""
    setup = totp.current_setup(context(), user, ref=_shown())
    session[SETUP_REF] = setup.ref
    return _setup_page(setup, layout=layout, action=action, cancel=cancel, email=email)


def _code() -> str:
    value = request.form.get("code", "")
    if len(value) > MAX_CODE_FIELD:
        raise InvalidInput("That code is far too long.", code="field_too_long")
    return value


def _setup_page(
    setup: totp.Setup,
    *,
    layout: str,
    action: str,
    cancel: str,
    error: str | None = None,
    email: str | None = None,
) -> str:
    return render_template(
        "mfa/totp_setup.html",
        layout=layout,
        setup=setup,
        action=action,
        cancel=cancel,
        error=error,
        email=email,
    )


def _confirm(
    user: User, *, layout: str, action: str, cancel: str, email: str | None = None
) -> tuple[str, int, dict[str, str]] | None:
    """Confirm the waiting set-up with the posted code: None when it is
    enabled, else the set-up page again with the reason and its status."""
    try:
        totp.confirm_setup(context(), user, _code(), ref=_shown())
    except (mfa.MfaFailed, Throttled) as exc:
        audit_refusal(exc)
        setup = totp.pending_setup(user, ref=_shown())
        if setup is None:
            raise
        page = _setup_page(
            setup,
            layout=layout,
            action=action,
            cancel=cancel,
            error=exc.message,
            email=email,
        )
        headers = (
            {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else {}
        )
        return page, exc.status, headers
    session.pop(SETUP_REF, None)
    return None


# --- portal -------------------------------------------------------------------


@portal_bp.route("/privacy-security/authenticator", methods=["GET", "POST"])
@reauth.recent_auth_required
def authenticator():  # type: ignore[no-untyped-def]
    """Set up: a QR code and the secret, then a code to confirm."""
    page = {
        "layout": "portal/layout.html",
        "action": url_for("portal.authenticator"),
        "cancel": url_for("portal.privacy_security"),
    }
    if request.method == "GET":
        if mfa.factors(g.user.id).totp:
            flash("Your authenticator app is already set up.")
            return redirect(url_for("portal.privacy_security"))
        return _new_page(g.user, **page)
    refused = _confirm(g.user, **page)
    if refused is not None:
        return refused
    reauth.offer_logout_others()
    flash("Your authenticator app is set up.")
    return auth_mfa.enrolled(
        g.user, [mfa.AMR_TOTP], continue_url=url_for("portal.privacy_security")
    )


@portal_bp.post("/privacy-security/authenticator/remove")
@reauth.recent_auth_required
def remove_authenticator():  # type: ignore[no-untyped-def]
    totp.remove(context(), g.user)
    reauth.offer_logout_others()
    flash("Your authenticator app was removed.")
    return redirect(url_for("portal.privacy_security"))


@portal_bp.post("/privacy-security/recovery-codes")
@reauth.recent_auth_required
def regenerate_recovery_codes():  # type: ignore[no-untyped-def]
    """Ten new codes, shown once; the old ones stop working."""
    codes = recovery.issue(context(), g.user)
    reauth.offer_logout_others()
    return render_template(
        "mfa/recovery_codes.html",
        codes=codes,
        continue_url=url_for("portal.privacy_security"),
        continue_post=False,
    )


# --- set-up at sign-in (MFA forced, no factor yet) ------------------------------


@auth_bp.route("/login/mfa/setup/totp", methods=["GET", "POST"])
def mfa_setup_totp():  # type: ignore[no-untyped-def]
    user = auth_mfa.pending()
    if user is None:
        return redirect(url_for("auth.login", expired=1))
    if not _enrolling():
        # A sign-in at the MFA step proves a factor first; adding one here
        # would skip it.
        audit_refusal(reason="mfa_setup_not_allowed")
        return redirect(url_for("auth.mfa_step"))
    if mfa.factors(user.id).has_mfa:
        return redirect(url_for("auth.mfa_setup_done"))
    page = {
        "layout": "layout_auth.html",
        "action": url_for("auth.mfa_setup_totp"),
        "cancel": url_for("auth.mfa_setup"),
        "email": user.email,
    }
    if request.method == "GET":
        return _new_page(user, **page)
    refused = _confirm(user, **page)
    if refused is not None:
        return refused
    return auth_mfa.enrolled(
        user, [mfa.AMR_TOTP], continue_url=url_for("auth.mfa_setup_done")
    )


def _enrolling() -> bool:
    flow = session.get(auth_mfa.FLOW)
    return isinstance(flow, dict) and flow.get("enroll") is True

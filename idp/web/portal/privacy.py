"""Privacy & security: sessions, Log out all other sessions, Log out, Change
password."""

from __future__ import annotations

import uuid

from flask import abort, flash, g, redirect, render_template, request, url_for

from idp.services import account, mfa, sessions
from idp.services.errors import InvalidInput
from idp.state import settings
from idp.web.errors import audit_refusal
from idp.web.portal import bp, login_required, reauth
from idp.web.requests import context, set_session_cookie
from idp.web.useragent import describe


@bp.get("/privacy-security")
@login_required
def privacy_security():  # type: ignore[no-untyped-def]
    rows = [(s, describe(s.user_agent)) for s in sessions.active_sessions(g.user)]
    return render_template(
        "portal/privacy_security.html",
        sessions=rows,
        current_id=g.loaded.session.id,
        factors=mfa.factors(g.user.id),
        offer_logout_others=reauth.take_offer() and len(rows) > 1,
        webauthn=settings().webauthn_available,
    )


@bp.route("/privacy-security/logout-others", methods=["GET", "POST"])
@login_required
def logout_others():  # type: ignore[no-untyped-def]
    if request.method == "GET":
        others = len(sessions.active_sessions(g.user)) - 1
        return render_template("portal/logout_others.html", others=max(others, 0))
    token = account.log_out_others(context())
    response = redirect(url_for("portal.privacy_security"))
    set_session_cookie(response, token)
    g.cookie_set = True
    flash("All other sessions are logged out.")
    return response


@bp.post("/privacy-security/sessions/<session_id>/end")
@login_required
def end_session(session_id: str):  # type: ignore[no-untyped-def]
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        abort(404)
    if sid == g.loaded.session.id:
        abort(400)
    sessions.end_own_session(context(), sid)
    flash("That session is logged out.")
    return redirect(url_for("portal.privacy_security"))


@bp.route("/privacy-security/password", methods=["GET", "POST"])
@login_required
def change_password():  # type: ignore[no-untyped-def]
    if request.method == "POST":
        new = request.form.get("new_password", "")
        if new != request.form.get("new_password_confirm", ""):
            audit_refusal(reason="password_mismatch")
            return render_template(
                "portal/change_password.html", error="The two new passwords differ."
            ), 400
        try:
            token = account.change_password(
                context(), current=request.form.get("current_password", ""), new=new
            )
        except InvalidInput as exc:
            audit_refusal(exc)
            return render_template(
                "portal/change_password.html", error=exc.message
            ), 400
        response = redirect(url_for("portal.privacy_security"))
        set_session_cookie(response, token)
        g.cookie_set = True
        flash("Password changed. Every other session is logged out.")
        return response
    return render_template("portal/change_password.html")

"""Profile: email, name, username, phone number, job title; Edit, then Save."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for

from idp.services import account
from idp.services.errors import Conflict, Forbidden, InvalidInput
from idp.web.errors import audit_refusal
from idp.web.portal import bp, login_required
from idp.web.requests import context

FIELD_LIMIT = 400


def _form(name: str) -> str:
    value = request.form.get(name, "")
    if len(value) > FIELD_LIMIT:
        raise InvalidInput(f"The {name.replace('_', ' ')} field is too long.")
    return value


@bp.get("/profile")
@login_required
def profile():  # type: ignore[no-untyped-def]
    editing = request.args.get("edit") == "1"
    return render_template("portal/profile.html", editing=editing, values=None)


@bp.post("/profile")
@login_required
def profile_save():  # type: ignore[no-untyped-def]
    values = {k: _form(k) for k in ("full_name", "username", "phone", "job_title")}
    try:
        account.update_profile(context(), **values)
    except (InvalidInput, Conflict) as exc:
        audit_refusal(exc)
        return render_template(
            "portal/profile.html", editing=True, values=values, error=exc.message
        ), exc.status
    flash("Profile saved.")
    return redirect(url_for("portal.profile"))


@bp.route("/profile/email", methods=["GET", "POST"])
@login_required
def change_email():  # type: ignore[no-untyped-def]
    if request.method == "POST":
        new_email = _form("email")
        try:
            address = account.request_email_change(
                context(),
                new_email=new_email,
                password=request.form.get("password", ""),
            )
        except (InvalidInput, Conflict, Forbidden) as exc:
            audit_refusal(exc)
            return render_template(
                "portal/change_email.html", email=new_email, error=exc.message
            ), exc.status
        flash(
            f"We sent a confirmation link to {address}. Your email changes when you follow it."
        )
        return redirect(url_for("portal.profile"))
    return render_template("portal/change_email.html", email=g.user.email)

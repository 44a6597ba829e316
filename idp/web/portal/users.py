"""Users: every member with role, status and last sign-in; Invite; the
per-user menu (Resend invitation email, Disable User, Reset MFA, Delete User,
role)."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for

from idp.services import invitations, mfa, users
from idp.services.errors import Conflict, Forbidden, InvalidInput
from idp.web.errors import audit_refusal
from idp.web.portal import admin_required, bp, login_required
from idp.web.requests import context

FIELD_LIMIT = 400


@bp.get("/users", endpoint="users")
@login_required
def users_tab():  # type: ignore[no-untyped-def]
    query = request.args.get("q", "")[:200]
    members = users.list_users(g.workspace, query)
    return render_template(
        "portal/users.html",
        members=members,
        query=query,
        mfa_of=mfa.factors_for(members),
    )


@bp.route("/users/invite", methods=["GET", "POST"])
@admin_required
def invite():  # type: ignore[no-untyped-def]
    values = {"email": "", "role": "read_only", "full_name": ""}
    if request.method == "POST":
        values = {k: request.form.get(k, "")[:FIELD_LIMIT] for k in values}
        try:
            issued = invitations.invite_user(context(), g.workspace, **values)
        except (InvalidInput, Conflict, Forbidden) as exc:
            audit_refusal(exc)
            return render_template(
                "portal/invite.html", values=values, error=exc.message
            ), exc.status
        if issued.send_error:
            flash(
                f"{issued.user.email} is invited, but the email could not be sent "
                f"({issued.send_error}). Use Resend invitation email to try again.",
                "error",
            )
        else:
            flash(f"Invitation sent to {issued.user.email}.")
        return redirect(url_for("portal.users"))
    return render_template("portal/invite.html", values=values)


@bp.post("/users/<user_id>/resend")
@admin_required
def resend(user_id: str):  # type: ignore[no-untyped-def]
    issued = invitations.resend_invitation(
        context(), g.workspace, users.get_member(g.workspace, user_id).id
    )
    if issued.send_error:
        flash(
            f"The email to {issued.user.email} could not be sent ({issued.send_error}).",
            "error",
        )
    else:
        flash(
            f"A new invitation was sent to {issued.user.email}; the old link no longer works."
        )
    return redirect(url_for("portal.users"))


@bp.post("/users/<user_id>/disable")
@admin_required
def disable(user_id: str):  # type: ignore[no-untyped-def]
    user = users.disable_user(context(), g.workspace, user_id)
    flash(f"{user.email} is disabled and signed out everywhere.")
    return redirect(url_for("portal.users"))


@bp.post("/users/<user_id>/enable")
@admin_required
def enable(user_id: str):  # type: ignore[no-untyped-def]
    user = users.enable_user(context(), g.workspace, user_id)
    flash(f"{user.email} is enabled.")
    return redirect(url_for("portal.users"))


@bp.post("/users/<user_id>/role")
@admin_required
def change_role(user_id: str):  # type: ignore[no-untyped-def]
    user = users.change_role(
        context(), g.workspace, user_id, request.form.get("role", "")
    )
    label = "Admin" if user.role == "admin" else "Read Only"
    flash(f"{user.email} is now {label}.")
    return redirect(url_for("portal.users"))


@bp.route("/users/<user_id>/reset-mfa", methods=["GET", "POST"])
@admin_required
def reset_mfa(user_id: str):  # type: ignore[no-untyped-def]
    member = users.get_member(g.workspace, user_id)
    if request.method == "GET":
        return render_template(
            "portal/reset_mfa.html",
            member=member,
            factors=mfa.factors(member.id),
        )
    users.reset_mfa(context(), g.workspace, member.id)
    flash(
        f"The MFA of {member.email} is reset, and the member is signed out and told "
        "by email."
    )
    return redirect(url_for("portal.users"))


@bp.route("/users/<user_id>/delete", methods=["GET", "POST"])
@admin_required
def delete(user_id: str):  # type: ignore[no-untyped-def]
    member = users.get_member(g.workspace, user_id)
    if request.method == "GET":
        return render_template("portal/delete_user.html", member=member)
    email = member.email
    users.delete_user(context(), g.workspace, member.id)
    flash(f"{email} is deleted.")
    return redirect(url_for("portal.users"))

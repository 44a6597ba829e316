"""Sign-in, sign-out, invitations, password reset and email confirmation."""

from __future__ import annotations

import time
import uuid

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from idp.db import db
from idp.security import normalize_email
from idp.services import account, invitations, reasons, sessions, signin
from idp.services.errors import InvalidInput, InvalidLink
from idp.services.returnurl import DEFAULT, safe_return_url
from idp.services.sso import connections as sso_connections
from idp.services.sso import domains as sso_domains
from idp.services.sso import enforce as sso_enforce
from idp.state import settings
from idp.web.errors import audit_refusal
from idp.web.requests import clear_session_cookie, context, set_session_cookie

bp = Blueprint("auth", __name__)

# Why a session ended, as the portal and the gateway pass it to /login.
ENDED_REASONS = reasons.SESSION_ENDED

MAX_EMAIL_FIELD = 400
MAX_NAME_FIELD = 400


def _field(name: str, limit: int) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        raise InvalidInput(f"The {name.replace('_', ' ')} field is too long.")
    return value


def _flow_fresh(key: str) -> dict | None:
    state = session.get(key)
    if not isinstance(state, dict):
        return None
    if (
        time.time() - state.get("at", 0)
        > settings()["sessions"]["flow_lifetime_seconds"]
    ):
        session.pop(key, None)
        return None
    return state


def finish_sign_in(signed_in: signin.SignedIn, return_to: str | None) -> Response:
    """Answer a completed sign-in: new cookie, a fresh flow (new CSRF token,
    no half-finished state), then where the person was going."""
    session.clear()
    if signed_in.sessions_ended:
        count = signed_in.sessions_ended
        flash(
            f"Your workspace allows a limited number of sessions at once, so "
            f"your oldest {'session was' if count == 1 else f'{count} sessions were'} "
            "signed out.",
            "info",
        )
    response = redirect(safe_return_url(return_to) or DEFAULT)
    set_session_cookie(response, signed_in.token)
    g.cookie_set = True
    return response


def _proceed(user, rd: str | None) -> Response:  # type: ignore[no-untyped-def]
    """After a password (sign-in, workspace choice, joining): *Require SSO*,
    then the pipeline and the session or the MFA step."""
    from idp.web import auth_mfa

    try:
        sso_enforce.admit_password(context(), user)
    except sso_enforce.SsoRequired as exc:
        return sso_required_page(exc, rd)
    return auth_mfa.proceed(user, rd)


def sso_required_page(exc: sso_enforce.SsoRequired, rd: str | None):  # type: ignore[no-untyped-def]
    """The refusal of a password under *Require SSO* (already audited), with
    the way in that works: the workspace's IdP."""
    session.pop("login", None)
    session.pop("choose", None)
    start = None
    user = exc.accounts[0]
    connection = sso_connections.for_workspace(user.workspace_id)
    if connection is not None and connection.enabled:
        from idp.models import Workspace

        workspace = db.session.get(Workspace, user.workspace_id)
        start = url_for(
            "sso.start", protocol=connection.protocol, slug=workspace.slug, rd=rd
        )
    return render_template(
        "auth/sso_required.html", message=exc.message, start=start
    ), exc.status


def onward(target: str, *, cookies_from: Response | None = None) -> Response:
    """A page that sends the browser on to ``target`` (our SSO start, or the
    IdP itself) by a Refresh header instead of a redirect: browsers hold the
    redirects that answer a form to the page's CSP form-action, which cannot
    list every company's IdP. ``cookies_from`` lends its Set-Cookie headers
    (the SSO binding cookie)."""
    response = make_response(render_template("auth/sso_onward.html", target=target))
    response.headers["Refresh"] = f"0; url={target}"
    if cookies_from is not None:
        for value in cookies_from.headers.getlist("Set-Cookie"):
            response.headers.add("Set-Cookie", value)
    return response


def _home_realm(email: str):  # type: ignore[no-untyped-def]
    """The workspace and connection whose verified domain holds this
    address, if any. It depends on the domain alone, never on whether an
    account exists, so the answer tells nothing about accounts."""
    key = normalize_email(email)
    local, at, domain = key.rpartition("@")
    if not at or not local or not domain:
        return None
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return sso_domains.connection_for_email(f"{local}@{domain}")


@bp.get("/")
def home():  # type: ignore[no-untyped-def]
    return redirect(url_for("portal.profile"))


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    return_to = safe_return_url(request.values.get("rd"))
    if g.loaded is not None and request.method == "GET":
        return redirect(return_to or DEFAULT)
    # ?sso=off: the break-glass past home-realm discovery, for an admin
    # whose IdP is down, or a person whose address is in a company's domain
    # but who signs in to another workspace with a password. *Require SSO*
    # still applies at the password step.
    sso_off = request.values.get("sso") == "off"
    if request.method == "POST":
        email = _field("email", MAX_EMAIL_FIELD).strip()
        if not email:
            audit_refusal(reason="email_missing")
            return render_template(
                "auth/login_email.html",
                error="Enter your email address.",
                rd=return_to,
                sso_off=sso_off,
            ), 400
        realm = None if sso_off else _home_realm(email)
        if realm is not None:
            workspace, connection = realm
            session.pop("login", None)
            return onward(
                url_for(
                    "sso.start",
                    protocol=connection.protocol,
                    slug=workspace.slug,
                    rd=return_to,
                )
            )
        session["login"] = {"email": email, "at": time.time(), "rd": return_to}
        return redirect(url_for("auth.password"))
    expired = request.args.get("expired") == "1"
    # Only the codes a session can end with; anything else is ignored.
    notice = request.args.get("reason", "")
    notice = reasons.message(notice) if notice in ENDED_REASONS else None
    return render_template(
        "auth/login_email.html",
        rd=return_to,
        expired=expired,
        notice=notice,
        sso_off=sso_off,
    )


@bp.route("/login/password", methods=["GET", "POST"])
def password():  # type: ignore[no-untyped-def]
    flow = _flow_fresh("login")
    if flow is None:
        return redirect(url_for("auth.login"))
    if request.method == "GET":
        return render_template("auth/login_password.html", email=flow["email"])
    typed = request.form.get("password", "")
    try:
        matched = signin.check_password(context(), flow["email"], typed)
    except signin.SignInFailed as exc:
        return render_template(
            "auth/login_password.html", email=flow["email"], error=exc.message
        ), 401
    try:
        # Accounts under *Require SSO* drop out of the choice; when the
        # password opened only such accounts, it is refused.
        matched = sso_enforce.screen(context(), matched)
    except sso_enforce.SsoRequired as exc:
        return sso_required_page(exc, flow.get("rd"))
    if len(matched) == 1:
        return _proceed(matched[0], flow.get("rd"))
    session["choose"] = {
        "ids": [str(u.id) for u in matched],
        "at": time.time(),
        "rd": flow.get("rd"),
        "fp": signin.choice_fingerprint(matched),
    }
    session.pop("login", None)
    return redirect(url_for("auth.choose_workspace"))


@bp.route("/login/workspace", methods=["GET", "POST"])
def choose_workspace():  # type: ignore[no-untyped-def]
    flow = _flow_fresh("choose")
    if flow is None:
        return redirect(url_for("auth.login"))
    if request.method == "POST":
        try:
            user = signin.account_in(
                flow["ids"], request.form.get("account", ""), flow.get("fp")
            )
        except signin.StaleChoice as exc:
            session.pop("choose", None)
            audit_refusal(exc)
            flash(exc.message)
            return redirect(url_for("auth.login"))
        if user is None:
            abort(400)
        return _proceed(user, flow.get("rd"))
    from idp.models import User, Workspace

    accounts = [db.session.get(User, uuid.UUID(i)) for i in flow["ids"]]
    choices = [(u, db.session.get(Workspace, u.workspace_id)) for u in accounts if u]
    return render_template("auth/choose_workspace.html", choices=choices)


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    if g.loaded is not None:
        sessions.sign_out(context())
    session.clear()
    response = redirect(url_for("auth.login"))
    clear_session_cookie(response)
    g.cookie_set = True
    flash("You are signed out.")
    return response


# The reset form answers no sooner than this. A known address costs a token
# write, an audit event and a mail to compose (about 2 ms more than an
# unknown one, measurable from outside): the floor hides the difference.
FORGOT_ANSWER_FLOOR_SECONDS = 0.05


@bp.route("/login/forgot", methods=["GET", "POST"])
def forgot():  # type: ignore[no-untyped-def]
    if request.method == "POST":
        began = time.monotonic()
        account.request_password_reset(context(), _field("email", MAX_EMAIL_FIELD))
        left = FORGOT_ANSWER_FLOOR_SECONDS - (time.monotonic() - began)
        if left > 0:
            time.sleep(left)
        return render_template(
            "auth/message.html",
            title="Check your email",
            message="If an account uses that address, we have sent it a link to choose a "
            "new password. The link works once, for one hour.",
        )
    return render_template("auth/forgot.html")


# Links that carry a secret are exchanged for the flow cookie on arrival, so
# the secret leaves the address bar, history and Referer at once (ASVS 14.2.1).
def _exchange(key: str, token: str, endpoint: str) -> Response:
    if len(token) > 128:
        abort(404)
    session[key] = {"token": token, "at": time.time()}
    response = redirect(url_for(endpoint))
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _held(key: str) -> str | None:
    flow = session.get(key)
    if isinstance(flow, dict) and time.time() - flow.get("at", 0) < 3600:
        return flow.get("token")
    return None


def _invalid_link(exc: InvalidLink | None = None) -> tuple[str, int]:
    """The one page for every bad link, whatever was wrong with it."""
    audit_refusal(exc or InvalidLink())
    return render_template(
        "auth/message.html",
        title="Invalid link",
        message=InvalidLink().message + " Ask for a new one.",
    ), 400


@bp.get("/invite/<token>")
def invite_link(token: str):  # type: ignore[no-untyped-def]
    return _exchange("invite", token, "auth.invite_accept")


@bp.route("/invite", methods=["GET", "POST"])
def invite_accept():  # type: ignore[no-untyped-def]
    token = _held("invite")
    try:
        invitation = invitations.invitation_for(token, viewer=context())
    except InvalidLink as exc:
        return _invalid_link(exc)
    if request.method == "POST":
        full_name = _field("full_name", MAX_NAME_FIELD)
        password = request.form.get("password", "")
        if password != request.form.get("password_confirm", ""):
            audit_refusal(reason="password_mismatch")
            return render_template(
                "auth/invite.html",
                invitation=invitation,
                full_name=full_name,
                error="The two passwords differ.",
            ), 400
        try:
            joined = invitations.accept_invitation(
                context(), token, full_name=full_name, password=password
            )
        except InvalidLink as exc:
            return _invalid_link(exc)
        except InvalidInput as exc:
            audit_refusal(exc)
            return render_template(
                "auth/invite.html",
                invitation=invitation,
                full_name=full_name,
                error=exc.message,
            ), 400
        session.pop("invite", None)
        return _proceed(joined, None)
    return render_template(
        "auth/invite.html",
        invitation=invitation,
        full_name=invitation.user.full_name,
        sso_start=_sso_start_for(invitation.user),
    )


def _sso_start_for(user) -> str | None:  # type: ignore[no-untyped-def]
    """Where an invited member whose address belongs to their workspace's
    IdP joins through it (the sign-in there completes the invitation)."""
    from idp.services.sso.domains import connection_for_email

    found = connection_for_email(user.email)
    if found is None or found[0].id != user.workspace_id:
        return None
    workspace, connection = found
    return url_for("sso.start", protocol=connection.protocol, slug=workspace.slug)


@bp.get("/reset/<token>")
def reset_link(token: str):  # type: ignore[no-untyped-def]
    return _exchange("reset", token, "auth.reset_form")


@bp.route("/reset", methods=["GET", "POST"])
def reset_form():  # type: ignore[no-untyped-def]
    token = _held("reset")
    try:
        user = account.check_reset_link(token)
    except InvalidLink as exc:
        return _invalid_link(exc)
    if request.method == "POST":
        password = request.form.get("password", "")
        if password != request.form.get("password_confirm", ""):
            audit_refusal(reason="password_mismatch")
            return render_template(
                "auth/reset.html", email=user.email, error="The two passwords differ."
            ), 400
        try:
            account.reset_password(context(), token, password)
        except InvalidLink as exc:
            return _invalid_link(exc)
        except InvalidInput as exc:
            audit_refusal(exc)
            return render_template(
                "auth/reset.html", email=user.email, error=exc.message
            ), 400
        if g.loaded is not None and g.loaded.user.id != user.id:
            # This browser was signed in as someone else: end that session
            # on the server too, not only its cookie.
            sessions.sign_out(context())
        session.clear()
        response = redirect(url_for("auth.login"))
        clear_session_cookie(response)
        g.cookie_set = True
        flash(
            "Your password has been changed and every session has ended. Sign in with the new password."
        )
        return response
    return render_template("auth/reset.html", email=user.email)


@bp.get("/email/confirm/<token>")
def email_confirm_link(token: str):  # type: ignore[no-untyped-def]
    return _exchange("email_change", token, "auth.email_confirm")


@bp.route("/email/confirm", methods=["GET", "POST"])
def email_confirm():  # type: ignore[no-untyped-def]
    token = _held("email_change")
    if request.method == "POST":
        try:
            user = account.confirm_email_change(context(), token)
        except InvalidLink as exc:
            return _invalid_link(exc)
        session.pop("email_change", None)
        return render_template(
            "auth/message.html",
            title="Email address changed",
            message=f"You now sign in as {user.email}.",
            link=url_for("auth.login"),
            link_label="Sign in",
        )
    try:
        account.check_email_change_link(token)
    except InvalidLink as exc:
        return _invalid_link(exc)
    return render_template("auth/confirm_email.html")

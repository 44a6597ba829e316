"""The second step of sign-in: asking for a factor, or setting one up when
the workspace forces MFA and the member has none.

A half-finished sign-in holds no session: the browser's signed flow cookie
names the account, bound to its password hash and last sign-in (as the
workspace choice is), so it works once and only for the MFA pages. The
portal and the gateway see nobody signed in until ``finish`` issues the
session, with its own new token.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import Response, redirect, render_template, request, session, url_for

from idp.clock import now
from idp.db import db
from idp.models import User
from idp.services import mfa, signin
from idp.services.errors import InvalidInput, Throttled
from idp.services.mfa import recovery, totp
from idp.services.mfa import webauthn as webauthn_factor
from idp.services.sso import AMR_FEDERATED
from idp.state import settings
from idp.web.auth import bp, finish_sign_in
from idp.web.errors import audit_refusal
from idp.web.requests import context

FLOW = "mfa"
MAX_CODE_FIELD = 64
MAX_CREDENTIAL_FIELD = 16_384


def begin(
    user: User, rd: str | None, *, enroll: bool, sso_connection: uuid.UUID | None = None
) -> Response:
    """Hold the sign-in at the MFA step (or at set-up) for this account;
    ``sso_connection`` when the first step was the company IdP."""
    session.pop("login", None)
    session.pop("choose", None)
    session[FLOW] = {
        "uid": str(user.id),
        "at": now().timestamp(),
        "rd": rd,
        "fp": signin.choice_fingerprint([user]),
        "enroll": enroll,
        "sso": str(sso_connection) if sso_connection else None,
    }
    return redirect(url_for("auth.mfa_setup" if enroll else "auth.mfa_step"))


def pending() -> User | None:
    """The account of this browser's half-finished sign-in, if it is still
    fresh and nothing has changed since the password was checked."""
    flow = session.get(FLOW)
    if not isinstance(flow, dict):
        return None
    lifetime = settings()["sessions"]["flow_lifetime_seconds"]
    if now().timestamp() - flow.get("at", 0) > lifetime:
        session.pop(FLOW, None)
        return None
    try:
        user = db.session.get(User, uuid.UUID(str(flow.get("uid"))))
    except ValueError:
        user = None
    if user is None or flow.get("fp") != signin.choice_fingerprint([user]):
        session.pop(FLOW, None)
        return None
    return user


def _claim(user: User) -> bool:
    """Use the flow up, in the sign-in's own transaction: the account's last
    sign-in moves on only if it is still what ``pending`` saw. Of two
    requests finishing one flow at once (a copied flow cookie), exactly one
    finds it so; the update waits for the other's (a row lock on
    PostgreSQL, the write lock on SQLite)."""
    seen = user.last_signin_at
    claimed = db.session.execute(
        sa.update(User)
        .where(
            User.id == user.id,
            User.password_hash.is_(None)
            if user.password_hash is None
            else User.password_hash == user.password_hash,
            User.last_signin_at.is_(None)
            if seen is None
            else User.last_signin_at == seen,
        )
        .values(last_signin_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount
    return claimed == 1


def finish(user: User, amr: list[str]) -> Response:
    """Issue the session after a verified second factor."""
    flow = session.get(FLOW) or {}
    if not _claim(user):
        db.session.rollback()
        session.pop(FLOW, None)
        audit_refusal(reason="signin_flow_used")
        return _expired()
    sso = flow.get("sso")
    first = AMR_FEDERATED if sso else mfa.AMR_PASSWORD
    signed_in = signin.complete_sign_in(
        context(),
        user,
        amr=[first, *amr, mfa.AMR_MFA],
        mfa_at=now(),
        sso_connection_id=uuid.UUID(sso) if sso else None,
    )
    return finish_sign_in(signed_in, flow.get("rd"))


def proceed(user: User, rd: str | None) -> Response:
    """After the password (and the workspace choice): the session at once,
    or the MFA step, or set-up when MFA is forced and the member has none.
    A refusal (disabled, IP allow-list) stops here, before any factor."""
    step = signin.second_step(context(), user)
    if step is None:
        signed_in = signin.complete_sign_in(context(), user, amr=[mfa.AMR_PASSWORD])
        return finish_sign_in(signed_in, rd)
    return begin(user, rd, enroll=step == "enroll")


def proceed_federated(user: User, connection_id: uuid.UUID, rd: str | None) -> Response:
    """After the company IdP vouched for the member (the account resolved,
    not yet committed): the pipeline, then the session or the MFA step."""
    ctx = context()
    step = signin.second_step(ctx, user, amr=[AMR_FEDERATED], via_sso=True)
    if step is None:
        signed_in = signin.complete_sign_in(
            ctx, user, amr=[AMR_FEDERATED], sso_connection_id=connection_id
        )
        return finish_sign_in(signed_in, rd)
    return begin(user, rd, enroll=step == "enroll", sso_connection=connection_id)


def in_sign_in(user: User) -> bool:
    """Whether this request is part of ``user``'s half-finished sign-in."""
    flow = session.get(FLOW)
    return isinstance(flow, dict) and flow.get("uid") == str(user.id)


def enrolled(user: User, amr: list[str], *, continue_url: str) -> Response | str:
    """After a factor was added (in the portal or at sign-in): the recovery
    codes page when this was the member's first factor (the codes are
    issued now and shown once), else straight on to ``continue_url``. At
    sign-in, ``continue_url`` is ``auth.mfa_setup_done``, reached by POST."""
    flow = session.get(FLOW)
    if isinstance(flow, dict) and flow.get("uid") == str(user.id):
        flow["amr"] = amr
        session[FLOW] = flow
    if mfa.factors(user.id).count == 1:
        codes = recovery.issue(context(), user)
        return render_template(
            "mfa/recovery_codes.html",
            codes=codes,
            continue_url=continue_url,
            continue_post=in_sign_in(user),
        )
    if in_sign_in(user):
        return redirect(url_for("auth.mfa_setup_done"))
    return redirect(continue_url)


def _expired() -> Response:
    return redirect(url_for("auth.login", expired=1))


@bp.route("/login/mfa", methods=["GET", "POST"])
def mfa_step():  # type: ignore[no-untyped-def]
    user = pending()
    if user is None:
        return _expired()
    have = mfa.factors(user.id)
    if not have.has_mfa:
        return _expired()
    if request.method == "GET":
        return _step_page(user, have)
    method = request.form.get("method", "")
    try:
        if method == "totp" and have.totp:
            totp.verify(context(), user, _field("code", MAX_CODE_FIELD))
            amr = [mfa.AMR_TOTP]
        elif method == "recovery":
            recovery.use(context(), user, _field("code", MAX_CODE_FIELD))
            amr = [mfa.AMR_RECOVERY]
        elif method == "webauthn" and have.security_keys + have.passkeys:
            # Bound to the challenge this browser was handed, not only to
            # the account: an answer made elsewhere does not count here.
            from idp.web.mfa_webauthn import handed_out

            done = webauthn_factor.authenticate(
                context(),
                user,
                _field("credential", MAX_CREDENTIAL_FIELD),
                issued=handed_out("mfa_step"),
            )
            amr = [mfa.AMR_KEY]
            if done.user_verified:
                amr.append(mfa.AMR_USER_VERIFIED)
        else:
            audit_refusal(reason="mfa_method_unknown")
            return _step_page(user, have, error="Choose a way to verify."), 400
    except (mfa.MfaFailed, Throttled, InvalidInput) as exc:
        audit_refusal(exc)
        return _step_page(user, have, error=exc.message, method=method), exc.status
    return finish(user, amr)


def _field(name: str, limit: int) -> str:
    """A posted field, refused (not counted as a guess, but audited by the
    caller) when it is longer than any real one."""
    value = request.form.get(name, "")
    if len(value) > limit:
        raise InvalidInput("That is far too long to be a code.", code="field_too_long")
    return value


def _step_page(
    user: User, have: mfa.Factors, *, error: str | None = None, method: str = ""
) -> str:
    return render_template(
        "auth/login_mfa.html",
        email=user.email,
        have=have,
        error=error,
        method=method,
        webauthn=settings().webauthn_available,
    )


@bp.get("/login/mfa/setup")
def mfa_setup():  # type: ignore[no-untyped-def]
    """Forced MFA and no factor yet: choose one to set up; there is no way
    past this page but setting one up (or signing out)."""
    user = pending()
    if user is None:
        return _expired()
    if mfa.factors(user.id).has_mfa:
        return redirect(url_for("auth.mfa_setup_done"))
    return render_template(
        "auth/login_mfa_setup.html",
        email=user.email,
        webauthn=settings().webauthn_available,
    )


@bp.route("/login/mfa/setup/done", methods=["GET", "POST"])
def mfa_setup_done():  # type: ignore[no-untyped-def]
    """Set-up finished (and its recovery codes seen): issue the session."""
    user = pending()
    if user is None:
        return _expired()
    if not mfa.factors(user.id).has_mfa:
        return redirect(url_for("auth.mfa_setup"))
    flow = session.get(FLOW) or {}
    if not (flow.get("enroll") and flow.get("amr")):
        # Only a factor set up in this very sign-in leads here; anyone else
        # with a factor proves it at the MFA step (else the password alone
        # would sign in).
        return redirect(url_for("auth.mfa_step"))
    if request.method == "GET":
        return render_template("auth/login_mfa_done.html", email=user.email)
    amr = [a for a in flow.get("amr", []) if isinstance(a, str)][:3]
    return finish(user, amr)

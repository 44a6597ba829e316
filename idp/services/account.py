"""What members do to their own account: password, reset, profile, email."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import phonenumbers
import sqlalchemy as sa

from connectors.mail import MailError
from idp.clock import now
from idp.db import db
from idp.models import EmailToken, Session, User, Workspace
from idp.security import (
    InvalidEmail,
    new_token,
    normalize_email,
    parse_email,
    token_digest,
)
from idp.services import audit, mail, sessions, throttle
from idp.services.context import Context
from idp.services.domains import require_allowed_domain
from idp.services.errors import Busy, Conflict, InvalidInput, InvalidLink, Throttled
from idp.services.invitations import clean_name
from idp.services.sso import enforce as sso_enforce
from idp.state import settings, state

log = logging.getLogger(__name__)
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_USERNAME = 64
MAX_PHONE_INPUT = 40


def rotate_token(ctx: Context) -> str:
    """A new token for the caller's session, in the caller's transaction."""
    assert ctx.session is not None
    token = new_token()
    db.session.execute(
        sa.update(Session)
        .where(Session.id == ctx.session.id)
        .values(token_hash=token_digest(token))
    )
    return token


def _verify_current(ctx: Context, password: str) -> None:
    assert ctx.user is not None
    # The sign-in lock holds here too: a stolen session must not give an
    # attacker unlimited guesses at the password.
    # Counted before hashing, as at sign-in (see throttle.reserve_attempt).
    wait = throttle.reserve_attempt(ctx.user.email)
    if wait:
        raise Throttled(
            "Too many wrong passwords for this account. Try again in a few minutes.",
            retry_after=wait,
            code="account_throttled",
        )
    try:
        ok, _ = state().passwords.verify(ctx.user.password_hash, password)
    except Busy:
        db.session.rollback()
        throttle.release_attempt(ctx.user.email)
        raise
    if ok:
        throttle.clear(ctx.user.email)
        db.session.commit()
    else:
        db.session.rollback()
        audit.record(
            ctx,
            "password.verify",
            workspace_id=ctx.user.workspace_id,
            outcome="failure",
            reason="bad_credentials",
            target=ctx.user,
        )
        db.session.commit()
        raise InvalidInput(
            "The current password is incorrect.", code="bad_credentials", audited=True
        )


def reauthenticate(ctx: Context, password: str) -> None:
    """The password typed again: the session counts as freshly signed in
    for changing sign-in methods (mfa.recent_auth_minutes)."""
    assert ctx.session is not None and ctx.user is not None
    _verify_current(ctx, password)
    db.session.execute(
        sa.update(Session)
        .where(Session.id == ctx.session.id)
        .values(reauthenticated_at=now())
    )
    audit.record(
        ctx,
        "session.reauthenticated",
        workspace_id=ctx.user.workspace_id,
        target=ctx.user,
    )
    db.session.commit()


def recently_authenticated(session: Session) -> bool:
    """Signed in, or the password typed again, within mfa.recent_auth_minutes."""
    window = timedelta(minutes=settings()["mfa"]["recent_auth_minutes"])
    latest = max(t for t in (session.authenticated_at, session.reauthenticated_at) if t)
    return now() - latest <= window


def change_password(ctx: Context, *, current: str, new: str) -> str:
    """Every other session ends; this one gets a new token, returned."""
    user = ctx.user
    assert user is not None
    prepared = state().passwords.check_new(new)
    _verify_current(ctx, current)
    user.password_hash = state().passwords.hash(prepared)
    user.password_changed_at = now()
    ended = sessions.revoke_user_sessions(
        user.id, "password_changed", keep=ctx.session.id if ctx.session else None
    )
    _void_links(user)
    token = rotate_token(ctx)
    audit.record(
        ctx,
        "password.change",
        workspace_id=user.workspace_id,
        target=user,
        details={"sessions_ended": ended},
    )
    db.session.commit()
    return token


def log_out_others(ctx: Context) -> str:
    """*Log out all other sessions*; this session carries on under a new token."""
    sessions.sign_out_others(ctx)
    token = rotate_token(ctx)
    db.session.commit()
    return token


def _issue_link(
    user: User, purpose: str, lifetime: timedelta, *, new_email: str | None = None
) -> str:
    """A new single-use mailed link for ``purpose``, replacing any older one
    of that purpose; returns the token (only its digest is stored)."""
    db.session.execute(
        sa.delete(EmailToken).where(
            EmailToken.user_id == user.id, EmailToken.purpose == purpose
        )
    )
    token = new_token()
    db.session.add(
        EmailToken(
            workspace_id=user.workspace_id,
            user_id=user.id,
            purpose=purpose,
            token_hash=token_digest(token),
            new_email=new_email,
            created_at=now(),
            expires_at=now() + lifetime,
        )
    )
    return token


def request_password_reset(ctx: Context, typed_email: str) -> None:
    """Mail a one-hour single-use link to every active account with this
    email. The answer is the same whether or not one exists, and mail goes
    out on another thread so its latency tells nothing either."""
    key = normalize_email(typed_email)
    users = (
        list(
            db.session.scalars(
                sa.select(User).where(User.email == key, User.status == "active")
            )
        )
        if key
        else []
    )
    minutes = settings()["invitations"]["reset_lifetime_minutes"]
    outgoing = []
    for user in users:
        token = _issue_link(user, "password_reset", timedelta(minutes=minutes))
        audit.record(
            ctx, "password.reset_request", workspace_id=user.workspace_id, target=user
        )
        workspace = db.session.get(Workspace, user.workspace_id)
        outgoing.append(
            mail.compose(
                "reset",
                user.email,
                f"Reset your password for {workspace.name}",
                url=mail.link(f"/reset/{token}"),
                user=user,
                workspace=workspace,
                minutes=minutes,
            )
        )
    db.session.commit()
    mailer = state().mailer
    if outgoing:
        threading.Thread(target=_send_all, args=(mailer, outgoing), daemon=True).start()


def _send_all(mailer, outgoing) -> None:  # type: ignore[no-untyped-def]
    for message in outgoing:
        try:
            mailer.send(message)
        except MailError as exc:
            # The person sees the same answer either way and may ask again;
            # the operator must learn that mail is failing.
            log.error("password.reset_mail_failed error=%s", exc)


def _live_token(token: str | None, purpose: str) -> EmailToken:
    if not token or len(token) > 128:
        raise InvalidLink()
    row = db.session.scalar(
        sa.select(EmailToken).where(
            EmailToken.token_hash == token_digest(token), EmailToken.purpose == purpose
        )
    )
    if row is None or row.expires_at <= now():
        raise InvalidLink()
    return row


def check_reset_link(token: str | None) -> User:
    row = _live_token(token, "password_reset")
    user = db.session.get(User, row.user_id)
    if user is None or user.status != "active":
        raise InvalidLink()
    return user


def _void_links(user: User, *purposes: str) -> None:
    """End the user's pending reset and email-change links (or those of
    ``purposes``), in the caller's transaction. A new password must shut out
    whoever asked for them with the old one: a pending email change would
    otherwise hand the account to their address after the owner's reset."""
    condition = [EmailToken.user_id == user.id]
    if purposes:
        condition.append(EmailToken.purpose.in_(purposes))
    db.session.execute(
        sa.delete(EmailToken)
        .where(*condition)
        .execution_options(synchronize_session=False)
    )


def _claim(row: EmailToken) -> None:
    claimed = db.session.execute(
        sa.delete(EmailToken)
        .where(EmailToken.id == row.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        db.session.rollback()
        raise InvalidLink("already_used")


def reset_password(ctx: Context, token: str | None, new: str) -> User:
    """Set a new password from a mailed link. Every session ends, and the
    person then signs in as usual, so a reset never skips a second factor."""
    row = _live_token(token, "password_reset")
    prepared = state().passwords.check_new(new)
    password_hash = state().passwords.hash(prepared)
    _claim(row)
    user = db.session.get(User, row.user_id)
    if user is None or user.status != "active":
        db.session.rollback()
        raise InvalidLink()
    user.password_hash = password_hash
    user.password_changed_at = now()
    ended = sessions.revoke_user_sessions(user.id, "password_reset")
    _void_links(user)
    throttle.clear(user.email)
    audit.record(
        Context.for_user(user, ctx.client),
        "password.reset",
        workspace_id=user.workspace_id,
        target=user,
        details={"sessions_ended": ended},
    )
    db.session.commit()
    return user


def _clean_username(username: str) -> str | None:
    username = username.strip()
    if not username:
        return None
    if len(username) > MAX_USERNAME or not set(username.lower()) <= USERNAME_CHARS:
        raise InvalidInput(
            f"A username has up to {MAX_USERNAME} letters, digits, dots, dashes or underscores.",
            code="invalid_username",
        )
    return username


def _clean_phone(phone: str) -> str | None:
    phone = phone.strip()
    if not phone:
        return None
    region = settings()["profile"]["phone_region"] or None
    hint = "" if region else " in international form, such as +44 20 7946 0958"
    if len(phone) > MAX_PHONE_INPUT:
        # Refused, not cut: a cut could turn junk into a valid number.
        raise InvalidInput(f"Enter a valid phone number{hint}.", code="invalid_phone")
    try:
        parsed = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput(
            f"Enter a valid phone number{hint}.", code="invalid_phone"
        ) from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidInput(
            "That phone number does not exist; check the digits.", code="invalid_phone"
        )
    if parsed.extension:
        # E.164 has no room for an extension; refuse rather than drop it.
        raise InvalidInput(
            "Enter the number without an extension.", code="invalid_phone"
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def update_profile(
    ctx: Context, *, full_name: str, username: str, phone: str, job_title: str
) -> User:
    user = ctx.user
    assert user is not None
    name = clean_name(full_name)
    if not name:
        raise InvalidInput("Enter your name.", code="invalid_name")
    handle = _clean_username(username)
    number = _clean_phone(phone)
    title = clean_name(job_title, label="A job title") or None
    if handle is not None:
        taken = db.session.scalar(
            sa.select(User.id).where(
                User.workspace_id == user.workspace_id,
                User.username_key == handle.lower(),
                User.id != user.id,
            )
        )
        if taken:
            raise Conflict(
                "That username is taken in this workspace.", code="username_taken"
            )
    before = {
        "full_name": user.full_name,
        "username": user.username,
        "phone": user.phone,
        "job_title": user.job_title,
    }
    user.full_name = name
    user.username = handle
    user.username_key = handle.lower() if handle else None
    user.phone = number
    user.job_title = title
    after = {"full_name": name, "username": handle, "phone": number, "job_title": title}
    changed = {
        k: {"old": before[k], "new": after[k]} for k in after if before[k] != after[k]
    }
    if changed:
        audit.record(
            ctx,
            "profile.update",
            workspace_id=user.workspace_id,
            target=user,
            details={"changed": changed},
        )
    try:
        db.session.commit()
    except sa.exc.IntegrityError as exc:
        db.session.rollback()
        raise Conflict(
            "That username is taken in this workspace.", code="username_taken"
        ) from exc
    return user


def request_email_change(ctx: Context, *, new_email: str, password: str) -> str:
    """Mail a confirmation link to the new address; nothing changes until it
    is followed. Returns the normalised new address."""
    user = ctx.user
    assert user is not None
    try:
        address = parse_email(new_email)
    except InvalidEmail as exc:
        raise InvalidInput(str(exc), code="invalid_email") from exc
    if address == user.email:
        raise InvalidInput("That is already your email address.")
    sso_enforce.admit_email_change(ctx, user, action="email.change_request")
    workspace = db.session.get(Workspace, user.workspace_id)
    require_allowed_domain(ctx, workspace, address, action="email.change_request")
    _verify_current(ctx, password)
    _require_email_free(workspace, address)
    hours = settings()["invitations"]["email_change_lifetime_hours"]
    token = _issue_link(user, "email_change", timedelta(hours=hours), new_email=address)
    audit.record(
        ctx,
        "email.change_request",
        workspace_id=user.workspace_id,
        target=user,
        details={"new_email": address},
    )
    db.session.commit()
    error = mail.send(
        mail.compose(
            "email_change",
            address,
            "Confirm your new email address",
            url=mail.link(f"/email/confirm/{token}"),
            user=user,
            workspace=workspace,
            hours=hours,
        )
    )
    if error:
        raise InvalidInput(
            f"The confirmation mail could not be sent: {error}", code="mail_failed"
        )
    return address


def _require_email_free(workspace: Workspace, address: str) -> None:
    taken = db.session.scalar(
        sa.select(User.id).where(
            User.workspace_id == workspace.id, User.email == address
        )
    )
    if taken:
        raise Conflict(
            "Another member of this workspace already uses that address.",
            code="email_taken",
        )


def check_email_change_link(token: str | None) -> None:
    """InvalidLink unless the confirmation link is live; consumes nothing."""
    row = _live_token(token, "email_change")
    user = db.session.get(User, row.user_id)
    if user is None or user.status != "active":
        raise InvalidLink()


def confirm_email_change(ctx: Context, token: str | None) -> User:
    row = _live_token(token, "email_change")
    user = db.session.get(User, row.user_id)
    if user is None or user.status != "active" or row.new_email is None:
        raise InvalidLink()
    sso_enforce.admit_email_change(ctx, user, action="email.change")
    workspace = db.session.get(Workspace, user.workspace_id)
    new_email = row.new_email
    _require_email_free(workspace, new_email)
    require_allowed_domain(ctx, workspace, new_email, action="email.change")
    _claim(row)
    old = user.email
    try:
        user.email = new_email
        # Reset links went to the old address, which no longer speaks for the account.
        _void_links(user, "password_reset")
        audit.record(
            Context.for_user(user, ctx.client),
            "email.change",
            workspace_id=user.workspace_id,
            target=user,
            details={"old": old, "new": new_email},
        )
        db.session.commit()
    except sa.exc.IntegrityError as exc:
        # Another member took the address after the check above.
        db.session.rollback()
        raise Conflict(
            "Another member of this workspace already uses that address.",
            code="email_taken",
        ) from exc
    mail.send(
        mail.compose(
            "email_changed",
            old,
            "Your email address was changed",
            user=user,
            workspace=workspace,
            new_email=new_email,
        )
    )
    return user

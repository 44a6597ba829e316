"""Authenticator apps (RFC 6238 with pyotp): set-up, confirmation, codes.

Contract (the sign-in step and the portal call these):

- ``begin_setup(ctx, user) -> Setup``: a new secret for the member (an
  unconfirmed row replacing any earlier unconfirmed one), with its
  ``otpauth://`` URI and the QR code as SVG markup.
- ``confirm_setup(ctx, user, code, ref=...) -> None``: enables the app when
  the code verifies (MFA-1 rules); raises MfaFailed otherwise. Audited.
- A set-up waiting for its code is shown again (``current_setup``,
  ``pending_setup``) and confirmed only with its ``Setup.ref``, which the
  browser it was first shown to keeps: another browser or session of the
  member (someone else with the password) never sees that secret.
- ``verify(ctx, user, code) -> None``: the MFA step; raises MfaFailed (or
  Throttled). Each code works once, even across parallel requests.
- ``remove(ctx, user) -> None``: refuses the last factor while MFA is
  forced (mfa.ensure_may_remove). Audited.

Codes use the defaults every app understands: SHA-1, 6 digits, 30 s. One
step of clock drift is tolerated each way, and the step of the last
accepted code is stored: a code for it or any earlier step is refused, so
a code works once (SECURITY.md 6.5.1, MFA-1).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import timedelta

import pyotp
import segno
import sqlalchemy as sa
from cryptography.fernet import InvalidToken
from flask import current_app

from idp.clock import now
from idp.db import db
from idp.models import TotpSecret, User
from idp.security import secrets_equal
from idp.services import audit, mfa, throttle
from idp.services.context import Context
from idp.services.errors import Conflict, InvalidInput, NotFound, Throttled
from idp.state import settings

DIGITS = 6
STEP_SECONDS = 30
# Steps of clock drift accepted each way (RFC 6238 section 5.2).
TOLERANCE = 1
CODE_RE = re.compile(r"[0-9]{6}")
# A set-up page shown again within this time shows the same secret.
SETUP_REUSE_SECONDS = 600
# Typed codes may carry spaces ("123 456"); nothing else is cleaned.
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Setup:
    """What the set-up page shows: the secret for typing in by hand, the
    ``otpauth://`` URI, and that URI as a QR code (inline SVG markup)."""

    secret: str
    uri: str
    qr_svg: str
    # Names this set-up without revealing it: a digest of the stored, sealed
    # secret. Only a browser holding it sees the set-up again or confirms it.
    ref: str = ""

    @property
    def grouped_secret(self) -> str:
        """The secret in groups of four, easier to type; apps ignore spaces."""
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))


def member_context(ctx: Context, user: User) -> Context:
    """The member as actor: at sign-in the request itself is anonymous."""
    if ctx.user is not None and ctx.user.id == user.id:
        return ctx
    return Context.for_user(user, ctx.client)


def _otp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS, digest=hashlib.sha1)


def _seal(secret: str) -> str:
    return (
        current_app.extensions["idp_keys"].encryption.encrypt(secret.encode()).decode()
    )


def _unseal(sealed: str) -> str:
    try:
        return current_app.extensions["idp_keys"].encryption.decrypt(sealed).decode()
    except InvalidToken as exc:
        # The key that sealed it was removed from the keys folder.
        raise Conflict(
            "Your authenticator app cannot be read with this installation's keys. "
            "Ask an admin to reset your MFA.",
            code="totp_key_missing",
        ) from exc


def _issuer() -> str:
    # A colon would split the label ("Issuer:account") in the wrong place.
    return settings()["mfa"]["totp_issuer"].replace(":", "").strip() or "Portcullis"


def _ref(sealed: str) -> str:
    return hashlib.sha256(sealed.encode()).hexdigest()


def _held_by(row: TotpSecret, ref: str | None) -> bool:
    """Whether ``ref`` names this waiting set-up. None means the caller holds
    the secret itself (a script, a test), never a browser."""
    return ref is None or secrets_equal(_ref(row.secret_encrypted), ref)


def _setup_for(secret: str, user: User, sealed: str) -> Setup:
    issuer = _issuer()
    uri = _otp(secret).provisioning_uri(name=user.email, issuer_name=issuer)
    qr = segno.make(uri, error="m", micro=False)
    # Plain paths with presentation attributes, no style attribute or
    # element, so the strict CSP lets it render inline; a white background
    # keeps it scannable whatever the page colour.
    svg = qr.svg_inline(
        scale=5,
        dark="#000",
        light="#fff",
        svgclass="qr-code",
        lineclass=None,
        title=f"QR code for {issuer}",
    )
    return Setup(secret=secret, uri=uri, qr_svg=svg, ref=_ref(sealed))


# --- the per-member attempt count ---------------------------------------------


def _throttle_key(user: User) -> str:
    # Upper case: sign-in keys are normalised emails (always lower case), so
    # nobody can type an email that counts against a member's MFA.
    return f"MFA:{user.id}"


def count_attempt(ctx: Context, user: User) -> None:
    """Count one MFA attempt against the member before any code is checked,
    as passwords are (throttle.reserve_attempt); a success calls
    ``attempt_succeeded``. Raises Throttled, audited, while locked.
    Recovery codes share the count."""
    cfg = settings()["mfa"]
    wait = throttle.reserve_attempt(
        _throttle_key(user),
        limit=cfg["failure_limit"],
        lockout_seconds=cfg["lockout_seconds"],
    )
    if not wait:
        return
    fail(ctx, user, "mfa_throttled")
    minutes = max(1, math.ceil(wait / 60))
    raise Throttled(
        f"Too many wrong codes. Try again in {minutes} "
        f"minute{'s' if minutes != 1 else ''}.",
        retry_after=wait,
        code="mfa_throttled",
        audited=True,
    )


def attempt_succeeded(user: User) -> None:
    """Clear the member's count, in the caller's transaction."""
    throttle.clear(_throttle_key(user))


def fail(ctx: Context, user: User, reason: str) -> None:
    """Record a refused code as ``mfa.failure`` and commit it alone."""
    audit.record_now(
        member_context(ctx, user),
        "mfa.failure",
        workspace_id=user.workspace_id,
        outcome="failure",
        reason=reason,
        target=user,
    )


# --- set-up -------------------------------------------------------------------


def begin_setup(ctx: Context, user: User) -> Setup:
    """A new secret waiting for its first code; any earlier one waiting dies.
    Conflict when the member already has an authenticator app."""
    if _confirmed(user) is not None:
        raise Conflict(
            "Your authenticator app is already set up. Remove it first to set up "
            "another.",
            code="totp_exists",
        )
    secret = pyotp.random_base32()
    sealed = _seal(secret)
    db.session.execute(
        sa.delete(TotpSecret).where(
            TotpSecret.user_id == user.id, TotpSecret.confirmed_at.is_(None)
        )
    )
    db.session.add(
        TotpSecret(
            user_id=user.id,
            workspace_id=user.workspace_id,
            secret_encrypted=sealed,
            created_at=now(),
        )
    )
    try:
        db.session.commit()
    except sa.exc.IntegrityError as exc:
        # Set up and confirmed in another window meanwhile.
        db.session.rollback()
        raise Conflict(
            "Your authenticator app was set up in another window.",
            code="totp_exists",
        ) from exc
    return _setup_for(secret, user, sealed)


def current_setup(ctx: Context, user: User, *, ref: str) -> Setup:
    """The set-up page's secret: the waiting one if this browser was shown
    it (``ref``) within SETUP_REUSE_SECONDS (a reload must not kill a secret
    just scanned), else a new one. Another browser of the member (someone
    else with the password) is never shown the secret being scanned."""
    row = _unconfirmed(user)
    if (
        row is not None
        and ref
        and _held_by(row, ref)
        and now() - row.created_at <= timedelta(seconds=SETUP_REUSE_SECONDS)
    ):
        return _setup_for(_unseal(row.secret_encrypted), user, row.secret_encrypted)
    return begin_setup(ctx, user)


def pending_setup(user: User, *, ref: str | None = None) -> Setup | None:
    """The set-up still waiting for its first code, to show again after a
    wrong one; None when there is none, or when ``ref`` does not name it."""
    row = _unconfirmed(user)
    if row is None or not _held_by(row, ref):
        return None
    return _setup_for(_unseal(row.secret_encrypted), user, row.secret_encrypted)


def confirm_setup(
    ctx: Context, user: User, code: str, *, ref: str | None = None
) -> None:
    """Enable the waiting set-up when ``code`` is right for it, and (with
    ``ref``) only the set-up this browser was shown."""
    row = _unconfirmed(user)
    if row is None or not _held_by(row, ref):
        raise InvalidInput(
            "No authenticator app set-up is waiting for a code. Start the set-up "
            "again.",
            code="totp_setup_missing",
        )
    count_attempt(ctx, user)
    step = _matching_step(ctx, user, _unseal(row.secret_encrypted), code)
    moment = now()
    # Enabled only if this very secret is still the one waiting: a set-up
    # begun again meanwhile (a new secret) or confirmed by a parallel
    # request leaves nothing to update.
    confirmed = db.session.execute(
        sa.update(TotpSecret)
        .where(
            TotpSecret.user_id == user.id,
            TotpSecret.confirmed_at.is_(None),
            TotpSecret.secret_encrypted == row.secret_encrypted,
        )
        .values(confirmed_at=moment, last_step=step, last_used_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount
    if confirmed != 1:
        db.session.rollback()
        fail(ctx, user, "totp_setup_replaced")
        raise mfa.MfaFailed(
            "This set-up was replaced or finished in another window. Start again.",
            code="totp_setup_replaced",
        )
    attempt_succeeded(user)
    audit.record(
        member_context(ctx, user),
        "mfa.totp_enabled",
        workspace_id=user.workspace_id,
        target=user,
    )
    db.session.commit()


# --- the MFA step -------------------------------------------------------------


def verify(ctx: Context, user: User, code: str) -> None:
    """Accept ``code`` once for the member's authenticator app."""
    row = _confirmed(user)
    if row is None:
        fail(ctx, user, "totp_missing")
        raise mfa.MfaFailed(code="totp_missing")
    count_attempt(ctx, user)
    step = _matching_step(ctx, user, _unseal(row.secret_encrypted), code)
    moment = now()
    # The step moves forward in one statement, so of two requests with the
    # same code (or with codes for the same or earlier steps) exactly one
    # updates the row; the other finds the step already taken.
    taken = db.session.execute(
        sa.update(TotpSecret)
        .where(
            TotpSecret.user_id == user.id,
            TotpSecret.confirmed_at.is_not(None),
            sa.or_(TotpSecret.last_step.is_(None), TotpSecret.last_step < step),
        )
        .values(last_step=step, last_used_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        db.session.rollback()
        fail(ctx, user, "totp_replayed")
        raise mfa.MfaFailed(
            "That code was already used. Wait for the next one in your app.",
            code="totp_replayed",
        )
    attempt_succeeded(user)
    db.session.commit()


def _matching_step(ctx: Context, user: User, secret: str, code: str) -> int:
    """The time step ``code`` belongs to, within the tolerance; MfaFailed
    (counted already, audited here) when it belongs to none."""
    typed = SPACES.sub("", code)
    if not CODE_RE.fullmatch(typed):
        fail(ctx, user, "totp_malformed")
        raise mfa.MfaFailed(
            f"Enter the {DIGITS}-digit code from your authenticator app.",
            code="totp_malformed",
        )
    otp = _otp(secret)
    moment = now()
    # Every candidate is compared (no early exit); the latest step wins.
    matched = [
        otp.timecode(moment) + offset
        for offset in range(-TOLERANCE, TOLERANCE + 1)
        if secrets_equal(otp.at(moment, counter_offset=offset), typed)
    ]
    if not matched:
        fail(ctx, user, "totp_invalid")
        raise mfa.MfaFailed(code="totp_invalid")
    return max(matched)


# --- removal ------------------------------------------------------------------


def remove(ctx: Context, user: User) -> None:
    """Remove the member's authenticator app (and any set-up waiting)."""
    if _confirmed(user) is None:
        raise NotFound("No authenticator app is set up.", code="totp_missing")
    mfa.ensure_may_remove(user, totp=True)
    db.session.execute(sa.delete(TotpSecret).where(TotpSecret.user_id == user.id))
    audit.record(
        member_context(ctx, user),
        "mfa.totp_removed",
        workspace_id=user.workspace_id,
        target=user,
    )
    db.session.commit()


def _confirmed(user: User) -> TotpSecret | None:
    return db.session.scalar(
        sa.select(TotpSecret).where(
            TotpSecret.user_id == user.id, TotpSecret.confirmed_at.is_not(None)
        )
    )


def _unconfirmed(user: User) -> TotpSecret | None:
    return db.session.scalar(
        sa.select(TotpSecret).where(
            TotpSecret.user_id == user.id, TotpSecret.confirmed_at.is_(None)
        )
    )

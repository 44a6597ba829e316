"""Single-use WebAuthn challenges, kept in the database so that every
instance can check them.

A challenge is found again by its value, which only the browser that asked
was given, and by the account and ceremony it was issued for. Taking one
deletes its row before anything else, in the caller's transaction, so a
second use (even a parallel one) finds nothing.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import sqlalchemy as sa
from webauthn.helpers import bytes_to_base64url

from idp.clock import now
from idp.db import db
from idp.models import WebAuthnChallenge
from idp.security import secrets_equal
from idp.state import settings

CHALLENGE_BYTES = 32
# Live challenges one account may hold: enough for a few browsers at once.
# Without a bound, a member asking for options in a loop (the portal's are
# not rate limited) would write a row per request, each kept for minutes.
MAX_LIVE_PER_ACCOUNT = 5


def lifetime() -> int:
    """Seconds a challenge stays usable (``webauthn.challenge_seconds``)."""
    return int(settings()["webauthn"]["challenge_seconds"])


def issue(user_id: uuid.UUID | None, purpose: str) -> bytes:
    """A fresh random challenge for one ceremony of ``purpose``, for this
    account (None: a passkey sign-in, account unknown). Expired challenges
    of anybody are cleared on the way, and an account's oldest beyond
    ``MAX_LIVE_PER_ACCOUNT``, so the table stays small (anonymous ones are
    bounded by the rate limit of their endpoints). The caller commits."""
    moment = now()
    db.session.execute(
        sa.delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < moment)
    )
    if user_id is not None:
        newest = (
            sa.select(WebAuthnChallenge.id)
            .where(WebAuthnChallenge.user_id == user_id)
            .order_by(WebAuthnChallenge.created_at.desc(), WebAuthnChallenge.id)
            .limit(MAX_LIVE_PER_ACCOUNT - 1)
        )
        db.session.execute(
            sa.delete(WebAuthnChallenge).where(
                WebAuthnChallenge.user_id == user_id,
                WebAuthnChallenge.id.not_in(newest),
            ),
            execution_options={"synchronize_session": False},
        )
    value = secrets.token_bytes(CHALLENGE_BYTES)
    db.session.add(
        WebAuthnChallenge(
            user_id=user_id,
            purpose=purpose,
            challenge=value,
            created_at=moment,
            expires_at=moment + timedelta(seconds=lifetime()),
        )
    )
    return value


def take(
    value: bytes,
    purpose: str,
    user_id: uuid.UUID | None,
    *,
    issued: str | None = None,
) -> str | None:
    """Spend the challenge the browser signed. None when it was live; else
    the reason code: ``challenge_unknown`` (no such challenge for this
    purpose and account, already spent, or not the one ``issued`` to this
    browser) or ``challenge_expired``."""
    if issued is not None and not secrets_equal(bytes_to_base64url(value), issued):
        return "challenge_unknown"
    owner = (
        WebAuthnChallenge.user_id.is_(None)
        if user_id is None
        else WebAuthnChallenge.user_id == user_id
    )
    taken = db.session.execute(
        sa.delete(WebAuthnChallenge)
        .where(
            WebAuthnChallenge.challenge == value,
            WebAuthnChallenge.purpose == purpose,
            owner,
        )
        .returning(WebAuthnChallenge.expires_at),
        execution_options={"synchronize_session": False},
    ).first()
    if taken is None:
        return "challenge_unknown"
    if taken.expires_at <= now():
        return "challenge_expired"
    return None

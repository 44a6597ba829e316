"""Recovery codes: ten single-use codes, shown once, stored hashed.

Contract:

- ``issue(ctx, user) -> list[str]``: ten new codes; every earlier one dies.
  Audited.
- ``use(ctx, user, code) -> None``: spends one code at the MFA step (once,
  even across parallel requests); raises MfaFailed (or Throttled). Audited,
  and the member is told by email.
- ``remaining(user_id) -> int``.

A code is twelve characters of Crockford's base32 (60 random bits), shown
as ``xxxxxx-xxxxxx``. What the person types is compared in lower case
without spaces or dashes, with the look-alikes o, i and l read as 0, 1, 1
(the alphabet has none of them). The database keeps only SHA-256 of that
normal form: with 60 random bits a code cannot be found from its hash by
guessing, so no slow hash is needed (SECURITY.md 6.5.2).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid

import sqlalchemy as sa
from flask import current_app

from idp.clock import now
from idp.db import db
from idp.models import RecoveryCode, User, Workspace
from idp.services import audit, mail, mfa
from idp.services.context import Context
from idp.services.errors import Conflict
from idp.services.mfa import totp

log = logging.getLogger(__name__)

COUNT = 10
GROUP = 6
LENGTH = 2 * GROUP
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
LOOKALIKES = str.maketrans({"o": "0", "i": "1", "l": "1"})
# Spaces, ASCII and Unicode dashes, and the minus sign.
SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")


def new_code() -> str:
    """One random code in its display form, ``xxxxxx-xxxxxx``."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return f"{raw[:GROUP]}-{raw[GROUP:]}"


def normalize(code: str) -> str | None:
    """The form a code is hashed in, or None when it cannot be one."""
    text = SEPARATORS.sub("", code).lower().translate(LOOKALIKES)
    if len(text) != LENGTH or any(c not in ALPHABET for c in text):
        return None
    return text


def digests(user_id: uuid.UUID, normalized: str) -> list[str]:
    """The stored forms of a code, newest secret key first: HMAC-SHA256
    keyed with the installation's secret key and bound to the member. The
    codes carry 60 random bits, too few to leave to a plain hash: with a
    copy of the database alone, nobody can test guesses offline (NIST
    SP 800-63B look-up secrets). A rotated key keeps old codes working."""
    message = f"recovery-code:{user_id}:{normalized}".encode("ascii")
    return [
        hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
        for key in current_app.extensions["idp_keys"].secrets
    ]


def issue(ctx: Context, user: User) -> list[str]:
    """Ten new codes for a member with a factor; the old ones stop working."""
    if not mfa.factors(user.id).has_mfa:
        raise Conflict(
            "Recovery codes stand in for a lost factor: set up an authenticator "
            "app or a key first.",
            code="no_factor",
        )
    codes: set[str] = set()
    while len(codes) < COUNT:
        codes.add(new_code())
    moment = now()
    db.session.execute(
        sa.delete(RecoveryCode)
        .where(RecoveryCode.user_id == user.id)
        .execution_options(synchronize_session=False)
    )
    db.session.add_all(
        RecoveryCode(
            workspace_id=user.workspace_id,
            user_id=user.id,
            code_hash=digests(user.id, code.replace("-", ""))[0],
            created_at=moment,
        )
        for code in codes
    )
    audit.record(
        totp.member_context(ctx, user),
        "mfa.recovery_issued",
        workspace_id=user.workspace_id,
        target=user,
        details={"count": COUNT},
    )
    db.session.commit()
    return sorted(codes)


def use(ctx: Context, user: User, code: str) -> None:
    """Spend one of the member's codes in place of a factor."""
    totp.count_attempt(ctx, user)
    normalized = normalize(code)
    if normalized is None:
        totp.fail(ctx, user, "recovery_malformed")
        raise mfa.MfaFailed(
            "A recovery code has 12 letters and digits, such as abc123-def456.",
            code="recovery_malformed",
        )
    moment = now()
    # Spent in one statement: of two requests with the same code, exactly
    # one finds it unused.
    spent = db.session.execute(
        sa.update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash.in_(digests(user.id, normalized)),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount
    if spent != 1:
        db.session.rollback()
        totp.fail(ctx, user, "recovery_invalid")
        raise mfa.MfaFailed(
            "That recovery code is not right, or it was already used.",
            code="recovery_invalid",
        )
    totp.attempt_succeeded(user)
    left = remaining(user.id)
    member = totp.member_context(ctx, user)
    audit.record(
        member,
        "mfa.recovery_used",
        workspace_id=user.workspace_id,
        target=user,
        details={"remaining": left},
    )
    db.session.commit()
    _tell(member, user, left)


def remaining(user_id: uuid.UUID) -> int:
    return db.session.scalar(
        sa.select(sa.func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
    )


def _tell(ctx: Context, user: User, left: int) -> None:
    """Mail the member that a code was used: if it was not them, they learn
    that someone has their password and a code."""
    workspace = db.session.get(Workspace, user.workspace_id)
    error = mail.send(
        mail.compose(
            "recovery_used",
            user.email,
            f"A recovery code was used to sign in to {workspace.name}",
            url=mail.link("/portal/privacy-security"),
            user=user,
            workspace=workspace,
            left=left,
            when=now(),
            ip=ctx.client.ip,
        )
    )
    if error is not None:
        # The sign-in stands; the operator must learn that mail is failing.
        log.error("mfa.recovery_mail_failed error=%s", error)

"""Second factors: what a member has, and the rules every factor shares.

A member "has MFA" with a confirmed authenticator app, a security key or a
passkey (a passkey verifies the person itself). Recovery codes alone are
not a factor: they stand in for one that was lost.

The factors themselves live in ``totp``, ``webauthn`` and ``recovery``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from idp.db import db
from idp.models import (
    RecoveryCode,
    SecurityPolicy,
    TotpSecret,
    User,
    WebAuthnCredential,
)
from idp.services.errors import Forbidden, ServiceError

# amr values (RFC 8176) each way of signing in records on the session.
AMR_PASSWORD = "pwd"
AMR_TOTP = "otp"
AMR_RECOVERY = "otp"
AMR_KEY = "hwk"
AMR_USER_VERIFIED = "user"
AMR_MFA = "mfa"

FACTOR_LABELS = {
    "totp": "Authenticator app",
    "passkey": "Passkey",
    "security_key": "Security key",
}


class MfaFailed(ServiceError):
    """A code or key that did not verify. Raised after the failure is
    counted and audited."""

    status = 401
    default_code = "mfa_failed"

    def __init__(
        self,
        message: str = "That code is not right. Try again.",
        *,
        code: str = "mfa_failed",
    ) -> None:
        super().__init__(message, code=code, audited=True)


@dataclass(frozen=True)
class Factors:
    totp: bool = False
    passkeys: int = 0
    security_keys: int = 0
    recovery_left: int = 0

    @property
    def has_mfa(self) -> bool:
        return self.totp or self.passkeys > 0 or self.security_keys > 0

    @property
    def count(self) -> int:
        return int(self.totp) + self.passkeys + self.security_keys

    @property
    def labels(self) -> tuple[str, ...]:
        found = []
        if self.totp:
            found.append(FACTOR_LABELS["totp"])
        if self.passkeys:
            found.append(FACTOR_LABELS["passkey"])
        if self.security_keys:
            found.append(FACTOR_LABELS["security_key"])
        return tuple(found)


def factors(user_id: uuid.UUID) -> Factors:
    """The member's factors, read in one query."""
    row = db.session.execute(
        sa.select(
            sa.select(TotpSecret.user_id)
            .where(TotpSecret.user_id == user_id, TotpSecret.confirmed_at.is_not(None))
            .exists(),
            _credential_count(user_id, "passkey"),
            _credential_count(user_id, "security_key"),
            sa.select(sa.func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
            .scalar_subquery(),
        )
    ).one()
    return Factors(
        totp=bool(row[0]),
        passkeys=int(row[1]),
        security_keys=int(row[2]),
        recovery_left=int(row[3]),
    )


def _credential_count(user_id: uuid.UUID, kind: str) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(WebAuthnCredential)
        .where(WebAuthnCredential.user_id == user_id, WebAuthnCredential.kind == kind)
        .scalar_subquery()
    )


def user_has_mfa(user: User) -> bool:
    return factors(user.id).has_mfa


def has_mfa_clause() -> sa.ColumnElement[bool]:
    """user_has_mfa as a SQL condition on User, for counting many members."""
    return sa.or_(
        sa.select(TotpSecret.user_id)
        .where(TotpSecret.user_id == User.id, TotpSecret.confirmed_at.is_not(None))
        .exists(),
        sa.select(WebAuthnCredential.id)
        .where(WebAuthnCredential.user_id == User.id)
        .exists(),
    )


def factors_for(users: Sequence[User]) -> dict[uuid.UUID, tuple[str, ...]]:
    """Each member's factor labels by id, in two queries for a whole page."""
    ids = [u.id for u in users]
    found: dict[uuid.UUID, set[str]] = {i: set() for i in ids}
    if ids:
        for (user_id,) in db.session.execute(
            sa.select(TotpSecret.user_id).where(
                TotpSecret.user_id.in_(ids), TotpSecret.confirmed_at.is_not(None)
            )
        ):
            found[user_id].add("totp")
        for user_id, kind in db.session.execute(
            sa.select(WebAuthnCredential.user_id, WebAuthnCredential.kind)
            .where(WebAuthnCredential.user_id.in_(ids))
            .distinct()
        ):
            found[user_id].add(kind)
    order = ("totp", "passkey", "security_key")
    return {
        i: tuple(FACTOR_LABELS[k] for k in order if k in kinds)
        for i, kinds in found.items()
    }


def mfa_forced(workspace_id: uuid.UUID) -> bool:
    mode = db.session.scalar(
        sa.select(SecurityPolicy.mfa_mode).where(
            SecurityPolicy.workspace_id == workspace_id
        )
    )
    return mode not in (None, "off")


def ensure_may_remove(user: User, *, totp: bool = False, credentials: int = 0) -> None:
    """Refuse to remove the member's last factor while the workspace forces
    MFA: ``totp`` when the authenticator app goes, ``credentials`` how many
    WebAuthn credentials go.

    The member's row is written first, which locks it (a row lock on
    PostgreSQL, the write lock on SQLite) until the caller commits or rolls
    back: two removals at once are counted one after the other, so they
    cannot both take what each thinks is the second-last factor."""
    db.session.execute(
        sa.update(User)
        .where(User.id == user.id)
        .values(workspace_id=User.workspace_id)
        .execution_options(synchronize_session=False)
    )
    now_has = factors(user.id)
    left = now_has.count - int(totp and now_has.totp) - credentials
    if left <= 0 and now_has.has_mfa and mfa_forced(user.workspace_id):
        raise Forbidden(
            "Your workspace requires multi-factor authentication, so your last "
            "factor cannot be removed. Set up another one first.",
            code="last_factor",
        )

"""Passkeys and security keys (py_webauthn): registration, sign-in, and the
relying-party checks we own (MFA-2, MFA-3).

Contract:

- ``registration_options(ctx, user, kind) -> str``: JSON for
  ``PublicKeyCredential.parseCreationOptionsFromJSON``; kind is "passkey"
  (discoverable, user verification required) or "security_key".
- ``register(ctx, user, kind, credential_json, name) -> WebAuthnCredential``.
- ``authentication_options(user_or_none) -> str``: JSON for
  ``parseRequestOptionsFromJSON``; None: a passkey sign-in (no allow list).
- ``authenticate(ctx, user_or_none, credential_json) -> Authenticated``:
  the account and credential that signed, and whether the person was
  verified; raises MfaFailed. With a user: only that user's credentials.
- ``rename(ctx, user, credential_id, name)``, ``delete(ctx, user,
  credential_id)`` (refuses the last factor while MFA is forced).

Each ceremony spends its challenge (``webauthn_challenges``) before any
other check; a refused ceremony commits that with its audit event, so a
challenge works once whatever the outcome. An adapter that kept the
challenge it handed out passes it as ``issued``, binding the ceremony to
that browser too.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorAttachment,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialHint,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp.clock import now
from idp.db import db
from idp.models import User, WebAuthnCredential
from idp.models.credentials import WEBAUTHN_KINDS
from idp.security import secrets_equal
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Forbidden, InvalidInput, NotFound, ServiceError
from idp.services.mfa import MfaFailed, ensure_may_remove
from idp.services.mfa import webauthn_challenges as challenges
from idp.state import settings

# A real credential's JSON is one or two kilobytes; attestation certificate
# chains push some to about eight.
MAX_CREDENTIAL_JSON = 16_384
MAX_NAME = 100
# Enough for every device a person owns; a bound on what one account stores.
MAX_CREDENTIALS = 20

KIND_LABELS = {"passkey": "Passkey", "security_key": "Security key"}
UNAVAILABLE = (
    "Passkeys and security keys need Portcullis to be reached by a host name, "
    "not an IP address. Ask the operator to set a host name as its public URL."
)
NOT_VERIFIED = "That passkey or security key could not be verified. Try again."
EXPIRED = "That request took too long and has expired. Try again."
CLONED = (
    "That key could not be verified: its use counter went backwards, as happens "
    "when a key has been copied. Use another way to sign in, and tell an admin."
)

# py_webauthn raises one exception type per ceremony; its message tells the
# checks apart. Reason codes for the audit log, first match wins.
_REASONS = (
    ("origin", "origin_mismatch"),
    ("RP ID hash", "rp_id_mismatch"),
    ("User verification is required", "user_verification_missing"),
    ("not present", "user_presence_missing"),
    ("challenge", "challenge_mismatch"),
    ("client data type", "wrong_ceremony"),
    ("signature", "bad_signature"),
    ("alg", "unsupported_algorithm"),
)
# Control characters, and the invisible marks that reorder text (bidi
# overrides and isolates), which would make a name read as another one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class RegistrationFailed(ServiceError):
    """A credential that could not be registered. Raised after the refusal
    is audited."""

    status = 400
    default_code = "registration_failed"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code, audited=True)


@dataclass(frozen=True)
class Authenticated:
    user: User
    credential: WebAuthnCredential
    user_verified: bool


# --- reading ------------------------------------------------------------------


def credentials(user: User, kind: str | None = None) -> list[WebAuthnCredential]:
    """The member's credentials, oldest first; one kind, or both."""
    query = sa.select(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id)
    if kind is not None:
        query = query.where(WebAuthnCredential.kind == kind)
    order = (WebAuthnCredential.created_at, WebAuthnCredential.id)
    return list(db.session.scalars(query.order_by(*order)))


def credential_of(user: User, credential_id: str | uuid.UUID) -> WebAuthnCredential:
    """One of the member's own credentials by its row id, else NotFound."""
    try:
        row_id = uuid.UUID(str(credential_id))
    except ValueError:
        raise NotFound("There is no such passkey or security key.") from None
    found = db.session.scalar(
        sa.select(WebAuthnCredential).where(
            WebAuthnCredential.id == row_id, WebAuthnCredential.user_id == user.id
        )
    )
    if found is None:
        raise NotFound("There is no such passkey or security key.")
    return found


# --- registration -------------------------------------------------------------


def registration_options(ctx: Context, user: User, kind: str) -> str:
    """Options for creating a credential of ``kind`` for the member."""
    _check_kind(kind)
    _require_available()
    existing = credentials(user)
    if len(existing) >= MAX_CREDENTIALS:
        raise InvalidInput(
            f"You have {MAX_CREDENTIALS} passkeys and security keys, the most an "
            "account may have. Delete one you no longer use first.",
            code="too_many_credentials",
        )
    s = settings()
    challenge = challenges.issue(user.id, f"register_{kind}")
    if kind == "passkey":
        # Discoverable and verifying the person: it signs in on its own.
        selection = AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        hints = None
    else:
        # A second factor after the password: a touch is enough.
        selection = AuthenticatorSelectionCriteria(
            authenticator_attachment=AuthenticatorAttachment.CROSS_PLATFORM,
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.DISCOURAGED,
        )
        hints = [PublicKeyCredentialHint.SECURITY_KEY]
    options = generate_registration_options(
        rp_id=s.webauthn_rp_id,
        rp_name=s["webauthn"]["rp_name"],
        user_id=user.id.bytes,
        user_name=user.email,
        user_display_name=user.full_name or user.email,
        challenge=challenge,
        timeout=challenges.lifetime() * 1000,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=selection,
        # One authenticator holds one credential of ours per account.
        exclude_credentials=[_descriptor(c) for c in existing],
        hints=hints,
    )
    db.session.commit()
    return options_to_json(options)


def _parse(
    credential_json: str,
    parser: Callable[[str], Any],
    refuse: Callable[[str], NoReturn],
) -> tuple[Any, bytes]:
    """The browser's answer parsed by py_webauthn, with the challenge its
    client data names; any malformed or oversized answer is refused."""
    if len(credential_json) > MAX_CREDENTIAL_JSON:
        refuse("credential_too_large")
    try:
        parsed = parser(credential_json)
        challenge = parse_client_data_json(parsed.response.client_data_json).challenge
    except Exception:  # noqa: BLE001 - any malformed input is refused, never a 500
        refuse("malformed_credential")
    return parsed, challenge


def register(
    ctx: Context,
    user: User,
    kind: str,
    credential_json: str,
    name: str,
    *,
    issued: str | None = None,
) -> WebAuthnCredential:
    """Verify a new credential against its challenge and keep it.

    Raises RegistrationFailed (audited) when it does not verify, and
    InvalidInput for a name that cannot be kept (before the challenge is
    spent)."""
    _check_kind(kind)
    _require_available()
    label = clean_name(name, kind)

    def refuse(
        code: str, message: str | None = None, cause: Exception | None = None
    ) -> NoReturn:
        _refuse_registration(ctx, user, kind, code, message, cause)

    parsed, challenge = _parse(
        credential_json, parse_registration_credential_json, refuse
    )
    purpose = f"register_{kind}"
    problem = challenges.take(challenge, purpose, user.id, issued=issued)
    if problem is not None:
        refuse(problem, EXPIRED if problem == "challenge_expired" else None)

    s = settings()
    try:
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=s.webauthn_rp_id,
            expected_origin=list(s.webauthn_origins),
            require_user_verification=kind == "passkey",
        )
    except Exception as exc:  # noqa: BLE001 - wrapped, its cause kept
        refuse(_reason(exc), cause=exc)
    if len(credentials(user)) >= MAX_CREDENTIALS:
        refuse("too_many_credentials")
    if _registered(verified.credential_id):
        refuse("credential_registered", "This key is already registered.")

    moment = now()
    credential = WebAuthnCredential(
        workspace_id=user.workspace_id,
        user_id=user.id,
        kind=kind,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=sorted({t.value for t in parsed.response.transports or []}),
        aaguid=verified.aaguid,
        backed_up=verified.credential_backed_up,
        name=label,
        created_at=moment,
    )
    db.session.add(credential)
    audit.record(
        ctx,
        "mfa.webauthn_added",
        workspace_id=user.workspace_id,
        target=credential,
        details={"kind": kind, "name": label},
    )
    try:
        db.session.commit()
    except sa.exc.IntegrityError:
        # Registered by a parallel request between the check and the commit.
        db.session.rollback()
        challenges.take(challenge, purpose, user.id)
        refuse("credential_registered", "This key is already registered.")
    return credential


def _refuse_registration(
    ctx: Context,
    user: User,
    kind: str,
    code: str,
    message: str | None,
    cause: Exception | None,
) -> NoReturn:
    audit.record(
        ctx,
        "mfa.webauthn_added",
        workspace_id=user.workspace_id,
        outcome="failure",
        reason=code,
        target=user,
        details=_failure_details(kind, cause),
    )
    # Commits the spent challenge together with the event.
    db.session.commit()
    raise RegistrationFailed(
        message or "That key could not be registered. Try again.", code=code
    ) from cause


def _registered(credential_id: bytes) -> bool:
    return (
        db.session.scalar(
            sa.select(WebAuthnCredential.id).where(
                WebAuthnCredential.credential_id == credential_id
            )
        )
        is not None
    )


# --- authentication -----------------------------------------------------------


def authentication_options(user: User | None) -> str:
    """Options for a sign-in: with a user, the MFA step over that member's
    credentials of both kinds; without, a passkey sign-in, which must
    verify the person."""
    _require_available()
    if user is None:
        allow: list[PublicKeyCredentialDescriptor] = []
        verification = UserVerificationRequirement.REQUIRED
    else:
        allow = [_descriptor(c) for c in credentials(user)]
        verification = UserVerificationRequirement.DISCOURAGED
    challenge = challenges.issue(user.id if user else None, "authenticate")
    options = generate_authentication_options(
        rp_id=settings().webauthn_rp_id,
        challenge=challenge,
        timeout=challenges.lifetime() * 1000,
        allow_credentials=allow,
        user_verification=verification,
    )
    db.session.commit()
    return options_to_json(options)


def authenticate(
    ctx: Context,
    user: User | None,
    credential_json: str,
    *,
    issued: str | None = None,
) -> Authenticated:
    """Verify an assertion. With ``user`` (the MFA step) only that member's
    credentials count; without (a passkey sign-in) only passkeys, which
    must verify the person and name their account in the user handle.
    Raises MfaFailed, after auditing the failure."""
    _require_available()
    # Who the refusal is about: the account once its credential is known.
    owner, credential = user, None

    def refuse(
        code: str, message: str | None = None, cause: Exception | None = None
    ) -> NoReturn:
        _refuse_authentication(ctx, owner, credential, code, message, cause)

    parsed, challenge = _parse(
        credential_json, parse_authentication_credential_json, refuse
    )
    problem = challenges.take(
        challenge, "authenticate", user.id if user else None, issued=issued
    )
    if problem is not None:
        refuse(problem, EXPIRED if problem == "challenge_expired" else None)

    query = sa.select(WebAuthnCredential).where(
        WebAuthnCredential.credential_id == parsed.raw_id
    )
    if user is not None:
        query = query.where(WebAuthnCredential.user_id == user.id)
    else:
        query = query.where(WebAuthnCredential.kind == "passkey")
    credential = db.session.scalar(query)
    if credential is None:
        refuse("credential_unknown")
    owner = user or db.session.get(User, credential.user_id)
    assert owner is not None  # a member's credentials go with the member
    handle = parsed.response.user_handle
    if user is None and not handle:
        refuse("user_handle_missing")
    if handle and not secrets_equal(handle, owner.id.bytes):
        refuse("user_handle_mismatch")

    s = settings()
    try:
        # Counter rules are ours (MFA-2): py_webauthn refuses a regression
        # with the same error as a bad signature, so it is given 0.
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=s.webauthn_rp_id,
            expected_origin=list(s.webauthn_origins),
            credential_public_key=credential.public_key,
            credential_current_sign_count=0,
            require_user_verification=user is None,
        )
    except Exception as exc:  # noqa: BLE001 - wrapped, its cause kept
        refuse(_reason(exc), cause=exc)

    stored, asserted = credential.sign_count, verified.new_sign_count
    regressed = bool(stored or asserted) and asserted <= stored
    if not regressed:
        # Only now, with every check passed, is anything about the key
        # written, and only if the stored count is still below this one: a
        # parallel sign-in with a copy of the key may have moved it since it
        # was read (the row lock makes this update wait for that one and
        # judge the count it wrote).
        moved = db.session.execute(
            sa.update(WebAuthnCredential)
            .where(
                WebAuthnCredential.id == credential.id,
                WebAuthnCredential.sign_count < asserted
                if asserted
                else WebAuthnCredential.sign_count == 0,
            )
            .values(
                sign_count=asserted,
                backed_up=verified.credential_backed_up,
                last_used_at=now(),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:
            regressed = True
            stored = db.session.scalar(
                sa.select(WebAuthnCredential.sign_count).where(
                    WebAuthnCredential.id == credential.id
                )
            )
    if regressed:
        # A counter that did not move forward: two copies of one key.
        audit.record(
            ctx,
            "mfa.possible_clone",
            workspace_id=owner.workspace_id,
            outcome="denied",
            reason="sign_count_regressed",
            target=credential,
            details={"stored_count": stored, "asserted_count": asserted},
        )
        refuse("possible_clone", CLONED)
    db.session.commit()
    # The update bypassed the object: read it again when next used.
    db.session.expire(credential)
    return Authenticated(owner, credential, verified.user_verified)


def _refuse_authentication(
    ctx: Context,
    user: User | None,
    credential: WebAuthnCredential | None,
    code: str,
    message: str | None,
    cause: Exception | None,
) -> NoReturn:
    audit.record(
        ctx,
        "mfa.failure",
        workspace_id=user.workspace_id if user is not None else None,
        outcome="failure",
        reason=code,
        target=credential if credential is not None else user,
        target_label=user.email if user is not None else None,
        details=_failure_details(
            credential.kind if credential is not None else None, cause
        ),
    )
    # Commits the spent challenge together with the event.
    db.session.commit()
    raise MfaFailed(message or NOT_VERIFIED, code=code) from cause


# --- rename and delete --------------------------------------------------------


def rename(
    ctx: Context, user: User, credential_id: str | uuid.UUID, name: str
) -> WebAuthnCredential:
    credential = credential_of(user, credential_id)
    old, new = credential.name, clean_name(name, credential.kind)
    if new != old:
        credential.name = new
        audit.record(
            ctx,
            "mfa.webauthn_renamed",
            workspace_id=user.workspace_id,
            target=credential,
            details={"old": old, "new": new},
        )
        db.session.commit()
    return credential


def delete(ctx: Context, user: User, credential_id: str | uuid.UUID) -> None:
    """Remove one of the member's credentials; Forbidden for the last
    factor while the workspace forces MFA."""
    # The member's row locked (PostgreSQL): two removals at once cannot both
    # count the other's factor as the one that stays.
    db.session.execute(sa.select(User.id).where(User.id == user.id).with_for_update())
    credential = credential_of(user, credential_id)
    ensure_may_remove(user, credentials=1)
    audit.record(
        ctx,
        "mfa.webauthn_removed",
        workspace_id=user.workspace_id,
        target=credential,
        details={"kind": credential.kind, "name": credential.name},
    )
    db.session.delete(credential)
    db.session.commit()


def clean_name(name: str, kind: str) -> str:
    """A name as the list shows it: one line, trimmed; the kind's label
    when left empty."""
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", name))
    text = " ".join(text.split())
    if len(text) > MAX_NAME:
        raise InvalidInput(
            f"Names are at most {MAX_NAME} characters.", code="name_too_long"
        )
    return text or KIND_LABELS[kind]


# --- helpers ------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in WEBAUTHN_KINDS:
        raise NotFound("There is no such kind of key.")


def _require_available() -> None:
    if not settings().webauthn_available:
        raise Forbidden(UNAVAILABLE, code="webauthn_unavailable")


def _descriptor(credential: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
    transports = []
    for value in credential.transports or []:
        try:
            transports.append(AuthenticatorTransport(value))
        except ValueError:
            continue
    return PublicKeyCredentialDescriptor(
        id=credential.credential_id, transports=transports or None
    )


def _reason(exc: Exception) -> str:
    # Up to the first quote: what follows quotes the answer, which the
    # sender chose (a client data type of "origin", say).
    text = str(exc).split('"', 1)[0]
    for fragment, code in _REASONS:
        if fragment in text:
            return code
    return "verification_failed"


def _failure_details(kind: str | None, cause: Exception | None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if kind is not None:
        details["kind"] = kind
    if cause is not None:
        # The library's own words name the check that failed (an origin it
        # did not expect, for instance), for the operator.
        details["check"] = str(cause)[:200]
    return details

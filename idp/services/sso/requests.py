"""Sign-ins sent to the company IdP and not yet answered.

Each is a row keyed by the SAML AuthnRequest id or the OIDC state, bound to
the browser that began it by the hash of that browser's SSO cookie (a
separate cookie that survives the IdP's cross-site POST or redirect), and
usable once: claiming deletes the row, and of two claims at once exactly
one deletes it. Rows live in the database, so every instance sees them.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

import sqlalchemy as sa

from idp.clock import now
from idp.db import db
from idp.models import SsoConnection, SsoRequest
from idp.security import secrets_equal
from idp.services.sso import SsoRefused
from idp.state import settings

# Outstanding sign-ins one browser may hold per workspace; the oldest are
# dropped beyond it, so a script cannot grow the table without bound.
MAX_PER_BROWSER = 10


def binding_hash(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


def new_request_id(protocol: str) -> str:
    # A SAML ID is an xsd:ID: it must not begin with a digit.
    token = secrets.token_hex(20) if protocol == "saml" else secrets.token_urlsafe(32)
    return f"id-{token}" if protocol == "saml" else token


def begin(
    connection: SsoConnection,
    *,
    binding: str,
    purpose: str = "signin",
    return_to: str | None = None,
    requested_by: uuid.UUID | None = None,
    nonce: str | None = None,
    code_verifier: str | None = None,
) -> SsoRequest:
    """Record an outstanding request (committed by the caller)."""
    moment = now()
    bound = binding_hash(binding)
    db.session.execute(sa.delete(SsoRequest).where(SsoRequest.expires_at < moment))
    held = list(
        db.session.scalars(
            sa.select(SsoRequest.id)
            .where(
                SsoRequest.workspace_id == connection.workspace_id,
                SsoRequest.binding_hash == bound,
            )
            .order_by(SsoRequest.created_at.desc())
            .offset(MAX_PER_BROWSER - 1)
        )
    )
    if held:
        db.session.execute(sa.delete(SsoRequest).where(SsoRequest.id.in_(held)))
    request = SsoRequest(
        id=new_request_id(connection.protocol),
        workspace_id=connection.workspace_id,
        connection_id=connection.id,
        protocol=connection.protocol,
        purpose=purpose,
        binding_hash=bound,
        return_to=return_to,
        nonce=nonce,
        code_verifier=code_verifier,
        requested_by=requested_by,
        created_at=moment,
        expires_at=moment + timedelta(seconds=settings()["sso"]["request_seconds"]),
    )
    db.session.add(request)
    return request


def find(
    connection: SsoConnection, request_id: str | None, binding: str | None
) -> SsoRequest:
    """The outstanding request ``request_id`` of this browser, not yet used;
    or SsoRefused (``request_unknown``, ``request_other_browser``,
    ``request_expired``). Verify the answer, then ``use`` it."""
    if not request_id or len(request_id) > 128:
        raise SsoRefused("This sign-in was not started here.", code="request_unknown")
    row = db.session.get(SsoRequest, request_id, populate_existing=True)
    if row is None or row.connection_id != connection.id or row.answered_at is not None:
        raise SsoRefused(
            "This sign-in was not started here, or was already used. Sign in again.",
            code="request_unknown",
        )
    if binding is None or not secrets_equal(binding_hash(binding), row.binding_hash):
        raise SsoRefused(
            "This sign-in was started in another browser. Sign in again from here.",
            code="request_other_browser",
        )
    if row.expires_at <= now():
        raise SsoRefused(
            "This sign-in took too long. Sign in again.", code="request_expired"
        )
    return row


def use(request: SsoRequest) -> None:
    """Use the request up, in the caller's transaction: a sign-in's row is
    deleted, a *Test connection*'s is marked answered (its result is kept
    for the admin's page). Of two uses at once exactly one succeeds; the
    other gets SsoRefused ``request_used``."""
    unused = sa.and_(SsoRequest.id == request.id, SsoRequest.answered_at.is_(None))
    if request.purpose == "test":
        statement = sa.update(SsoRequest).where(unused).values(answered_at=now())
    else:
        statement = sa.delete(SsoRequest).where(unused)
    used = db.session.execute(
        statement.execution_options(synchronize_session=False)
    ).rowcount
    if used != 1:
        raise SsoRefused(
            "This sign-in was already used. Sign in again.", code="request_used"
        )


def store_result(request: SsoRequest, result: dict) -> None:  # type: ignore[type-arg]
    """What *Test connection* received, for the admin's result page."""
    db.session.execute(
        sa.update(SsoRequest)
        .where(SsoRequest.id == request.id)
        .values(result=result)
        .execution_options(synchronize_session=False)
    )


def take_result(
    workspace_id: uuid.UUID, request_id: str, admin_id: uuid.UUID, binding: str | None
) -> SsoRequest | None:
    """A *Test connection* answer for the admin who began it, in the browser
    that began it; read once."""
    row = db.session.get(SsoRequest, request_id[:128], populate_existing=True)
    if (
        row is None
        or row.purpose != "test"
        or row.workspace_id != workspace_id
        or row.requested_by != admin_id
        or row.answered_at is None
        or binding is None
        or not secrets_equal(binding_hash(binding), row.binding_hash)
    ):
        return None
    db.session.delete(row)
    return row

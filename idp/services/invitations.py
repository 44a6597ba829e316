"""Invitations and the first admin's set-up link: issue, resend, accept."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from idp.clock import now
from idp.db import db
from idp.models import Invitation, User, Workspace
from idp.models.users import ROLES
from idp.security import InvalidEmail, new_token, parse_email, token_digest
from idp.services import audit, mail
from idp.services.context import Context
from idp.services.domains import require_allowed_domain
from idp.services.errors import Conflict, InvalidInput, InvalidLink, NotFound
from idp.services.permissions import require_admin
from idp.state import settings, state

log = logging.getLogger(__name__)
MAX_NAME = 200


@dataclass(frozen=True)
class Issued:
    user: User
    link: str
    send_error: str | None


def clean_name(text: str, *, label: str = "A name") -> str:
    """One line of display text: spaces folded, no control characters."""
    name = " ".join(text.split())
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{label} has at most {MAX_NAME} characters.")
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise InvalidInput(f"{label} cannot contain control characters.")
    return name


def _new_invitation(ctx: Context, user: User) -> str:
    token = new_token()
    hours = settings()["invitations"]["lifetime_hours"]
    db.session.add(
        Invitation(
            workspace_id=user.workspace_id,
            user_id=user.id,
            token_hash=token_digest(token),
            created_at=now(),
            expires_at=now() + timedelta(hours=hours),
            inviter_id=ctx.user.id if ctx.user else None,
            inviter_label=ctx.label,
        )
    )
    return token


def _send(
    user: User, token: str, workspace: Workspace, *, setup: bool, send_mail: bool
) -> Issued:
    url = mail.link(f"/invite/{token}")
    if not send_mail:
        # The operator's CLI prints the link itself.
        db.session.execute(
            sa.update(Invitation)
            .where(Invitation.user_id == user.id)
            .values(send_status="printed")
        )
        db.session.commit()
        return Issued(user, url, None)
    template = "setup" if setup else "invitation"
    subject = (
        f"Set up your Portcullis admin account for {workspace.name}"
        if setup
        else f"You are invited to {workspace.name}"
    )
    error = mail.send(
        mail.compose(
            template,
            user.email,
            subject,
            url=url,
            user=user,
            workspace=workspace,
            hours=settings()["invitations"]["lifetime_hours"],
        )
    )
    status = "failed" if error else ("sent" if settings()["smtp_url"] else "outbox")
    db.session.execute(
        sa.update(Invitation)
        .where(Invitation.user_id == user.id)
        .values(send_status=status, send_error=error)
    )
    db.session.commit()
    if error:
        log.error("invitation.send_failed user=%s error=%s", user.id, error)
    return Issued(user, url, error)


def invite_user(
    ctx: Context,
    workspace: Workspace,
    *,
    email: str,
    role: str,
    full_name: str,
    setup: bool = False,
    send_mail: bool = True,
) -> Issued:
    """Create an invited member and mail them a single-use link."""
    require_admin(ctx, workspace.id, "user.invite")
    try:
        address = parse_email(email)
    except InvalidEmail as exc:
        raise InvalidInput(str(exc), code="invalid_email") from exc
    if role not in ROLES:
        raise InvalidInput("Choose a role: Admin or Read Only.", code="invalid_role")
    name = clean_name(full_name)
    require_allowed_domain(ctx, workspace, address, action="user.invite")
    existing = db.session.scalar(
        sa.select(User).where(User.workspace_id == workspace.id, User.email == address)
    )
    if existing is not None:
        if existing.status == "invited":
            raise Conflict(
                f"{address} is already invited; use Resend invitation email."
            )
        raise Conflict(f"{address} is already a member of this workspace.")
    user = User(
        workspace_id=workspace.id,
        email=address,
        full_name=name,
        role=role,
        status="invited",
        created_at=now(),
    )
    db.session.add(user)
    db.session.flush()
    token = _new_invitation(ctx, user)
    audit.record(
        ctx,
        "user.setup_link" if setup else "user.invite",
        workspace_id=workspace.id,
        target=user,
        details={"role": role},
    )
    try:
        db.session.commit()
    except sa.exc.IntegrityError as exc:
        db.session.rollback()
        raise Conflict(f"{address} is already a member of this workspace.") from exc
    return _send(user, token, workspace, setup=setup, send_mail=send_mail)


def resend_invitation(
    ctx: Context, workspace: Workspace, user_id: uuid.UUID, *, send_mail: bool = True
) -> Issued:
    """A new link replaces the old one, which stops working."""
    require_admin(ctx, workspace.id, "user.resend_invitation")
    user = db.session.scalar(
        sa.select(User).where(User.id == user_id, User.workspace_id == workspace.id)
    )
    if user is None:
        raise NotFound("No such user in this workspace.")
    if user.status != "invited":
        raise Conflict("This user has already joined.")
    db.session.execute(sa.delete(Invitation).where(Invitation.user_id == user.id))
    token = _new_invitation(ctx, user)
    audit.record(ctx, "user.resend_invitation", workspace_id=workspace.id, target=user)
    db.session.commit()
    return _send(
        user, token, workspace, setup=ctx.actor_type == "operator", send_mail=send_mail
    )


def invitation_for(token: str | None, *, viewer: Context | None = None) -> Invitation:
    """The live invitation for a token, or InvalidLink; consumes nothing.
    Someone signed in as another person is never shown the form."""
    if not token or len(token) > 128:
        raise InvalidLink()
    invitation = db.session.scalar(
        sa.select(Invitation).where(Invitation.token_hash == token_digest(token))
    )
    if invitation is None or invitation.expires_at <= now():
        raise InvalidLink()
    if invitation.user.status != "invited":
        raise InvalidLink()
    if (
        viewer is not None
        and viewer.user is not None
        and viewer.user.id != invitation.user_id
    ):
        raise InvalidLink("signed_in_as_other")
    return invitation


def accept_invitation(
    ctx: Context, token: str | None, *, full_name: str, password: str
) -> User:
    """Set name and password and activate the account, which then signs in
    as after a password (idp.web.auth_mfa.proceed: at once, or through
    setting up a factor when the workspace forces MFA). Two acceptances of
    one link: exactly one wins."""
    invitation = invitation_for(token)
    user = invitation.user
    if ctx.user is not None and ctx.user.id != user.id:
        # Signed in as someone else: never let one browser join two people.
        audit.record_now(
            ctx,
            "invitation.accept",
            workspace_id=invitation.workspace_id,
            outcome="failure",
            reason="signed_in_as_other",
            target=user,
        )
        raise InvalidLink("signed_in_as_other", audited=True)
    name = clean_name(full_name)
    if not name:
        raise InvalidInput("Enter your full name.")
    # The allow-list may have changed since the invitation was sent: it is
    # checked where the person joins too (SECURITY.md 6.3.4).
    workspace = db.session.get(Workspace, invitation.workspace_id)
    require_allowed_domain(ctx, workspace, user.email, action="invitation.accept")
    prepared = state().passwords.check_new(password)
    password_hash = state().passwords.hash(prepared)

    # The claim: only the request whose delete removed the row goes on.
    claimed = db.session.execute(
        sa.delete(Invitation)
        .where(Invitation.id == invitation.id, Invitation.expires_at > now())
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        db.session.rollback()
        raise InvalidLink("already_used")
    moment = now()
    updated = db.session.execute(
        sa.update(User)
        .where(User.id == user.id, User.status == "invited")
        .values(
            full_name=name,
            password_hash=password_hash,
            password_changed_at=moment,
            status="active",
            joined_at=moment,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if updated != 1:
        db.session.rollback()
        raise InvalidLink("already_used")
    accepting = Context.for_user(user, ctx.client)
    audit.record(
        accepting, "invitation.accept", workspace_id=user.workspace_id, target=user
    )
    db.session.commit()
    db.session.refresh(user)
    return user

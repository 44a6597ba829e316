"""What admins do to members: list, disable, enable, delete, change role,
reset MFA."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from idp.db import db
from idp.models import (
    EmailToken,
    Invitation,
    RecoveryCode,
    Session,
    TotpSecret,
    User,
    WebAuthnCredential,
    Workspace,
)
from idp.models.users import ROLES
from idp.services import audit, mail, mfa, sessions
from idp.services.context import Context
from idp.services.errors import Conflict, InvalidInput, NotFound
from idp.services.permissions import require_admin

SEARCH_MAX = 200
LIST_LIMIT = 500


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_users(
    workspace: Workspace, query: str = "", *, limit: int = LIST_LIMIT
) -> list[User]:
    """Members of the workspace whose any text field contains ``query``."""
    statement = sa.select(User).where(User.workspace_id == workspace.id)
    query = " ".join(query.split())[:SEARCH_MAX]
    if query:
        pattern = _like(query.lower())
        fields = (User.email, User.full_name, User.username, User.phone, User.job_title)
        statement = statement.where(
            sa.or_(*(sa.func.lower(f).like(pattern, escape="\\") for f in fields))
        )
    return list(db.session.scalars(statement.order_by(User.email).limit(limit)))


def get_member(workspace: Workspace, user_id: uuid.UUID | str) -> User:
    """A member of this workspace by id; members of others do not exist here."""
    try:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError as exc:
        raise NotFound("No such user in this workspace.") from exc
    user = db.session.scalar(
        sa.select(User).where(User.id == uid, User.workspace_id == workspace.id)
    )
    if user is None:
        raise NotFound("No such user in this workspace.")
    return user


def _lock_workspace(workspace: Workspace) -> None:
    # Serialises admin changes per workspace so that two admins demoting each
    # other at once cannot leave none. A no-op write, not SELECT FOR UPDATE:
    # on SQLite only a write takes the lock (a read does not even open a
    # transaction), so both last-admin counts could run before either change.
    db.session.execute(
        sa.update(Workspace)
        .where(Workspace.id == workspace.id)
        .values(name=Workspace.name)
    )


def other_admin_exists(workspace: Workspace, user: User) -> bool:
    """Whether the workspace keeps an active admin besides ``user``."""
    return bool(
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(User)
            .where(
                User.workspace_id == workspace.id,
                User.role == "admin",
                User.status == "active",
                User.id != user.id,
            )
        )
    )


def _require_other_admin(workspace: Workspace, user: User, what: str) -> None:
    if user.role != "admin" or user.status != "active":
        return
    if not other_admin_exists(workspace, user):
        raise Conflict(
            f"{user.email} is the last active admin of this workspace and cannot be {what}.",
            code="last_admin",
        )


def _not_self(ctx: Context, user: User, what: str) -> None:
    if ctx.user is not None and ctx.user.id == user.id:
        raise Conflict(
            f"You cannot {what} your own account here; ask another admin.",
            code="self_change",
        )


def _prepare(
    ctx: Context, workspace: Workspace, user_id: uuid.UUID | str, action: str
) -> User:
    require_admin(ctx, workspace.id, action)
    _lock_workspace(workspace)
    return get_member(workspace, user_id)


def disable_user(ctx: Context, workspace: Workspace, user_id: uuid.UUID | str) -> User:
    """Disabled members are refused at once: their sessions end now."""
    user = _prepare(ctx, workspace, user_id, "user.disable")
    _not_self(ctx, user, "disable")
    if user.status == "disabled":
        return user
    if user.status == "invited":
        raise Conflict("This user has not joined yet; delete the invitation instead.")
    _require_other_admin(workspace, user, "disabled")
    user.status = "disabled"
    ended = sessions.revoke_user_sessions(user.id, "user_disabled")
    audit.record(
        ctx,
        "user.disable",
        workspace_id=workspace.id,
        target=user,
        details={"sessions_ended": ended},
    )
    db.session.commit()
    return user


def enable_user(ctx: Context, workspace: Workspace, user_id: uuid.UUID | str) -> User:
    """Enabling brings no old session back: they were revoked, not paused."""
    user = _prepare(ctx, workspace, user_id, "user.enable")
    if user.status != "disabled":
        return user
    user.status = "active"
    audit.record(ctx, "user.enable", workspace_id=workspace.id, target=user)
    db.session.commit()
    return user


def delete_user(ctx: Context, workspace: Workspace, user_id: uuid.UUID | str) -> None:
    """Remove the member with sessions, invitation and links; audit events
    keep their labels, and the email can be invited again."""
    user = _prepare(ctx, workspace, user_id, "user.delete")
    _not_self(ctx, user, "delete")
    _require_other_admin(workspace, user, "deleted")
    audit.record(
        ctx,
        "user.delete",
        workspace_id=workspace.id,
        target=user,
        details={"role": user.role, "status": user.status},
    )
    for model in (Session, Invitation, EmailToken):
        db.session.execute(
            sa.delete(model)
            .where(model.user_id == user.id)
            .execution_options(synchronize_session=False)
        )
    db.session.execute(
        sa.update(Invitation)
        .where(Invitation.inviter_id == user.id)
        .values(inviter_id=None)
    )
    db.session.delete(user)
    db.session.commit()


def change_role(
    ctx: Context, workspace: Workspace, user_id: uuid.UUID | str, role: str
) -> User:
    """Takes effect on the member's next request: roles are read every time."""
    user = _prepare(ctx, workspace, user_id, "user.change_role")
    if role not in ROLES:
        raise InvalidInput("Choose a role: Admin or Read Only.", code="invalid_role")
    if user.role == role:
        return user
    if role != "admin":
        _not_self(ctx, user, "demote")
        _require_other_admin(workspace, user, "demoted")
    old = user.role
    user.role = role
    audit.record(
        ctx,
        "user.change_role",
        workspace_id=workspace.id,
        target=user,
        details={"old": old, "new": role},
    )
    db.session.commit()
    return user


def reset_mfa(ctx: Context, workspace: Workspace, user_id: uuid.UUID | str) -> User:
    """An admin clears a member's factors (a lost phone or key): their
    authenticator app, passkeys, security keys and recovery codes go, their
    sessions end, and they are told by email. Under forced MFA they set up
    a factor again at their next sign-in."""
    user = _prepare(ctx, workspace, user_id, "mfa.reset")
    _not_self(ctx, user, "reset the MFA of")
    had = mfa.factors(user.id)
    if not had.has_mfa and not had.recovery_left:
        raise Conflict(f"{user.email} has no MFA to reset.", code="no_mfa")
    for model in (TotpSecret, WebAuthnCredential, RecoveryCode):
        db.session.execute(sa.delete(model).where(model.user_id == user.id))
    ended = sessions.revoke_user_sessions(user.id, "mfa_reset")
    audit.record(
        ctx,
        "mfa.reset",
        workspace_id=workspace.id,
        target=user,
        details={
            "removed": list(had.labels),
            "recovery_codes": had.recovery_left,
            "sessions_ended": ended,
        },
    )
    db.session.commit()
    mail.send(
        mail.compose(
            "mfa_reset",
            user.email,
            "Your multi-factor authentication was reset",
            user=user,
            workspace=workspace,
            admin=ctx.label if ctx.actor_type == "user" else "An administrator",
        )
    )
    return user

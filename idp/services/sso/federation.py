"""From verified claims to a member: the identity link, just-in-time
accounts, the group-to-role mapping, and the refusals, each audited.

The rules (SECURITY.md 6.8.1): a federated identity is keyed by connection
and subject, never by email. An email links to an existing account, or
creates one, only when the IdP vouches for it (OIDC ``email_verified``) and
its domain is one of the connection's verified domains; anything else is
refused, so an IdP cannot claim an address it does not own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from idp.clock import now
from idp.db import db
from idp.models import FederatedIdentity, Invitation, SsoConnection, User, Workspace
from idp.security import InvalidEmail, parse_email
from idp.services import audit, users
from idp.services.context import Context
from idp.services.domains import domain_allowed
from idp.services.invitations import clean_name
from idp.services.sso import Claims, SsoRefused
from idp.services.sso.domains import domain_of, verified_domains

NOT_VOUCHED = "Your company's sign-in did not confirm that this email address is yours (it did not say the address is verified), so it cannot be linked to an account here. Ask your IT team, or an admin of the workspace."

MESSAGES = {
    "sso_email_missing": "Your company's sign-in did not say which email address is yours. Ask your IT team to send the email attribute.",
    "sso_email_unverified": "Your company's sign-in vouched for an email address outside the domains this workspace has verified, so it cannot be used here. Ask an admin of the workspace.",
    "sso_no_account": "You do not have an account in this workspace yet. Ask an admin of the workspace to invite you.",
    "sso_domain_not_allowed": "Your email address is not in a domain this workspace accepts. Ask an admin of the workspace.",
    "sso_account_disabled": "This account is disabled. Ask an admin of the workspace to enable it.",
    "sso_identity_conflict": "Your email address already belongs to another sign-in of this workspace. Ask an admin of the workspace.",
}


def refuse(
    ctx: Context,
    connection: SsoConnection,
    reason: str,
    *,
    label: str | None = None,
    details: dict[str, Any] | None = None,
    message: str | None = None,
    status: int = 403,
) -> SsoRefused:
    """Write the refusal's audit event and return the error to raise."""
    audit.record_now(
        ctx,
        "sso.signin_failure",
        workspace_id=connection.workspace_id,
        outcome="denied",
        reason=reason,
        target_label=label,
        details={"protocol": connection.protocol, **(details or {})},
    )
    error = SsoRefused(
        message or MESSAGES.get(reason, "Single sign-on was refused."),
        code=reason,
        audited=True,
    )
    error.status = status
    return error


def mapped_role(connection: SsoConnection, groups: tuple[str, ...]) -> str | None:
    """The role the group mapping gives these groups: the highest a matching
    rule names, the default role when rules exist but none matches, None
    when the connection has no rules (roles are then the admins' to set).
    Group names compare exactly, as the IdP sends them."""
    rules = connection.group_roles or []
    if not rules:
        return None
    held = set(groups)
    matched = {rule["role"] for rule in rules if rule["group"] in held}
    if "admin" in matched:
        return "admin"
    if matched:
        return "read_only"
    return connection.default_role


def resolve_member(
    ctx: Context, workspace: Workspace, connection: SsoConnection, claims: Claims
) -> User:
    """The member these claims sign in, linked, created or updated; the
    caller commits. SsoRefused (audited) when the claims may not sign in."""
    moment = now()
    identity = db.session.scalar(
        sa.select(FederatedIdentity).where(
            FederatedIdentity.connection_id == connection.id,
            FederatedIdentity.subject == claims.subject,
        )
    )
    email = _email_of(claims)
    if identity is not None:
        user = identity.user
    else:
        if email is None:
            raise refuse(ctx, connection, "sso_email_missing", label=claims.subject)
        in_domain = domain_of(email) in verified_domains(connection)
        if not claims.email_verified or not in_domain:
            # One reason code, two causes: the message says which.
            raise refuse(
                ctx,
                connection,
                "sso_email_unverified",
                label=email,
                details={
                    "email_verified": claims.email_verified,
                    "domain_verified": in_domain,
                },
                message=MESSAGES["sso_email_unverified"]
                if not in_domain
                else NOT_VOUCHED,
            )
        user = db.session.scalar(
            sa.select(User).where(
                User.workspace_id == workspace.id, User.email == email
            )
        )
        if user is not None:
            linked = db.session.scalar(
                sa.select(FederatedIdentity.id).where(
                    FederatedIdentity.connection_id == connection.id,
                    FederatedIdentity.user_id == user.id,
                )
            )
            if linked is not None:
                # The account already follows another subject of this IdP
                # (the IdP re-created the person): an admin decides.
                raise refuse(ctx, connection, "sso_identity_conflict", label=email)
        else:
            user = _create_just_in_time(ctx, workspace, connection, claims, email)
        identity = FederatedIdentity(
            workspace_id=workspace.id,
            connection_id=connection.id,
            user_id=user.id,
            subject=claims.subject,
            created_at=moment,
        )
        db.session.add(identity)
        audit.record(
            ctx,
            "sso.identity_linked",
            workspace_id=workspace.id,
            target=user,
            details={"protocol": connection.protocol, "subject": claims.subject[:200]},
        )
    if user.status == "disabled":
        raise refuse(ctx, connection, "sso_account_disabled", label=user.email)
    if user.status == "invited":
        _activate(ctx, user, moment)
    identity.last_signin_at = moment
    _apply_profile(user, claims)
    _apply_role(ctx, workspace, connection, user, claims)
    return user


def _email_of(claims: Claims) -> str | None:
    if not claims.email:
        return None
    try:
        return parse_email(claims.email)
    except InvalidEmail:
        return None


def _create_just_in_time(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    claims: Claims,
    email: str,
) -> User:
    if not connection.jit_enabled:
        raise refuse(ctx, connection, "sso_no_account", label=email)
    if not domain_allowed(workspace, email):
        raise refuse(ctx, connection, "sso_domain_not_allowed", label=email)
    moment = now()
    user = User(
        id=uuid.uuid4(),
        workspace_id=workspace.id,
        email=email,
        full_name=_clean(claims.full_name),
        role=mapped_role(connection, claims.groups) or connection.default_role,
        status="active",
        created_at=moment,
        joined_at=moment,
    )
    db.session.add(user)
    db.session.flush()
    audit.record(
        ctx,
        "sso.user_created",
        workspace_id=workspace.id,
        target=user,
        details={"protocol": connection.protocol, "role": user.role},
    )
    return user


def _activate(ctx: Context, user: User, moment: datetime) -> None:
    """An invited member who signs in through the company IdP has joined:
    the invitation is used up."""
    user.status = "active"
    user.joined_at = moment
    db.session.execute(sa.delete(Invitation).where(Invitation.user_id == user.id))
    audit.record(
        ctx,
        "invitation.accept",
        workspace_id=user.workspace_id,
        target=user,
        details={"via": "sso"},
    )


def _clean(name: str | None) -> str:
    if not name:
        return ""
    try:
        return clean_name(name[:200])
    except Exception:  # noqa: BLE001 - an unusable name is simply not copied
        return ""


def _apply_profile(user: User, claims: Claims) -> None:
    name = _clean(claims.full_name)
    if name and name != user.full_name:
        user.full_name = name


def _apply_role(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    user: User,
    claims: Claims,
) -> None:
    role = mapped_role(connection, claims.groups)
    if role is None or role == user.role:
        return
    if user.role == "admin" and not users.other_admin_exists(workspace, user):
        # Never leave the workspace without an admin; the admins see why.
        audit.record(
            ctx,
            "user.change_role",
            workspace_id=workspace.id,
            outcome="denied",
            reason="last_admin",
            target=user,
            details={"old": user.role, "new": role, "via": "sso_group_mapping"},
        )
        return
    old, user.role = user.role, role
    audit.record(
        ctx,
        "user.change_role",
        workspace_id=workspace.id,
        target=user,
        reason="sso_group_mapping",
        details={"old": old, "new": role, "via": "sso_group_mapping"},
    )


def test_result(
    workspace: Workspace, connection: SsoConnection, claims: Claims
) -> dict[str, Any]:
    """What *Test connection* shows: every attribute received and what the
    connection's rules make of it, without touching any account."""
    email = _email_of(claims)
    linked = db.session.scalar(
        sa.select(User.email)
        .join(FederatedIdentity, FederatedIdentity.user_id == User.id)
        .where(
            FederatedIdentity.connection_id == connection.id,
            FederatedIdentity.subject == claims.subject,
        )
    )
    existing = (
        db.session.scalar(
            sa.select(User.email).where(
                User.workspace_id == workspace.id, User.email == email
            )
        )
        if email
        else None
    )
    in_domain = bool(email) and domain_of(email or "") in verified_domains(connection)
    if linked:
        outcome = f"Signs in as {linked} (already linked)."
    elif email is None:
        outcome = "Refused: no email address was sent."
    elif not in_domain:
        outcome = (
            "Refused: the email address is not in a verified domain of this connection."
        )
    elif not claims.email_verified:
        outcome = "Refused: the IdP did not say the email address is verified."
    elif existing:
        outcome = f"Links to the existing account {existing}."
    elif connection.jit_enabled:
        outcome = f"Creates the account {email} at the first sign-in."
    else:
        outcome = "Refused: no account, and just-in-time accounts are off."
    return {
        "issuer": claims.issuer,
        "subject": claims.subject,
        "email": claims.email,
        "email_verified": claims.email_verified,
        "name": claims.full_name,
        "groups": list(claims.groups),
        "role": mapped_role(connection, claims.groups),
        "outcome": outcome,
        "received": {k: v[:20] for k, v in list(claims.received.items())[:100]},
    }

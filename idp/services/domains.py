"""The workspace's email-domain allow-list (ACC-4)."""

from __future__ import annotations

import sqlalchemy as sa

from idp.db import db
from idp.models import DomainAllowEntry, Workspace
from idp.security import email_domain
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Forbidden


def domain_allowed(workspace: Workspace, email: str) -> bool:
    """``email`` must already be in normal form (see security.parse_email)."""
    if not workspace.policy or not workspace.policy.domain_restriction_enabled:
        return True
    domain = email_domain(email)
    entries = db.session.scalars(
        sa.select(DomainAllowEntry).where(DomainAllowEntry.workspace_id == workspace.id)
    )
    for entry in entries:
        if domain == entry.domain:
            return True
        if entry.include_subdomains and domain.endswith("." + entry.domain):
            return True
    return False


def require_allowed_domain(
    ctx: Context, workspace: Workspace, email: str, *, action: str
) -> None:
    if domain_allowed(workspace, email):
        return
    audit.record_now(
        ctx,
        action,
        workspace_id=workspace.id,
        outcome="denied",
        reason="domain_not_allowed",
        target_label=email,
    )
    raise Forbidden(
        f"Addresses at {email_domain(email)} cannot join this workspace: "
        "its domain is not on the approved list.",
        code="domain_not_allowed",
        audited=True,
    )

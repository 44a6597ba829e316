"""Who may do what. Every refusal is audited."""

from __future__ import annotations

import uuid

from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Forbidden


def require_admin(ctx: Context, workspace_id: uuid.UUID, action: str) -> None:
    """Admins of this workspace, and the operator's CLI, pass; anyone else is
    refused with an audit event naming what they tried."""
    if ctx.actor_type == "operator":
        return
    user = ctx.user
    if user is not None and user.workspace_id == workspace_id and user.role == "admin":
        return
    audit.record_now(
        ctx,
        "authz.denied",
        workspace_id=workspace_id,
        outcome="denied",
        reason="admin_required",
        details={"attempted": action},
    )
    raise Forbidden(
        "Only admins of this workspace can do that.",
        code="admin_required",
        audited=True,
    )

"""Writing the audit log. Events join the caller's transaction, so an action
and its record are committed together or not at all."""

from __future__ import annotations

import uuid
from typing import Any

from idp.clock import now
from idp.db import db
from idp.models import AuditEvent
from idp.services.context import Context

MAX_LABEL = 320
MAX_USER_AGENT = 512


def record(
    ctx: Context,
    action: str,
    *,
    workspace_id: uuid.UUID | None,
    outcome: str = "success",
    reason: str | None = None,
    target: Any = None,
    target_label: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the current transaction.

    ``target`` may be a model with ``id`` and an ``email`` or ``name``; its
    label is copied so the event still reads after the target is deleted.
    """
    target_type = target_id = None
    if target is not None:
        target_type = type(target).__name__.lower()
        target_id = str(target.id)
        if target_label is None:
            target_label = getattr(target, "email", None) or getattr(target, "name", "")
    event = AuditEvent(
        workspace_id=workspace_id,
        occurred_at=now(),
        actor_type=ctx.actor_type,
        actor_id=ctx.actor_id,
        actor_label=(ctx.label or "")[:MAX_LABEL],
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_label=(target_label or "")[:MAX_LABEL],
        outcome=outcome,
        reason=reason,
        client_ip=ctx.client.ip,
        peer_ip=ctx.client.peer_ip,
        user_agent=(ctx.client.user_agent or "")[:MAX_USER_AGENT] or None,
        details=details or {},
    )
    db.session.add(event)
    return event


def record_now(ctx: Context, action: str, **kwargs: Any) -> None:
    """Record and commit at once: for refusals, whose action wrote nothing else."""
    db.session.rollback()
    record(ctx, action, **kwargs)
    db.session.commit()

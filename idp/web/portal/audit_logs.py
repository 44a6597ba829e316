"""Audit logs: filter, page newest first, Download as CSV."""

from __future__ import annotations

from flask import Response, g, render_template, request, stream_with_context

from idp.services import audit_query, audit_text
from idp.state import settings
from idp.web.portal import bp, login_required

# Audit ids are signed 64-bit integers on PostgreSQL and SQLite alike.
MAX_EVENT_ID = 2**63 - 1


def _cursor(value: str) -> int | None:
    """The id a page starts below; anything else means the first page."""
    # ASCII digits only: str.isdigit also accepts "²", which int() refuses.
    if value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
        if number <= MAX_EVENT_ID:
            return number
    return None


@bp.get("/audit-logs")
@login_required
def audit_logs():  # type: ignore[no-untyped-def]
    filters = audit_query.Filters.parse(request.args)
    before = _cursor(request.args.get("before", ""))
    result = audit_query.page(
        g.workspace.id, filters, before=before, size=settings()["audit"]["page_size"]
    )
    return render_template(
        "portal/audit_logs.html",
        page=result,
        filters=filters,
        actions=audit_query.ACTIONS,
        describe=audit_text.summary,
        first_page=before is None,
    )


@bp.get("/audit-logs/download")
@login_required
def audit_download():  # type: ignore[no-untyped-def]
    filters = audit_query.Filters.parse(request.args)
    workspace_id = g.workspace.id
    body = stream_with_context(audit_query.export_csv(workspace_id, filters))
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="audit-{g.workspace.slug}.csv"'
    )
    return response

"""Audit logs: filter, page newest first, Download as CSV."""

from __future__ import annotations

from flask import Response, g, render_template, request, stream_with_context

from idp.services import audit_query
from idp.state import settings
from idp.web.portal import bp, login_required


@bp.get("/audit-logs")
@login_required
def audit_logs():  # type: ignore[no-untyped-def]
    filters = audit_query.Filters.parse(request.args)
    before_arg = request.args.get("before", "")
    before = int(before_arg) if before_arg.isdigit() and len(before_arg) < 20 else None
    result = audit_query.page(g.workspace.id, filters, before=before,
                              size=settings()["audit"]["page_size"])
    return render_template("portal/audit_logs.html", page=result, filters=filters,
                           actions=audit_query.ACTIONS, first_page=before is None)


@bp.get("/audit-logs/download")
@login_required
def audit_download():  # type: ignore[no-untyped-def]
    filters = audit_query.Filters.parse(request.args)
    workspace_id = g.workspace.id
    body = stream_with_context(audit_query.export_csv(workspace_id, filters))
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{g.workspace.slug}.csv"'
    return response

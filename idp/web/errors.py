"""Every failure becomes a page (or JSON) with a clear message; never a bare
500 for bad input, and a 503 when a store we depend on is down."""

from __future__ import annotations

import logging

import redis.exceptions
import sqlalchemy as sa
from flask import Flask, Response, g, jsonify, render_template, request
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from idp.db import db
from idp.services.errors import ServiceError, Throttled

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def audit_refusal(
    exc: ServiceError | None = None, *, reason: str | None = None
) -> None:
    """Record a refused request unless its service already did: every bad
    input leaves an audit entry (reason code, endpoint, method)."""
    if exc is not None and exc.audited:
        return
    from idp.services import audit
    from idp.web.requests import context

    loaded = g.get("loaded")
    try:
        audit.record_now(
            context(),
            "request.refused",
            workspace_id=loaded.user.workspace_id if loaded is not None else None,
            outcome="failure",
            reason=reason or (exc.code if exc is not None else "bad_request"),
            details={"endpoint": request.endpoint or "", "method": request.method},
        )
    except sa.exc.SQLAlchemyError:
        db.session.rollback()
        log.error(
            "audit.refusal_not_recorded reason=%s", reason or (exc.code if exc else "")
        )


def error_page(
    status: int, title: str, message: str, **extra: object
) -> tuple[Response | str, int]:
    if _wants_json():
        return jsonify(error=title, message=message), status
    return render_template(
        "error.html", status=status, title=title, message=message, **extra
    ), status


def init_app(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError):  # type: ignore[no-untyped-def]
        db.session.rollback()
        audit_refusal(exc)
        body, status = error_page(
            exc.status, _TITLES.get(exc.status, "Request refused"), exc.message
        )
        response = app.make_response((body, status))
        if isinstance(exc, Throttled):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):  # type: ignore[no-untyped-def]
        audit_refusal(reason="csrf_failed")
        return error_page(
            400,
            "Form expired",
            "This form has expired or was sent from another page. Go back, reload and try again.",
        )

    @app.errorhandler(RateLimitExceeded)
    def _limited(exc: RateLimitExceeded):  # type: ignore[no-untyped-def]
        # A refusal like any other: one audit event (ASVS 16.3.1), so a
        # guessing run stays visible after it reaches the limit.
        audit_refusal(reason="rate_limited")
        body, status = error_page(
            429,
            "Too many attempts",
            "Too many attempts from your network. Wait a minute and try again.",
        )
        response = app.make_response((body, status))
        # The limit's whole window: never shorter than the real wait.
        response.headers["Retry-After"] = str(exc.limit.limit.get_expiry())
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        if status in (400, 413):
            audit_refusal(
                reason="request_too_large" if status == 413 else "bad_request"
            )
        return error_page(
            status, exc.name, _MESSAGES.get(status, exc.description or exc.name)
        )

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    @app.errorhandler(sa.exc.TimeoutError)
    @app.errorhandler(redis.exceptions.RedisError)
    def _store_down(exc: Exception):  # type: ignore[no-untyped-def]
        try:
            db.session.rollback()
        except sa.exc.SQLAlchemyError:
            pass
        log.error("store.unavailable kind=%s", type(exc).__name__)
        return error_page(
            503,
            "Temporarily unavailable",
            "Portcullis cannot reach its data store right now. Nothing was changed; try again shortly.",
        )


_TITLES = {
    400: "Invalid request",
    401: "Sign-in failed",
    403: "Not allowed",
    404: "Not found",
    409: "Cannot do that",
    429: "Too many attempts",
    503: "Temporarily unavailable",
}
_MESSAGES = {
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "The request is too large.",
}

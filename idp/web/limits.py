"""Per-client-address limits on the forms that guess or send mail, with
Flask-Limiter: Redis when configured (shared), else per-worker memory."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter

from idp.settings import Settings

# Endpoints whose POSTs count against the client address's limit.
LIMITED = (
    "auth.login",
    "auth.password",
    "auth.forgot",
    "auth.invite_accept",
    "auth.reset_form",
)


def _client_key() -> str:
    from idp.web.requests import current_client

    # An unknown client shares one bucket: it cannot escape limits by
    # sending an unparseable forwarded address.
    return current_client().ip or "unknown"


def init_app(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        _client_key,
        app=app,
        storage_uri=settings["redis_url"] or "memory://",
        strategy="moving-window",
        # Off: with headers on, Flask-Limiter adds Retry-After to every answer
        # of a limited form (a 302 included) and rewrites the account lockout's
        # Retry-After, one second short. errors.py sets it on 429s itself.
        headers_enabled=False,
        # Fail closed: a limit store that is down answers 503, never "no limit".
        swallow_errors=False,
        in_memory_fallback_enabled=False,
        key_prefix="portcullis",
    )
    limit = settings["signin"]["ip_limits"]
    for endpoint in LIMITED:
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = limiter.limit(limit, methods=["POST"])(view)
    return limiter

"""Per-client-address limits on the forms that guess or send mail, with
Flask-Limiter: Redis when configured (shared), else per-worker memory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

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
    # Passkeys and security keys (idp/web/mfa_webauthn.py): each POST also
    # writes a challenge row.
    "auth.passkey_options",
    "auth.passkey_signin",
    "auth.mfa_webauthn_options",
    "auth.mfa_setup_webauthn",
    "auth.mfa_setup_webauthn_options",
)
# Endpoints limited whatever the method: the start of a federated sign-in
# (a GET that records an outstanding request) and the IdP's answers.
LIMITED_ANY_METHOD = ("sso.start", "sso.saml_acs", "sso.oidc_callback")


def _client_key() -> str:
    from idp.web.requests import current_client

    # An unknown client shares one bucket: it cannot escape limits by
    # sending an unparseable forwarded address.
    return current_client().ip or "unknown"


def init_app(app: Flask, settings: Settings, exempt: Callable[[], bool]) -> Limiter:
    """The limiter, with its limits on the forms of LIMITED. Requests for
    which ``exempt`` says so skip the limiter altogether."""
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
    for endpoint in LIMITED_ANY_METHOD:
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = limiter.limit(limit)(view)
    _skip_hooks(app, limiter, exempt)
    return limiter


def _skip_hooks(app: Flask, limiter: Limiter, exempt: Callable[[], bool]) -> None:
    """Flask-Limiter runs three hooks on every request, even one its
    request filters then let through: about a tenth of a gateway check's
    work. Each is wrapped so that an exempt request skips it."""
    found = 0
    for hooks in (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
    ):
        chain = hooks.get(None, [])
        for index, hook in enumerate(chain):
            if _belongs_to(hook, limiter):
                chain[index] = _unless(
                    exempt, hook, returns_first=hooks is app.after_request_funcs
                )
                found += 1
    # A Flask-Limiter that hooks in some other way must fail the tests, not
    # quietly run the limiter on every check again.
    if found != 3:
        raise RuntimeError(f"expected Flask-Limiter's 3 request hooks, found {found}")


def _belongs_to(hook: Any, limiter: Limiter) -> bool:
    if isinstance(hook, functools.partial):
        return bool(hook.args) and hook.args[0] is limiter
    return getattr(hook, "__self__", None) is limiter


def _unless(exempt: Callable[[], bool], hook: Any, *, returns_first: bool) -> Any:
    @functools.wraps(hook)
    def run(*args: Any) -> Any:
        if exempt():
            # An after-request hook hands back the response it was given.
            return args[0] if returns_first else None
        return hook(*args)

    return run

"""The application factory."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_wtf.csrf import CSRFProtect

from connectors.mail import Mailer, mailer_from_settings
from idp.clientip import parse_networks
from idp.clock import Clock, system_clock
from idp.db import db
from idp.keys import load_keys
from idp.services.passwords import PasswordService
from idp.settings import Settings, load_settings
from idp.state import AppState

log = logging.getLogger(__name__)
csrf = CSRFProtect()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def engine_options(settings: Settings) -> dict[str, Any]:
    if settings.is_sqlite:
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 10,
        "pool_timeout": 5,
    }


def flow_cookie_name(settings: Settings) -> str:
    # The short-lived flow cookie (CSRF token, half-finished sign-in). With
    # https it is host-bound like the session cookie.
    return (
        "__Host-portcullis_flow"
        if settings.public_scheme == "https"
        else "portcullis_flow"
    )


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    mailer: Mailer | None = None,
) -> Flask:
    settings = settings or load_settings()
    app = Flask("idp", instance_path=str(settings.instance_dir))
    keys = load_keys(settings.keys_dir)

    https = settings.public_scheme == "https"
    app.config.update(
        SECRET_KEY=keys.secret_key,
        SECRET_KEY_FALLBACKS=list(keys.secrets[1:]),
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings),
        SESSION_COOKIE_NAME=flow_cookie_name(settings),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=https,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=https,
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        MAX_FORM_PARTS=200,
        PREFERRED_URL_SCHEME=settings.public_scheme,
        TEMPLATES_AUTO_RELOAD=False,
    )
    settings.instance_dir.mkdir(parents=True, exist_ok=True)

    cfg = settings["passwords"]
    signin = settings["signin"]
    app.extensions["idp"] = AppState(
        settings=settings,
        clock=clock or system_clock,
        passwords=PasswordService(
            memory_kib=cfg["argon2_memory_kib"],
            time_cost=cfg["argon2_time_cost"],
            parallelism=cfg["argon2_parallelism"],
            min_length=cfg["min_length"],
            max_length=cfg["max_length"],
            refuse_common=cfg["refuse_common"],
            concurrency=signin["hash_concurrency"],
            wait_seconds=signin["hash_wait_seconds"],
        ),
        mailer=mailer
        or mailer_from_settings(
            settings["smtp_url"],
            settings["mail_from"],
            settings.instance_dir / "outbox",
        ),
        trusted_proxies=parse_networks(settings["gateway"]["trusted_proxies"]),
    )
    app.extensions["idp_keys"] = keys

    db.init_app(app)
    if settings.is_sqlite:
        with app.app_context():
            sa.event.listen(db.engine, "connect", _sqlite_pragmas)
    from idp.web import errors, health, limits, requests

    # Session loading first: a refused CSRF check is then audited under the
    # member who sent it.
    requests.init_app(app)
    csrf.init_app(app)
    errors.init_app(app)
    app.register_blueprint(health.bp)

    from idp.gateway import forward
    from idp.services.assertions import Signer
    from idp.web import auth, auth_mfa, mfa_totp, mfa_webauthn  # noqa: F401 (routes)
    from idp.web import sso as sso_web
    from idp.web.portal import bp as portal_bp

    app.register_blueprint(auth.bp)
    app.register_blueprint(portal_bp)
    app.register_blueprint(sso_web.bp)
    # The IdP's POST to the ACS is cross-site and carries no CSRF token;
    # the binding cookie and the signed, single-use answer protect it.
    csrf.exempt(sso_web.saml_acs)
    app.register_blueprint(forward.bp)
    forward.init_app(app)
    app.extensions["idp_signer"] = Signer(keys)
    # No limit applies to the checks, which skip the limiter altogether.
    app.extensions["idp_limiter"] = limits.init_app(app, settings, forward.is_check)
    from idp.gateway import proxy

    # Outermost: proxied requests never reach Flask's body limit or hooks.
    proxy.init_app(app)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"min_length": settings["passwords"]["min_length"]}

    return app

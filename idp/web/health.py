"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, jsonify

from idp.db import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    try:
        db.session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        db.session.rollback()
        log.error("readyz.database_unreachable")
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok")

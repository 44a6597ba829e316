"""The user-management portal: one tab per module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import quote

from flask import Blueprint, g, redirect, request, url_for

from idp.db import db
from idp.models import Workspace
from idp.services import audit, sessions
from idp.services.reasons import SESSION_ENDED, message
from idp.web.errors import error_page
from idp.web.requests import context, session_cookie_name

bp = Blueprint("portal", __name__, url_prefix="/portal")


@dataclass(frozen=True)
class Tab:
    endpoint: str
    label: str
    admin_only: bool = False


# In PRODUCT.md's order; a tab whose feature is not built is not listed.
TABS = (
    Tab("portal.profile", "Profile"),
    Tab("portal.privacy_security", "Privacy & security"),
    Tab("portal.users", "Users"),
    Tab("portal.security", "Security", admin_only=True),
    Tab("portal.sso", "SSO", admin_only=True),
    Tab("portal.audit_logs", "Audit logs"),
)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refused = g.get("refused")
        if g.loaded is None and refused is not None and not refused.ended:
            # Signed in, but not from here (the IP allow-list).
            return error_page(403, "Not allowed", message(refused.decision.reason))
        if g.loaded is None:
            target = request.full_path if request.method == "GET" else request.path
            target = target.rstrip("?")
            if refused is not None:
                expired = f"&reason={refused.decision.reason}"
            elif g.get("had_session_cookie"):
                # Ended by an earlier request or by a sign-in elsewhere:
                # tell the holder why, when the reason is one to tell.
                token = request.cookies.get(session_cookie_name())
                reason = sessions.ended_reason(token)
                expired = (
                    f"&reason={reason}" if reason in SESSION_ENDED else "&expired=1"
                )
            else:
                expired = ""
            return redirect(
                f"{url_for('auth.login')}?rd={quote(target, safe='')}{expired}"
            )
        g.user = g.loaded.user
        g.workspace = db.session.get(Workspace, g.user.workspace_id)
        return view(*args, **kwargs)

    return wrapper


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @login_required
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.user.role != "admin":
            audit.record_now(
                context(),
                "authz.denied",
                workspace_id=g.user.workspace_id,
                outcome="denied",
                reason="admin_required",
                details={"path": request.path[:200], "method": request.method},
            )
            return error_page(
                403, "Not allowed", "Only admins of this workspace can open this page."
            )
        return view(*args, **kwargs)

    return wrapper


@bp.app_context_processor
def _portal_globals() -> dict[str, Any]:
    user = g.get("user")
    if user is None:
        return {}
    tabs = [t for t in TABS if not t.admin_only or user.role == "admin"]
    return {"tabs": tabs, "me": user, "workspace": g.get("workspace")}


@bp.get("/")
@login_required
def index():  # type: ignore[no-untyped-def]
    return redirect(url_for("portal.profile"))


from idp.web.portal import (  # noqa: F401
    audit_logs,
    privacy,
    profile,
    reauth,
    security,
    sso,
    users,
)

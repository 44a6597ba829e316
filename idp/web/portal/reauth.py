"""A recent sign-in for changing sign-in methods: adding or removing a
factor needs a sign-in (or the password typed again) within
``mfa.recent_auth_minutes``. Afterwards the Privacy & security tab offers
to log out every other session."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import quote, urlsplit

from flask import g, redirect, render_template, request, session, url_for

from idp.services import account
from idp.services.errors import InvalidInput, Throttled
from idp.services.returnurl import safe_return_url
from idp.web.errors import audit_refusal
from idp.web.portal import bp, login_required
from idp.web.requests import context

OFFER_KEY = "offer_logout_others"


def recent_auth_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Send a member whose sign-in is older than the window to type the
    password again, then back to the page (a GET: a form POSTed too late
    is not replayed; its page is shown again)."""

    @login_required
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not account.recently_authenticated(g.loaded.session):
            back = (
                request.full_path.rstrip("?")
                if request.method == "GET"
                else (url_for("portal.privacy_security"))
            )
            return redirect(
                f"{url_for('portal.reauthenticate')}?next={quote(back, safe='')}"
            )
        return view(*args, **kwargs)

    return wrapper


def _portal_page(value: str | None) -> str:
    """Where to go back to: a portal page of this site, nothing else."""
    safe = safe_return_url(value)
    if (
        safe is not None
        and safe.startswith("/portal/")
        and posixpath.normpath(urlsplit(safe).path).startswith("/portal/")
        and "%" not in safe.split("?")[0]
    ):
        return safe
    return url_for("portal.privacy_security")


def offer_logout_others() -> None:
    """After a sign-in method changed: the tab offers to end other sessions."""
    session[OFFER_KEY] = True


def take_offer() -> bool:
    return bool(session.pop(OFFER_KEY, False))


@bp.route("/reauthenticate", methods=["GET", "POST"])
@login_required
def reauthenticate():  # type: ignore[no-untyped-def]
    target = _portal_page(request.values.get("next"))
    if request.method == "POST":
        try:
            account.reauthenticate(context(), request.form.get("password", ""))
        except (InvalidInput, Throttled) as exc:
            audit_refusal(exc)
            return render_template(
                "portal/reauthenticate.html", target=target, error=exc.message
            ), exc.status
        return redirect(target)
    return render_template("portal/reauthenticate.html", target=target)

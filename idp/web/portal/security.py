"""Security (admin): the check-up with its warnings, Force MFA, the session
limits, and the IP and domain allow-lists. Each form posts to its own
route and comes back to its own section of the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import g, redirect, render_template, request, url_for

from idp.services import checkup, security_policy
from idp.services.errors import Conflict, InvalidInput
from idp.services.reasons import message
from idp.web.errors import audit_refusal
from idp.web.portal import admin_required, bp
from idp.web.requests import context, current_client

FIELD_LIMIT = 400
SECTIONS = (
    "force-mfa",
    "idle-timeout",
    "max-sessions",
    "force-relogin",
    "ip-restrictions",
    "domain-restrictions",
)
FORCED = ("force", "force_except_sso")


def _field(name: str) -> str:
    return request.form.get(name, "")[:FIELD_LIMIT]


def _checked(name: str) -> bool:
    return request.form.get(name) == "1"


def _forms(policy: Any) -> dict[str, dict[str, Any]]:
    """What each section's form shows: the stored values, or a suggestion
    for a setting that is off."""
    idle = security_policy.as_duration(policy.idle_timeout_seconds or 30 * 60)
    return {
        "force-mfa": {"mfa_mode": policy.mfa_mode},
        "idle-timeout": {
            "enabled": bool(policy.idle_timeout_seconds),
            "amount": str(idle.amount),
            "unit": idle.unit,
        },
        "max-sessions": {
            "enabled": bool(policy.max_sessions),
            "limit": str(policy.max_sessions or 5),
        },
        "force-relogin": {
            "enabled": bool(policy.relogin_days),
            "days": str(policy.relogin_days or 7),
        },
        "ip-restrictions": {"network": "", "description": ""},
        "domain-restrictions": {"domain": "", "include_subdomains": False},
    }


def _page(
    status: int = 200,
    *,
    section: str | None = None,
    error: str | None = None,
    posted: dict[str, Any] | None = None,
):  # type: ignore[no-untyped-def]
    workspace = g.workspace
    overview = checkup.run(context(), workspace)
    policy = security_policy.current_policy(workspace)
    members = checkup.mfa_summary(workspace)
    ip_entries = security_policy.ip_entries(workspace)
    client_ip = current_client().ip
    forms = _forms(policy)
    if section in forms and posted:
        forms[section].update(posted)
    saved = request.args.get("saved", "")
    return render_template(
        "portal/security.html",
        overview=overview,
        policy=policy,
        forms=forms,
        members=members,
        member_total=overview.active_members,
        ip_entries=ip_entries,
        domain_entries=security_policy.domain_entries(workspace),
        client_ip=client_ip,
        client_listed=security_policy.client_allowed(ip_entries, client_ip),
        mfa_labels=security_policy.MFA_LABELS,
        units=security_policy.UNITS,
        saved=saved if saved in SECTIONS else "",
        error_section=section,
        section_error=error,
    ), status


def _save(
    section: str,
    action: Callable[..., Any],
    posted: dict[str, Any] | None = None,
    **arguments: Any,
):  # type: ignore[no-untyped-def]
    """Call one service action; back to the section, or the page again
    with the refusal in that section and nothing stored."""
    try:
        action(context(), g.workspace, **arguments)
    except (InvalidInput, Conflict) as exc:
        audit_refusal(exc)
        return _page(exc.status, section=section, error=exc.message, posted=posted)
    # The form's action carries the section's fragment, which the browser
    # keeps across this redirect.
    return redirect(url_for("portal.security", saved=section))


@bp.get("/security", endpoint="security")
@admin_required
def security_tab():  # type: ignore[no-untyped-def]
    return _page()


@bp.post("/security/mfa")
@admin_required
def security_mfa():  # type: ignore[no-untyped-def]
    mode = _field("mfa_mode")
    policy = security_policy.current_policy(g.workspace)
    if mode in FORCED and mode != policy.mfa_mode and not _checked("confirm"):
        # Warn before, not after: forcing may end the admin's own session
        # on the very next request.
        without = checkup.members_without_mfa(g.workspace.id)
        if without:
            return render_template(
                "portal/security_force_mfa.html",
                mode=mode,
                label=security_policy.MFA_LABELS[mode],
                without=without,
                self_affected=checkup.session_loses_access(g.loaded.session, mode),
                told=message("mfa_enrollment_required"),
            )
    return _save("force-mfa", security_policy.set_mfa_mode, mode=mode)


@bp.post("/security/idle-timeout")
@admin_required
def security_idle_timeout():  # type: ignore[no-untyped-def]
    posted = {
        "enabled": _checked("enabled"),
        "amount": _field("amount"),
        "unit": _field("unit"),
    }
    return _save("idle-timeout", security_policy.set_idle_timeout, posted, **posted)


@bp.post("/security/max-sessions")
@admin_required
def security_max_sessions():  # type: ignore[no-untyped-def]
    posted = {"enabled": _checked("enabled"), "limit": _field("limit")}
    return _save("max-sessions", security_policy.set_max_sessions, posted, **posted)


@bp.post("/security/relogin")
@admin_required
def security_relogin():  # type: ignore[no-untyped-def]
    posted = {"enabled": _checked("enabled"), "days": _field("days")}
    return _save("force-relogin", security_policy.set_relogin_days, posted, **posted)


@bp.post("/security/ip")
@admin_required
def security_ip():  # type: ignore[no-untyped-def]
    return _save(
        "ip-restrictions",
        security_policy.set_ip_restriction,
        enabled=_checked("enabled"),
    )


@bp.post("/security/ip/entries")
@admin_required
def security_ip_add():  # type: ignore[no-untyped-def]
    posted = {"network": _field("network"), "description": _field("description")}
    return _save("ip-restrictions", security_policy.add_ip_entry, posted, **posted)


@bp.post("/security/ip/my-ip")
@admin_required
def security_ip_add_mine():  # type: ignore[no-untyped-def]
    return _save("ip-restrictions", security_policy.add_my_ip)


@bp.post("/security/ip/<entry_id>/remove")
@admin_required
def security_ip_remove(entry_id: str):  # type: ignore[no-untyped-def]
    return _save("ip-restrictions", security_policy.remove_ip_entry, entry_id=entry_id)


@bp.post("/security/domains")
@admin_required
def security_domains():  # type: ignore[no-untyped-def]
    return _save(
        "domain-restrictions",
        security_policy.set_domain_restriction,
        enabled=_checked("enabled"),
    )


@bp.post("/security/domains/entries")
@admin_required
def security_domain_add():  # type: ignore[no-untyped-def]
    posted = {
        "domain": _field("domain"),
        "include_subdomains": _checked("include_subdomains"),
    }
    return _save("domain-restrictions", security_policy.add_domain, posted, **posted)


@bp.post("/security/domains/<entry_id>/remove")
@admin_required
def security_domain_remove(entry_id: str):  # type: ignore[no-untyped-def]
    return _save(
        "domain-restrictions", security_policy.remove_domain, entry_id=entry_id
    )

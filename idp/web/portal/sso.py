"""SSO (admin): connect the workspace to the company IdP by SAML 2.0 or
OpenID Connect, the addresses the IT team copies, the connection's options,
its email domains, *Test connection*, and removing it. Each form posts to
its own route and comes back to its own section of the page; a refusal
shows in that section, with nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import (
    Response,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.datastructures import FileStorage

from idp.db import db
from idp.services.errors import InvalidInput, NotFound, ServiceError
from idp.services.sso import connections, domains
from idp.services.sso import requests as sso_requests
from idp.state import settings
from idp.web.auth import onward
from idp.web.errors import audit_refusal
from idp.web.portal import admin_required, bp
from idp.web.portal import sso_view as view
from idp.web.requests import context

FIELD_LIMIT = 400
URL_LIMIT = 2048
PEM_LIMIT = 16 * 1024
TEXT_LIMIT = 8 * 1024
ATTRIBUTE_LIMIT = 256
# Carried in the flow cookie across the redirect that follows a change:
# the section's confirmation, and the IdP warnings a change raised.
DONE = "sso_done"
WARNINGS = "sso_warnings"


def _field(name: str, limit: int = FIELD_LIMIT) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        raise InvalidInput(
            f"The {name.replace('_', ' ')} field is too long.", code="field_too_long"
        )
    return value.strip()


def _checked(name: str) -> bool:
    return request.form.get(name) == "1"


def _page(
    status: int = 200,
    *,
    section: str | None = None,
    error: str | None = None,
    posted: dict[str, Any] | None = None,
):  # type: ignore[no-untyped-def]
    workspace = g.workspace
    connection = connections.for_workspace(workspace.id)
    if connection is None and section is not None:
        # Only the connect section is on the page.
        section = "connect"
    connect = request.args.get("connect", "")
    if posted and posted.get("protocol") in ("saml", "oidc"):
        connect = posted["protocol"]
    return render_template(
        "portal/sso.html",
        connection=connection,
        connect=connect if connect in ("saml", "oidc") else "",
        ours=view.our_values(workspace),
        idp=view.idp_facts(connection) if connection is not None else None,
        forms=view.forms(connection, section, posted),
        domain_rows=view.domain_rows(connection) if connection is not None else [],
        warnings=session.pop(WARNINGS, None) or [],
        done=session.pop(DONE, None),
        error_section=section,
        section_error=error,
        upload_limit_kib=settings()["sso"]["fetch_max_bytes"] // 1024,
    ), status


def _refused(exc: ServiceError, section: str, posted: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """The page again with the refusal in its section; whatever the service
    had begun is rolled back."""
    db.session.rollback()
    audit_refusal(exc)
    return _page(exc.status, section=section, error=exc.message, posted=posted)


def _run(
    section: str,
    action: Callable[[], Any],
    done: str,
    posted: dict[str, Any] | None = None,
):  # type: ignore[no-untyped-def]
    try:
        action()
    except ServiceError as exc:
        return _refused(exc, section, posted)
    return _back(section, done)


def _back(section: str, done: str, warnings: list[str] | None = None) -> Response:
    """Back to the section, which then says what was done (and shows the
    IdP's warnings once, in the warning style)."""
    session[DONE] = [section, done]
    if warnings:
        session[WARNINGS] = [str(w)[:500] for w in warnings[:10]]
    return redirect(url_for("portal.sso") + f"#{section}")


@bp.get("/sso", endpoint="sso")
@admin_required
def sso_tab():  # type: ignore[no-untyped-def]
    return _page()


# --- connecting ---------------------------------------------------------------


def _uploaded_metadata() -> bytes:
    upload = request.files.get("metadata_file")
    if not isinstance(upload, FileStorage) or not upload.filename:
        raise InvalidInput(
            "Choose the metadata file to upload.", code="sso_metadata_missing"
        )
    limit = settings()["sso"]["fetch_max_bytes"]
    # As bytes: the XML declares its own encoding.
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(
            f"The metadata file is larger than {limit // 1024} KiB.",
            code="sso_metadata_too_large",
        )
    return data


@bp.post("/sso/saml")
@admin_required
def sso_saml():  # type: ignore[no-untyped-def]
    posted: dict[str, Any] = {"protocol": "saml"}
    try:
        source = _field("source")
        posted["source"] = source
        if source == "url":
            posted["metadata_url"] = _field("metadata_url", URL_LIMIT)
            arguments: dict[str, Any] = {"metadata_url": posted["metadata_url"]}
        elif source == "xml":
            arguments = {"metadata_xml": _uploaded_metadata()}
        elif source == "manual":
            posted["entity_id"] = _field("entity_id", URL_LIMIT)
            posted["sso_url"] = _field("sso_url", URL_LIMIT)
            posted["certificate"] = _field("certificate", PEM_LIMIT)
            posted["certificate_next"] = _field("certificate_next", PEM_LIMIT)
            arguments = {
                "entity_id": posted["entity_id"],
                "sso_url": posted["sso_url"],
                "certificates": [
                    pem
                    for pem in (posted["certificate"], posted["certificate_next"])
                    if pem
                ],
            }
        else:
            raise InvalidInput("Choose how to describe the IdP.", code="invalid_input")
        from idp.services.sso import saml

        _, warnings = saml.configure(context(), g.workspace, **arguments)
    except ServiceError as exc:
        return _refused(exc, "connect" if _new() else "idp", posted)
    return _back("idp", "SAML connection saved.", warnings)


@bp.post("/sso/saml/refresh")
@admin_required
def sso_saml_refresh():  # type: ignore[no-untyped-def]
    connection = connections.for_workspace(g.workspace.id)
    try:
        if connection is None or connection.protocol != "saml":
            raise NotFound("Connect an IdP by SAML first.", code="sso_not_configured")
        from idp.services.sso import saml

        warnings = saml.refresh_metadata(context(), g.workspace)
    except ServiceError as exc:
        return _refused(exc, "idp")
    return _back("idp", "Metadata refreshed from the IdP.", warnings)


def _tenants(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


@bp.post("/sso/oidc")
@admin_required
def sso_oidc():  # type: ignore[no-untyped-def]
    from idp.services.sso import oidc

    posted: dict[str, Any] = {"protocol": "oidc"}
    try:
        posted.update(
            issuer=_field("issuer", URL_LIMIT),
            client_id=_field("client_id"),
            scopes=_field("scopes"),
            allowed_tenants=_field("allowed_tenants", TEXT_LIMIT),
        )
        secret = request.form.get("client_secret", "")
        if len(secret) > 1024:
            raise InvalidInput("The client secret is too long.", code="field_too_long")
        oidc.configure(
            context(),
            g.workspace,
            issuer=posted["issuer"],
            client_id=posted["client_id"],
            client_secret=secret.strip() or None,
            scopes=posted["scopes"],
            allowed_tenants=_tenants(posted["allowed_tenants"]),
        )
    except ServiceError as exc:
        return _refused(exc, "connect" if _new() else "idp", posted)
    return _back("idp", "OpenID Connect connection saved.")


def _new() -> bool:
    return connections.for_workspace(g.workspace.id) is None


# --- options ------------------------------------------------------------------


@bp.post("/sso/options")
@admin_required
def sso_options():  # type: ignore[no-untyped-def]
    form = request.form
    posted: dict[str, Any] = {
        "enabled": _checked("enabled"),
        "require_sso": _checked("require_sso"),
        "jit_enabled": _checked("jit_enabled"),
        "default_role": form.get("default_role", "")[:FIELD_LIMIT],
        "group_roles": form.get("group_roles", "")[:TEXT_LIMIT],
        "saml_idp_initiated": _checked("saml_idp_initiated"),
        "attributes": {
            name: form.get(f"attr_{name}", "")[:ATTRIBUTE_LIMIT]
            for name in connections.ATTRIBUTE_FIELDS
        },
    }
    try:
        if len(form.get("group_roles", "")) > TEXT_LIMIT:
            raise InvalidInput("The group mapping is too long.", code="field_too_long")
        for name in connections.ATTRIBUTE_FIELDS:
            if len(form.get(f"attr_{name}", "")) > ATTRIBUTE_LIMIT:
                raise InvalidInput(
                    "Attribute names are at most "
                    f"{ATTRIBUTE_LIMIT} characters: that one is too long.",
                    code="field_too_long",
                )
        options = connections.Options(
            enabled=posted["enabled"],
            require_sso=posted["require_sso"],
            jit_enabled=posted["jit_enabled"],
            default_role=posted["default_role"].strip(),
            group_roles=connections.parse_group_roles(posted["group_roles"]),
            saml_idp_initiated=posted["saml_idp_initiated"],
            attribute_map={k: v.strip() for k, v in posted["attributes"].items()},
        )
        connections.update_options(context(), g.workspace, options)
    except ServiceError as exc:
        return _refused(exc, "options", posted)
    return _back("options", "Options saved.")


# --- domains ------------------------------------------------------------------


@bp.post("/sso/domains")
@admin_required
def sso_domain_add():  # type: ignore[no-untyped-def]
    posted = {"domain": request.form.get("domain", "")[:FIELD_LIMIT]}
    return _run(
        "domains",
        lambda: domains.claim(context(), g.workspace, _field("domain", 300)),
        "Domain added. Publish its TXT record, then choose Verify.",
        posted,
    )


@bp.post("/sso/domains/<domain_id>/verify")
@admin_required
def sso_domain_verify(domain_id: str):  # type: ignore[no-untyped-def]
    try:
        entry = domains.verify_by_dns(context(), g.workspace, domain_id)
    except ServiceError as exc:
        return _refused(exc, "domains")
    return _back("domains", f"{entry.domain} is verified.")


@bp.post("/sso/domains/<domain_id>/remove")
@admin_required
def sso_domain_remove(domain_id: str):  # type: ignore[no-untyped-def]
    return _run(
        "domains",
        lambda: domains.remove(context(), g.workspace, domain_id),
        "Domain removed.",
    )


# --- Test connection ------------------------------------------------------------


@bp.post("/sso/test")
@admin_required
def sso_test():  # type: ignore[no-untyped-def]
    """Send this admin to the IdP in a new tab; the answer comes back to
    ``sso_test_result`` and signs nobody in."""
    from idp.web.sso import send_to_idp

    connection = connections.for_workspace(g.workspace.id)
    try:
        if connection is None:
            raise NotFound("Connect an IdP first.", code="sso_not_configured")
        if not connection.enabled:
            # The IdP's answer is refused by a connection that is off.
            raise InvalidInput(
                "The connection is off. Turn it on under Options to test it; "
                "nobody is sent to it until one of its domains is verified.",
                code="sso_disabled",
            )
        sent = send_to_idp(
            g.workspace,
            connection,
            purpose="test",
            return_to=None,
            requested_by=g.user.id,
        )
    except ServiceError as exc:
        return _refused(exc, "test")
    # A page, not the redirect itself: this form's page may post only to
    # our own origin (CSP form-action), and browsers apply that to the
    # redirect that answers it.
    return onward(sent.location or url_for("portal.sso"), cookies_from=sent)


@bp.get("/sso/test/<request_id>", endpoint="sso_test_result")
@admin_required
def sso_test_result(request_id: str):  # type: ignore[no-untyped-def]
    from idp.web.sso import current_binding

    row = sso_requests.take_result(
        g.workspace.id, request_id, g.user.id, current_binding()
    )
    if row is None or row.result is None:
        db.session.rollback()
        # Someone else's test, another browser's, one already shown, or
        # none at all: the same page, and an audit entry.
        audit_refusal(reason="sso_test_result_unavailable")
        return render_template("portal/sso_test_result.html", result=None), 404
    result = dict(row.result)
    db.session.commit()
    return render_template(
        "portal/sso_test_result.html",
        result=result,
        received=view.received_rows(result),
        protocol=row.protocol,
    )


# --- removing -------------------------------------------------------------------


@bp.get("/sso/remove")
@admin_required
def sso_remove_confirm():  # type: ignore[no-untyped-def]
    connection = connections.for_workspace(g.workspace.id)
    if connection is None:
        return redirect(url_for("portal.sso"))
    return render_template(
        "portal/sso_remove.html",
        connection=connection,
        impact=view.removal_impact(connection, g.loaded.session),
    )


@bp.post("/sso/remove")
@admin_required
def sso_remove():  # type: ignore[no-untyped-def]
    try:
        connections.remove(context(), g.workspace)
    except ServiceError as exc:
        return _refused(exc, "connect")
    return _back("connect", "The connection is removed.")


# --- the metadata upload's size limit --------------------------------------------

"""Email domains of a connection: claims, their verification, and home-realm
discovery (which company IdP an email address signs in through).

A workspace claims a domain on the SSO tab; the claim routes nobody until it
is verified, by a DNS TXT record we ask for or by the operator (`idp domain
approve`). A domain is verified for one workspace in the whole installation
(a partial unique index holds it, whatever races).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from flask import current_app

from idp.clock import now
from idp.db import db
from idp.models import SsoConnection, SsoDomain, Workspace
from idp.security import email_domain
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import Conflict, InvalidInput, NotFound

MAX_DOMAINS = 50
TXT_PREFIX = "portcullis-domain-verification="
# The record lives under this label of the domain, so it never collides with
# the domain's own TXT records (SPF and the like).
TXT_LABEL = "_portcullis"

TxtLookup = Callable[[str], list[str]]


class DnsUnavailable(Exception):
    pass


def normalize_domain(text: str) -> str:
    """Lower-case IDNA form without a trailing dot, or InvalidInput."""
    domain = text.strip().lower().rstrip(".")
    domain = domain.removeprefix("@")
    try:
        domain = domain.encode("idna").decode("ascii") if domain else ""
    except UnicodeError as exc:
        raise InvalidInput("That is not a domain name.", code="invalid_domain") from exc
    labels = domain.split(".")
    if (
        len(domain) > 253
        or len(labels) < 2
        or not all(
            0 < len(label) <= 63
            and label[0] != "-"
            and label[-1] != "-"
            and all(c.isalnum() or c == "-" for c in label)
            for label in labels
        )
        or labels[-1].isdigit()
    ):
        raise InvalidInput(
            "Enter a domain name such as example.com.", code="invalid_domain"
        )
    return domain


def record_name(domain: SsoDomain) -> str:
    return f"{TXT_LABEL}.{domain.domain}"


def record_value(domain: SsoDomain) -> str:
    return TXT_PREFIX + domain.verification_token


def domain_of(email: str) -> str:
    """The domain of a normalised address as claims store it: parse_email
    keeps an internationalised domain in Unicode (bücher.example), claims
    hold its IDNA form (xn--bcher-kva.example)."""
    domain = email_domain(email)
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def verified_domains(connection: SsoConnection) -> set[str]:
    return {
        d.domain
        for d in db.session.scalars(
            sa.select(SsoDomain).where(
                SsoDomain.connection_id == connection.id,
                SsoDomain.verified_at.is_not(None),
            )
        )
    }


def connection_for_email(email: str) -> tuple[Workspace, SsoConnection] | None:
    """Home-realm discovery: the workspace and enabled connection whose
    verified domain this (normalised) address is in."""
    domain = domain_of(email)
    if not domain:
        return None
    row = db.session.execute(
        sa.select(Workspace, SsoConnection)
        .join(SsoDomain, SsoDomain.workspace_id == Workspace.id)
        .join(SsoConnection, SsoConnection.id == SsoDomain.connection_id)
        .where(
            SsoDomain.domain == domain,
            SsoDomain.verified_at.is_not(None),
            SsoConnection.enabled.is_(True),
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def sso_required_for(user_email: str, workspace_id: uuid.UUID) -> bool:
    """Whether *Require SSO* refuses a password for this address in this
    workspace."""
    hit = connection_for_email(user_email)
    return hit is not None and hit[0].id == workspace_id and hit[1].require_sso


def claim(ctx: Context, workspace: Workspace, text: str) -> SsoDomain:
    from idp.services.sso import connections

    connection = connections.for_workspace(workspace.id)
    if connection is None:
        raise NotFound("Connect an IdP first.", code="sso_not_configured")
    domain = normalize_domain(text)
    count = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(SsoDomain)
        .where(SsoDomain.workspace_id == workspace.id)
    )
    if (count or 0) >= MAX_DOMAINS:
        raise InvalidInput(f"At most {MAX_DOMAINS} domains.", code="too_many_domains")
    if db.session.scalar(
        sa.select(SsoDomain.id).where(
            SsoDomain.workspace_id == workspace.id, SsoDomain.domain == domain
        )
    ):
        raise Conflict(f"{domain} is already listed.", code="domain_listed")
    entry = SsoDomain(
        workspace_id=workspace.id,
        connection_id=connection.id,
        domain=domain,
        verification_token=secrets.token_urlsafe(24),
        created_at=now(),
    )
    db.session.add(entry)
    audit.record(
        ctx, "sso.domain_added", workspace_id=workspace.id, target_label=domain
    )
    db.session.commit()
    return entry


def _entry(workspace: Workspace, domain_id: uuid.UUID | str) -> SsoDomain:
    try:
        key = uuid.UUID(str(domain_id))
    except ValueError as exc:
        raise NotFound("No such domain.") from exc
    entry = db.session.get(SsoDomain, key)
    if entry is None or entry.workspace_id != workspace.id:
        raise NotFound("No such domain.")
    return entry


def _mark_verified(ctx: Context, entry: SsoDomain, by: str) -> SsoDomain:
    taken = db.session.scalar(
        sa.select(Workspace.name)
        .join(SsoDomain, SsoDomain.workspace_id == Workspace.id)
        .where(
            SsoDomain.domain == entry.domain,
            SsoDomain.verified_at.is_not(None),
            SsoDomain.id != entry.id,
        )
    )
    if taken is not None:
        audit.record_now(
            ctx,
            "sso.domain_verified",
            workspace_id=entry.workspace_id,
            outcome="denied",
            reason="domain_taken",
            target_label=entry.domain,
        )
        raise Conflict(
            f"{entry.domain} is already verified for another workspace.",
            code="domain_taken",
            audited=True,
        )
    entry.verified_at = now()
    entry.verified_by = by
    audit.record(
        ctx,
        "sso.domain_verified",
        workspace_id=entry.workspace_id,
        target_label=entry.domain,
        details={"by": by},
    )
    try:
        db.session.commit()
    except sa.exc.IntegrityError as exc:
        # Verified elsewhere at the same moment: the index decided.
        db.session.rollback()
        raise Conflict(
            f"{entry.domain} is already verified for another workspace.",
            code="domain_taken",
        ) from exc
    return entry


def system_txt_lookup(name: str) -> list[str]:
    import dns.exception
    import dns.resolver

    from idp.state import settings

    resolver = dns.resolver.Resolver()
    servers = settings()["sso"]["dns_nameservers"]
    if servers:
        resolver.nameservers = list(servers)
    resolver.lifetime = 5
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DnsUnavailable(str(exc)) from exc
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def txt_lookup() -> TxtLookup:
    """The resolver: tests put a stub in app.extensions["idp_txt_lookup"]."""
    return current_app.extensions.get("idp_txt_lookup", system_txt_lookup)


def verify_by_dns(
    ctx: Context, workspace: Workspace, domain_id: uuid.UUID | str
) -> SsoDomain:
    entry = _entry(workspace, domain_id)
    if entry.verified_at is not None:
        return entry
    try:
        values = txt_lookup()(record_name(entry))
    except DnsUnavailable as exc:
        raise InvalidInput(
            "The DNS lookup failed. Try again in a few minutes.",
            code="dns_unavailable",
        ) from exc
    if record_value(entry) not in [v.strip() for v in values]:
        audit.record_now(
            ctx,
            "sso.domain_verified",
            workspace_id=workspace.id,
            outcome="failure",
            reason="dns_record_missing",
            target_label=entry.domain,
        )
        raise InvalidInput(
            f"No TXT record {record_name(entry)} with the value "
            f"{record_value(entry)} was found. DNS changes can take a while to "
            "appear; try again later.",
            code="dns_record_missing",
            audited=True,
        )
    return _mark_verified(ctx, entry, "dns")


def approve(ctx: Context, workspace: Workspace, text: str) -> SsoDomain:
    """The operator's verification (`idp domain approve`): the domain is
    claimed if it is not yet, then verified."""
    domain = normalize_domain(text)
    entry = db.session.scalar(
        sa.select(SsoDomain).where(
            SsoDomain.workspace_id == workspace.id, SsoDomain.domain == domain
        )
    )
    if entry is None:
        entry = claim(ctx, workspace, domain)
    if entry.verified_at is not None:
        return entry
    return _mark_verified(ctx, entry, "operator")


def remove(ctx: Context, workspace: Workspace, domain_id: uuid.UUID | str) -> None:
    entry = _entry(workspace, domain_id)
    audit.record(
        ctx, "sso.domain_removed", workspace_id=workspace.id, target_label=entry.domain
    )
    db.session.delete(entry)
    db.session.commit()

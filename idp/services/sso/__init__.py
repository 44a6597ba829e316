"""Enterprise SSO: a workspace's company IdP, by SAML 2.0 or OpenID Connect.

The protocol modules (``saml``, ``oidc``) turn what the IdP sent into
verified ``Claims`` with the help of ``connectors``; ``federation`` turns
claims into a member (linking, just-in-time accounts, group-to-role
mapping); ``requests`` holds the sign-ins sent to the IdP, bound to the
browser that began them; ``domains`` is home-realm discovery and domain
verification; ``connections`` is the configuration the SSO tab edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.profile import Profile
from idp.services.errors import ServiceError

# The amr value of a session begun at a company IdP (RFC 8176 has none for
# federation; "fed" is the one our sessions and the gateway assertion use).
AMR_FEDERATED = "fed"


@dataclass(frozen=True)
class Claims:
    """What a verified SAML assertion or ID token says about the person."""

    issuer: str
    # The IdP's stable id for the person: NameID (SAML) or sub (OIDC).
    subject: str
    email: str | None = None
    # OIDC: the email_verified claim; SAML: True (an IdP asserts the
    # addresses of its own directory). Linking to an existing account also
    # needs the address in one of the connection's verified domains.
    email_verified: bool = False
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    # Every attribute or claim received, for *Test connection*: name ->
    # values, as text.
    received: dict[str, list[str]] = field(default_factory=dict)
    # Anything protocol-specific worth auditing (assertion id, tenant, ...).
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        issuer: str,
        subject: str,
        profile: Profile,
        *,
        email_verified: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> Claims:
        """Claims from what a protocol mapped; ``email_verified`` when the
        protocol, not the IdP, decides it (SAML)."""
        return cls(
            issuer=issuer,
            subject=subject,
            email=profile.email,
            email_verified=profile.email_verified
            if email_verified is None
            else email_verified,
            first_name=profile.first_name,
            last_name=profile.last_name,
            display_name=profile.display_name,
            groups=profile.groups,
            received=profile.received,
            details=details or {},
        )

    @property
    def full_name(self) -> str | None:
        if self.display_name:
            return self.display_name
        name = " ".join(p for p in (self.first_name, self.last_name) if p)
        return name or None


class SsoRefused(ServiceError):
    """An SSO answer or sign-in refused; ``code`` is the audit reason."""

    status = 403
    default_code = "sso_refused"


class SsoBadRequest(SsoRefused):
    """Malformed input (not XML, a DOCTYPE, missing parameters)."""

    status = 400
    default_code = "sso_malformed"

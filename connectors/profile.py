"""What an IdP says about a person, as either protocol maps it: the fields
an account is made from, and everything received, for *Test connection*."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    email: str | None = None
    # OIDC: the IdP's email_verified (absent is False). SAML has no such
    # statement; its service decides.
    email_verified: bool = False
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    # Every attribute or claim received, as text values by name.
    received: dict[str, list[str]] = field(default_factory=dict)

"""SQLAlchemy models. Every row belongs to a workspace."""

from idp.models.audit import AuditEvent
from idp.models.credentials import (
    RecoveryCode,
    TotpSecret,
    WebAuthnChallenge,
    WebAuthnCredential,
)
from idp.models.sessions import LoginThrottle, Session
from idp.models.sso import (
    FederatedIdentity,
    SamlAssertionSeen,
    SsoConnection,
    SsoDomain,
    SsoRequest,
)
from idp.models.users import EmailToken, Invitation, User
from idp.models.workspaces import (
    DomainAllowEntry,
    IpAllowEntry,
    SecurityPolicy,
    Workspace,
)

__all__ = [
    "AuditEvent",
    "DomainAllowEntry",
    "EmailToken",
    "FederatedIdentity",
    "Invitation",
    "IpAllowEntry",
    "LoginThrottle",
    "RecoveryCode",
    "SamlAssertionSeen",
    "SecurityPolicy",
    "Session",
    "SsoConnection",
    "SsoDomain",
    "SsoRequest",
    "TotpSecret",
    "User",
    "WebAuthnChallenge",
    "WebAuthnCredential",
    "Workspace",
]

"""SQLAlchemy models. Every row belongs to a workspace."""

from idp.models.audit import AuditEvent
from idp.models.credentials import (
    RecoveryCode,
    TotpSecret,
    WebAuthnChallenge,
    WebAuthnCredential,
)
from idp.models.sessions import LoginThrottle, Session
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
    "Invitation",
    "IpAllowEntry",
    "LoginThrottle",
    "RecoveryCode",
    "SecurityPolicy",
    "Session",
    "TotpSecret",
    "User",
    "WebAuthnChallenge",
    "WebAuthnCredential",
    "Workspace",
]

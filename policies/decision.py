from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(str, Enum):
    DENY = "deny"
    REAUTHENTICATE = "reauthenticate"
    REQUIRE_MFA = "require_mfa"
    ENROLL_MFA = "enroll_mfa"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    # snake_case, shared by tests, the audit log and the message shown.
    reason: str

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(Outcome.DENY, reason)

    @classmethod
    def reauthenticate(cls, reason: str) -> Decision:
        return cls(Outcome.REAUTHENTICATE, reason)

    @classmethod
    def require_mfa(cls, reason: str) -> Decision:
        return cls(Outcome.REQUIRE_MFA, reason)

    @classmethod
    def enroll_mfa(cls, reason: str) -> Decision:
        return cls(Outcome.ENROLL_MFA, reason)

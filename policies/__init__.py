"""The policy pipeline: a plain context and the workspace policy in, a
decision (or nothing) out. Nothing here imports Flask or the database."""

from policies.concurrent_sessions import sessions_to_end
from policies.context import (
    IPNetwork,
    PolicyContext,
    SessionFacts,
    UserFacts,
    WorkspacePolicy,
)
from policies.decision import Decision, Outcome
from policies.ip_allowlist import canonical_address, canonical_network, ip_allowed
from policies.mfa import session_has_mfa
from policies.runner import PIPELINE, TIME_LIMITS, evaluate
from policies.time_limits import past_lifetime

__all__ = [
    "PIPELINE",
    "TIME_LIMITS",
    "Decision",
    "IPNetwork",
    "Outcome",
    "PolicyContext",
    "SessionFacts",
    "UserFacts",
    "WorkspacePolicy",
    "canonical_address",
    "canonical_network",
    "evaluate",
    "ip_allowed",
    "past_lifetime",
    "session_has_mfa",
    "sessions_to_end",
]

"""The policy pipeline: a plain context and the workspace policy in, a
decision (or nothing) out. Nothing here imports Flask or the database."""

from policies.context import PolicyContext, SessionFacts, UserFacts, WorkspacePolicy
from policies.decision import Decision, Outcome
from policies.runner import CHECK, SIGN_IN, evaluate

__all__ = [
    "CHECK",
    "SIGN_IN",
    "Decision",
    "Outcome",
    "PolicyContext",
    "SessionFacts",
    "UserFacts",
    "WorkspacePolicy",
    "evaluate",
]

"""What a person is told for each reason code a policy or sign-in gives.
Tests, the audit log and these messages all key on the same codes."""

from __future__ import annotations

GENERIC_FAILURE = "The email or password is incorrect."

MESSAGES = {
    "account_disabled": "This account is disabled. Ask an admin of the workspace to enable it.",
    "account_not_active": "This account has not been set up yet. Use the link in your invitation.",
    "account_deleted": GENERIC_FAILURE,
    "ip_not_allowed": "Your network address is not on this workspace's list of allowed addresses. Connect from an allowed network, or ask an admin of the workspace.",
    "ip_unknown": "Your network address could not be determined, and this workspace only allows listed addresses. Ask an admin of the workspace.",
    "idle_timeout": "You were signed out after a period of inactivity. Sign in again.",
    "relogin_required": "Your workspace asks you to sign in again every few days. Sign in again.",
    "mfa_required": "Your workspace now requires multi-factor authentication. Sign in again to continue.",
    "mfa_enrollment_required": "Your workspace requires multi-factor authentication. Set up a second factor to continue.",
    "mfa_reset": "An admin reset your multi-factor authentication, which signed you out. Sign in again.",
    "role_not_allowed": "Your role in this workspace does not give access to this page.",
    "proxy_not_trusted": "This request reached Portcullis through a proxy it does not trust. Ask the operator to add the proxy's address to gateway.trusted_proxies.",
    "host_not_protected": "This site is not one that Portcullis protects. Ask the operator to add it to the protected hosts.",
    "session_limit": "You were signed out because you signed in somewhere else and your workspace limits how many sessions you may have at once.",
    "not_signed_in": "Sign in to continue.",
    "sso_required": "Your workspace signs you in through your company's single sign-on, not with a password.",
    "sso_removed": "An admin removed your workspace's single sign-on, which signed you out. Sign in with your password, or use Forgot password? to set one.",
}


# Why a session may have ended, as the portal and the gateway pass it to
# /login: the sign-in page explains these, and ignores any other code.
SESSION_ENDED = frozenset(
    {
        "idle_timeout",
        "relogin_required",
        "mfa_required",
        "mfa_reset",
        "session_limit",
        "account_disabled",
        "account_not_active",
        "sso_removed",
    }
)


def message(code: str) -> str:
    return MESSAGES.get(code, "Access was refused by the workspace's security policy.")

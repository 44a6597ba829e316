"""Passkeys and security keys (py_webauthn): registration, sign-in, and the
relying-party checks we own (MFA-2, MFA-3).

Contract:

- ``registration_options(ctx, user, kind) -> str``: JSON for
  ``PublicKeyCredential.parseCreationOptionsFromJSON``; kind is "passkey"
  (discoverable, user verification required) or "security_key".
- ``register(ctx, user, kind, credential_json, name) -> WebAuthnCredential``.
- ``authentication_options(user_or_none) -> str``: JSON for
  ``parseRequestOptionsFromJSON``; None: a passkey sign-in (no allow list).
- ``authenticate(ctx, user_or_none, credential_json) -> Authenticated``:
  the account and credential that signed, and whether the person was
  verified; raises MfaFailed. With a user: only that user's credentials.
- ``rename(ctx, user, credential_id, name)``, ``delete(ctx, user,
  credential_id)`` (refuses the last factor while MFA is forced).
"""

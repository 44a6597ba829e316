"""Authenticator apps (RFC 6238 with pyotp): set-up, confirmation, codes.

Contract (the sign-in step and the portal call these):

- ``begin_setup(ctx, user) -> Setup``: a new secret for the member (an
  unconfirmed row replacing any earlier unconfirmed one), with its
  ``otpauth://`` URI and the QR code as SVG markup.
- ``confirm_setup(ctx, user, code) -> None``: enables the app when the code
  verifies (MFA-1 rules); raises MfaFailed otherwise. Audited.
- ``verify(ctx, user, code) -> None``: the MFA step; raises MfaFailed (or
  Throttled). Each code works once, even across parallel requests.
- ``remove(ctx, user) -> None``: refuses the last factor while MFA is
  forced (mfa.ensure_may_remove). Audited.
"""

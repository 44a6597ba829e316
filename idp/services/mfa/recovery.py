"""Recovery codes: ten single-use codes, shown once, stored hashed.

Contract:

- ``issue(ctx, user) -> list[str]``: ten new codes; every earlier one dies.
  Audited.
- ``use(ctx, user, code) -> None``: spends one code at the MFA step (once,
  even across parallel requests); raises MfaFailed (or Throttled). Audited,
  and the member is told by email.
- ``remaining(user_id) -> int``.
"""

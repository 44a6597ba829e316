"""Small primitives every service shares: random tokens, digests, comparison,
the normal form of an email address."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from email_validator import EmailNotValidError, validate_email

# 256 bits: well past the 128 that ASVS 6.4.1 and 7.2.3 ask for.
TOKEN_BYTES = 32
MAX_EMAIL_LENGTH = 320


class InvalidEmail(ValueError):
    """The text is not one plain email address."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What the database keeps of a token: a leak of it yields no live token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def secrets_equal(a: str | bytes, b: str | bytes) -> bool:
    """The one comparison for secrets, codes and digests."""
    if isinstance(a, str):
        a = a.encode("utf-8", "surrogatepass")
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(a, b)


def normalize_email(text: str) -> str:
    """Trim, lower-case and drop one trailing dot from the domain, without
    checking the syntax: the key under which sign-in failures are counted."""
    email = text.strip().lower()
    email = email.removesuffix(".")
    return email[:MAX_EMAIL_LENGTH]


def parse_email(text: str) -> str:
    """The normal form of one valid address, or InvalidEmail."""
    if len(text) > MAX_EMAIL_LENGTH + 2:
        raise InvalidEmail("That email address is too long.")
    email = normalize_email(text)
    try:
        # test_environment admits the reserved "test" domain, which local
        # installations and test suites use; other reserved names stay out.
        checked = validate_email(
            email,
            check_deliverability=False,
            allow_smtputf8=True,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        raise InvalidEmail(
            "Enter a valid email address, such as name@example.com."
        ) from exc
    # email-validator returns the domain in its IDNA-normalised form; keep our
    # lower-cased spelling so the key does not change under the person's feet.
    return checked.normalized.lower()


def email_domain(email: str) -> str:
    return email.rpartition("@")[2]

import pytest

from idp.security import (
    InvalidEmail,
    new_token,
    normalize_email,
    parse_email,
    secrets_equal,
    token_digest,
)


def test_tokens_are_long_random_and_stored_as_digests():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 for t in tokens)
    t = next(iter(tokens))
    assert token_digest(t) != t and len(token_digest(t)) == 64


def test_secrets_equal():
    assert secrets_equal("abc", "abc")
    assert not secrets_equal("abc", "abd")
    assert secrets_equal(b"abc", "abc")


@pytest.mark.parametrize(
    ("typed", "normal"),
    [
        ("user@example.com", "user@example.com"),
        ("  User@EXAMPLE.COM ", "user@example.com"),
        ("user@example.com.", "user@example.com"),
    ],
)
def test_email_normal_form(typed, normal):
    assert parse_email(typed) == normal
    assert normalize_email(typed) == normal


@pytest.mark.parametrize(
    "typed",
    [
        "user@example.com@evil.example",
        "no-at-sign",
        "@example.com",
        "user@",
        "a b@example.com",
        "user@exa mple.com",
        "x" * 400 + "@example.com",
        "user@exa\nmple.com",
        "user@localhost",
    ],
    ids=[
        "two-ats",
        "no-at",
        "no-local",
        "no-domain",
        "space-local",
        "space-domain",
        "too-long",
        "newline",
        "no-dot",
    ],
)
def test_malformed_emails_are_refused(typed):
    with pytest.raises(InvalidEmail):
        parse_email(typed)

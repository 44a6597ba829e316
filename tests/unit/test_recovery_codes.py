"""Recovery codes: their form, storage as hashes, single use, the email and
the shared MFA throttle."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import AuditEvent, RecoveryCode, User
from idp.services import mfa
from idp.services.context import Client, Context
from idp.services.errors import Conflict, Throttled
from idp.services.mfa import recovery
from tests.conftest import TOTP_SECRET, give_authenticator, make_user, make_workspace

ANN = "ann@example.com"
SHAPE = re.compile(r"[0-9a-hjkmnp-tv-z]{6}-[0-9a-hjkmnp-tv-z]{6}")


@pytest.fixture
def ann(app, app_ctx) -> User:  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, ANN, name="Ann Example")
    give_authenticator(app, ANN)
    return db.session.scalar(sa.select(User).where(User.email == ANN))


@pytest.fixture
def ctx() -> Context:
    return Context.anonymous(Client(ip="198.51.100.9"))


@pytest.fixture
def codes(ann, ctx) -> list[str]:  # type: ignore[no-untyped-def]
    return recovery.issue(Context.for_user(ann, Client()), ann)


def refused(call, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(mfa.MfaFailed) as caught:
        call()
    assert caught.value.code == reason


def events(action: str) -> list[AuditEvent]:
    return list(
        db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
    )


# --- the codes ------------------------------------------------------------------


def test_a_code_has_sixty_random_bits_in_a_readable_alphabet():
    assert len(recovery.ALPHABET) == len(set(recovery.ALPHABET)) == 32
    assert not set("ilou") & set(recovery.ALPHABET)
    assert math.log2(len(recovery.ALPHABET)) * recovery.LENGTH == 60
    samples = {recovery.new_code() for _ in range(2000)}
    assert len(samples) == 2000
    assert all(SHAPE.fullmatch(code) for code in samples)
    # Every character of the alphabet turns up: nothing is left out.
    assert set("".join(samples)) - {"-"} == set(recovery.ALPHABET)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("ab12cd-ef34gh", "ab12cdef34gh"),
        ("AB12CD-EF34GH", "ab12cdef34gh"),
        (" ab12 cd ef34 gh ", "ab12cdef34gh"),
        ("ab12cdef34gh", "ab12cdef34gh"),
        ("ab12cd\u2013ef34gh", "ab12cdef34gh"),
        ("ab12cd--ef34gh", "ab12cdef34gh"),
        ("ab1ocd-ef3igh", "ab10cdef31gh"),
        ("abL2cd-ef34gh", "ab12cdef34gh"),
    ],
    ids=[
        "as shown",
        "upper case",
        "spaces",
        "no dash",
        "en dash",
        "two dashes",
        "o and i as digits",
        "L as one",
    ],
)
def test_typing_variations_normalise_to_the_same_code(typed, expected):
    assert recovery.normalize(typed) == expected


@pytest.mark.parametrize(
    "typed",
    ["", "ab12cd-ef34g", "ab12cd-ef34ghj", "ab12cd_ef34gh", "ab12cd-ef34gü", "u" * 12],
    ids=["empty", "short", "long", "underscore", "umlaut", "letter u"],
)
def test_what_cannot_be_a_code_does_not_normalise(typed):
    assert recovery.normalize(typed) is None


# --- issuing --------------------------------------------------------------------


def test_ten_codes_are_issued_and_kept_only_as_hashes(ann, codes):
    assert len(codes) == len(set(codes)) == 10
    assert all(SHAPE.fullmatch(code) for code in codes)
    stored = db.session.scalars(
        sa.select(RecoveryCode.code_hash).where(RecoveryCode.user_id == ann.id)
    ).all()
    expected = {recovery.digests(ann.id, code.replace("-", ""))[0] for code in codes}
    assert set(stored) == expected
    # Keyed: a plain hash of a code is nowhere in the table.
    plain = {hashlib.sha256(c.replace("-", "").encode()).hexdigest() for c in codes}
    assert not set(stored) & plain
    assert recovery.remaining(ann.id) == 10
    (event,) = events("mfa.recovery_issued")
    assert event.details == {"count": 10} and event.actor_label == ANN


def test_new_codes_replace_every_old_one(ann, ctx, codes):
    again = recovery.issue(Context.for_user(ann, Client()), ann)

    assert not set(again) & set(codes)
    assert recovery.remaining(ann.id) == 10
    refused(lambda: recovery.use(ctx, ann, codes[0]), "recovery_invalid")
    recovery.use(ctx, ann, again[0])


def test_no_codes_without_a_factor(app, app_ctx):
    ws = make_workspace(app)
    make_user(app, ws, "bob@example.com")
    bob = db.session.scalar(sa.select(User).where(User.email == "bob@example.com"))

    with pytest.raises(Conflict) as caught:
        recovery.issue(Context.for_user(bob, Client()), bob)

    assert caught.value.code == "no_factor"
    assert recovery.remaining(bob.id) == 0


# --- using ----------------------------------------------------------------------


def test_a_code_works_once(ann, ctx, codes, clock):
    recovery.use(ctx, ann, codes[3])

    assert recovery.remaining(ann.id) == 9
    refused(lambda: recovery.use(ctx, ann, codes[3]), "recovery_invalid")
    used = db.session.scalar(
        sa.select(RecoveryCode.used_at).where(RecoveryCode.used_at.is_not(None))
    )
    assert used == clock.now


def test_a_code_is_accepted_however_it_is_typed(ann, ctx, codes):
    recovery.use(ctx, ann, codes[0].upper())
    recovery.use(ctx, ann, " ".join(codes[1].replace("-", "")))
    assert recovery.remaining(ann.id) == 8


def test_a_code_of_another_member_is_refused(app, ann, ctx, codes):
    ws = make_workspace(app, "Bravo")
    make_user(app, ws, "bob@example.com")
    give_authenticator(app, "bob@example.com")
    bob = db.session.scalar(sa.select(User).where(User.email == "bob@example.com"))

    refused(lambda: recovery.use(ctx, bob, codes[0]), "recovery_invalid")
    assert recovery.remaining(ann.id) == 10


@pytest.mark.parametrize(
    "typed",
    ["", "000000-000000", "x" * 64, "ab12cd-ef34g\x00", "' OR 1=1 --"],
    ids=["empty", "well formed, wrong", "long", "nul", "sql"],
)
def test_wrong_codes_are_refused_and_audited(ann, ctx, codes, typed):
    with pytest.raises(mfa.MfaFailed) as caught:
        recovery.use(ctx, ann, typed)
    assert caught.value.code in ("recovery_invalid", "recovery_malformed")
    (event,) = events("mfa.failure")
    assert event.reason == caught.value.code and event.actor_label == ANN
    assert recovery.remaining(ann.id) == 10


def test_use_is_audited_and_the_member_is_told_by_email(ann, ctx, codes, mailer):
    recovery.use(ctx, ann, codes[0])

    (event,) = events("mfa.recovery_used")
    assert (event.actor_label, event.client_ip) == (ANN, "198.51.100.9")
    assert event.details == {"remaining": 9}
    mail = mailer.last_to(ANN)
    assert "recovery code was used" in mail.subject
    assert "198.51.100.9" in mail.text and "9 of your codes are left" in mail.text
    assert mail.link == "http://localhost/portal/privacy-security"
    assert codes[0] not in mail.text


def test_a_mail_failure_does_not_undo_the_sign_in(ann, ctx, codes, mailer):
    mailer.fail_with = "connection refused"
    recovery.use(ctx, ann, codes[0])
    assert recovery.remaining(ann.id) == 9
    assert len(events("mfa.recovery_used")) == 1


def test_the_last_code_says_so(ann, ctx, codes, mailer):
    for code in codes:
        recovery.use(ctx, ann, code)
    assert recovery.remaining(ann.id) == 0
    assert mfa.factors(ann.id).recovery_left == 0
    assert "0 of your codes are left" in mailer.last_to(ANN).text
    assert "Make a new set soon" in mailer.last_to(ANN).text


LIMITED: dict[str, Any] = {"mfa": {"failure_limit": 3, "lockout_seconds": 60}}


@pytest.mark.parametrize("overrides", [LIMITED], ids=["limit 3"])
def test_codes_share_the_mfa_throttle(ann, ctx, codes, clock, overrides):
    from idp.services.mfa import totp
    from tests.unit.test_totp import wrong

    refused(lambda: totp.verify(ctx, ann, wrong(clock, TOTP_SECRET)), "totp_invalid")
    for _ in range(2):
        refused(lambda: recovery.use(ctx, ann, "000000-000000"), "recovery_invalid")

    with pytest.raises(Throttled):
        recovery.use(ctx, ann, codes[0])
    assert recovery.remaining(ann.id) == 10

    clock.advance(seconds=61)
    recovery.use(ctx, ann, codes[0])

"""The authenticator app service: set-up, the code rules of MFA-1, the
per-member throttle, removal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import segno
import sqlalchemy as sa

from idp.db import db
from idp.models import AuditEvent, SecurityPolicy, TotpSecret, User
from idp.security import normalize_email
from idp.services import mfa
from idp.services.context import Client, Context
from idp.services.errors import Conflict, Forbidden, InvalidInput, NotFound, Throttled
from idp.services.mfa import totp
from tests.conftest import give_authenticator, make_user, make_workspace

ANN = "ann@example.com"


@pytest.fixture
def ann(app, app_ctx) -> User:  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, ANN)
    return db.session.scalar(sa.select(User).where(User.email == ANN))


@pytest.fixture
def ctx() -> Context:
    """A sign-in in progress: nobody is signed in yet."""
    return Context.anonymous(Client(ip="198.51.100.9"))


@pytest.fixture
def secret(app, ann) -> str:  # type: ignore[no-untyped-def]
    return give_authenticator(app, ANN)


def code_at(clock, secret: str, seconds: int = 0) -> str:  # type: ignore[no-untyped-def]
    return pyotp.TOTP(secret).at(clock.now + timedelta(seconds=seconds))


def wrong(clock, secret: str) -> str:  # type: ignore[no-untyped-def]
    """Six digits that are no code of the window."""
    good = {code_at(clock, secret, s) for s in (-30, 0, 30)}
    return next(c for c in ("111111", "222222", "333333", "444444") if c not in good)


def row(user: User) -> TotpSecret:
    db.session.expire_all()
    found = db.session.get(TotpSecret, user.id)
    assert found is not None
    return found


def failures(reason: str) -> int:
    return db.session.scalar(
        sa.select(sa.func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "mfa.failure", AuditEvent.reason == reason)
    )


def refused(call, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(mfa.MfaFailed) as caught:
        call()
    assert caught.value.code == reason
    assert caught.value.status == 401


# --- set-up -------------------------------------------------------------------


def test_setup_uri_carries_the_defaults_issuer_and_email(ann, ctx):
    setup = totp.begin_setup(ctx, ann)

    parts = urlsplit(setup.uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == f"/Portcullis:{ANN}"
    query = parse_qs(parts.query)
    assert query == {"secret": [setup.secret], "issuer": ["Portcullis"]}
    parsed = pyotp.parse_uri(setup.uri)
    assert (parsed.digits, parsed.interval, parsed.digest().name) == (6, 30, "sha1")
    # 32 base32 characters: 160 bits, as RFC 4226 recommends.
    assert len(setup.secret) == 32
    assert setup.grouped_secret.replace(" ", "") == setup.secret


@pytest.mark.parametrize(
    "overrides",
    [{"mfa": {"totp_issuer": "Acme: Sign-in"}}],
    ids=["issuer with a colon"],
)
def test_issuer_comes_from_the_settings(ann, ctx, overrides):
    setup = totp.begin_setup(ctx, ann)
    assert unquote(urlsplit(setup.uri).path) == f"/Acme Sign-in:{ANN}"
    assert parse_qs(urlsplit(setup.uri).query)["issuer"] == ["Acme Sign-in"]


@pytest.mark.parametrize(
    "overrides", [{"mfa": {"totp_issuer": "<b>Acme</b>"}}], ids=["markup"]
)
def test_an_issuer_with_markup_is_escaped_in_the_svg(ann, ctx, overrides):
    setup = totp.begin_setup(ctx, ann)
    assert "<b>" not in setup.qr_svg
    assert "&lt;b&gt;Acme&lt;/b&gt;" in setup.qr_svg


def test_qr_code_is_inline_svg_of_the_uri_without_style(ann, ctx):
    setup = totp.begin_setup(ctx, ann)

    assert setup.qr_svg.startswith("<svg")
    assert "style" not in setup.qr_svg.lower()
    assert "script" not in setup.qr_svg.lower()
    assert setup.secret not in setup.qr_svg
    expected = segno.make(setup.uri, error="m", micro=False)
    assert f'width="{expected.symbol_size(scale=5)[0]}"' in setup.qr_svg


def test_secret_is_encrypted_at_rest(app, ann, ctx):
    setup = totp.begin_setup(ctx, ann)

    stored = row(ann).secret_encrypted
    assert setup.secret not in stored
    sealed = app.extensions["idp_keys"].encryption
    assert sealed.decrypt(stored.encode()).decode() == setup.secret


def test_a_new_setup_replaces_the_waiting_one(ann, ctx, clock):
    first = totp.begin_setup(ctx, ann)
    second = totp.begin_setup(ctx, ann)

    assert first.secret != second.secret
    refused(
        lambda: totp.confirm_setup(ctx, ann, code_at(clock, first.secret)),
        "totp_invalid",
    )
    totp.confirm_setup(ctx, ann, code_at(clock, second.secret))
    assert row(ann).confirmed_at == clock.now


def test_confirming_enables_it_and_spends_the_code(ann, ctx, clock):
    setup = totp.begin_setup(ctx, ann)
    assert not mfa.factors(ann.id).totp
    code = code_at(clock, setup.secret)

    totp.confirm_setup(ctx, ann, code)

    assert mfa.factors(ann.id).totp
    assert row(ann).last_step == pyotp.TOTP(setup.secret).timecode(clock.now)
    refused(lambda: totp.verify(ctx, ann, code), "totp_replayed")
    (event,) = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.totp_enabled")
    )
    assert (event.actor_label, event.target_label) == (ANN, ANN)


def test_a_wrong_code_leaves_the_setup_waiting(ann, ctx, clock):
    setup = totp.begin_setup(ctx, ann)

    refused(
        lambda: totp.confirm_setup(ctx, ann, code_at(clock, setup.secret, 90)),
        "totp_invalid",
    )

    assert row(ann).confirmed_at is None
    assert totp.pending_setup(ann) == setup
    assert failures("totp_invalid") == 1


def test_confirming_without_a_waiting_setup_is_refused(ann, ctx):
    with pytest.raises(InvalidInput) as caught:
        totp.confirm_setup(ctx, ann, "123456")
    assert caught.value.code == "totp_setup_missing"


def test_a_second_app_is_refused_while_one_is_set_up(ann, ctx, secret):
    with pytest.raises(Conflict):
        totp.begin_setup(ctx, ann)
    assert totp.pending_setup(ann) is None


# --- MFA-1: the code rules ------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-60, False), (-30, True), (0, True), (30, True), (60, False)],
    ids=["T-60", "T-30", "T", "T+30", "T+60"],
)
def test_one_step_of_tolerance_each_way(ann, ctx, clock, secret, offset, accepted):
    code = code_at(clock, secret, offset)
    if accepted:
        totp.verify(ctx, ann, code)
        assert row(ann).last_step == pyotp.TOTP(secret).timecode(clock.now) + (
            offset // 30
        )
    else:
        refused(lambda: totp.verify(ctx, ann, code), "totp_invalid")
        assert row(ann).last_step is None


def test_a_code_works_once(ann, ctx, clock, secret):
    code = code_at(clock, secret)
    totp.verify(ctx, ann, code)

    refused(lambda: totp.verify(ctx, ann, code), "totp_replayed")
    # Still refused later in its window, from another sign-in.
    clock.advance(seconds=25)
    other = Context.anonymous(Client(ip="203.0.113.50"))
    refused(lambda: totp.verify(other, ann, code), "totp_replayed")
    assert failures("totp_replayed") == 2


@pytest.mark.parametrize(
    ("first", "then"),
    [(30, 0), (30, -30), (0, -30), (30, 30)],
    ids=["T+30 then T", "T+30 then T-30", "T then T-30", "T+30 twice"],
)
def test_a_step_at_or_before_the_last_accepted_one_is_refused(
    ann, ctx, clock, secret, first, then
):
    totp.verify(ctx, ann, code_at(clock, secret, first))

    refused(
        lambda: totp.verify(ctx, ann, code_at(clock, secret, then)), "totp_replayed"
    )


def test_the_next_step_after_the_last_accepted_one_works(ann, ctx, clock, secret):
    totp.verify(ctx, ann, code_at(clock, secret))
    clock.advance(seconds=30)
    totp.verify(ctx, ann, code_at(clock, secret))


def test_a_code_with_a_leading_zero_works(ann, ctx, clock, secret):
    # Move the clock to a step whose code starts with 0 (one in ten do).
    while not code_at(clock, secret).startswith("0"):
        clock.advance(seconds=30)
    code = code_at(clock, secret)
    assert len(code) == 6

    totp.verify(ctx, ann, code)


def test_spaces_inside_a_typed_code_are_ignored(ann, ctx, clock, secret):
    code = code_at(clock, secret)
    totp.verify(ctx, ann, f" {code[:3]} {code[3:]} ")


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "12345",
        "1234567",
        "abcdef",
        "12345a",
        "12-345",
        "+12345",
        "１２３４５６",
        "١٢٣٤٥٦",
        "123456\u200b",
        "9" * 64,
    ],
    ids=[
        "empty",
        "five digits",
        "seven digits",
        "letters",
        "a letter",
        "dash",
        "sign",
        "full-width digits",
        "arabic-indic digits",
        "zero-width space",
        "long",
    ],
)
def test_anything_but_six_digits_is_refused(ann, ctx, clock, secret, typed):
    refused(lambda: totp.verify(ctx, ann, typed), "totp_malformed")
    assert failures("totp_malformed") == 1


def test_full_width_digits_of_the_right_code_are_refused(ann, ctx, clock, secret):
    # pyotp compares NFKC-normalised text; only ASCII digits reach it.
    wide = "".join(chr(ord(c) + 0xFEE0) for c in code_at(clock, secret))
    refused(lambda: totp.verify(ctx, ann, wide), "totp_malformed")


def test_a_member_without_an_app_is_refused(ann, ctx):
    refused(lambda: totp.verify(ctx, ann, "123456"), "totp_missing")


def test_a_failure_is_audited_under_the_member(ann, ctx, clock, secret):
    refused(lambda: totp.verify(ctx, ann, wrong(clock, secret)), "totp_invalid")
    (event,) = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.failure")
    )
    assert (event.actor_type, event.actor_label, event.outcome) == (
        "user",
        ANN,
        "failure",
    )
    assert event.client_ip == "198.51.100.9"
    assert event.workspace_id == ann.workspace_id


# --- the throttle -----------------------------------------------------------------

LIMITED: dict[str, Any] = {"mfa": {"failure_limit": 3, "lockout_seconds": 120}}


@pytest.mark.parametrize("overrides", [LIMITED], ids=["limit 3"])
def test_wrong_codes_lock_the_member_out_for_a_while(
    ann, ctx, clock, secret, overrides
):
    for _ in range(3):
        refused(lambda: totp.verify(ctx, ann, wrong(clock, secret)), "totp_invalid")

    with pytest.raises(Throttled) as caught:
        totp.verify(ctx, ann, code_at(clock, secret))
    assert caught.value.code == "mfa_throttled" and caught.value.status == 429
    assert 0 < caught.value.retry_after <= 120
    assert "2 minutes" in caught.value.message
    assert row(ann).last_step is None
    assert failures("mfa_throttled") == 1

    clock.advance(seconds=121)
    totp.verify(ctx, ann, code_at(clock, secret))


@pytest.mark.parametrize("overrides", [LIMITED], ids=["limit 3"])
def test_a_right_code_clears_the_count(ann, ctx, clock, secret, overrides):
    for _ in range(2):
        refused(lambda: totp.verify(ctx, ann, wrong(clock, secret)), "totp_invalid")
    totp.verify(ctx, ann, code_at(clock, secret))
    clock.advance(seconds=30)
    for _ in range(2):
        refused(lambda: totp.verify(ctx, ann, wrong(clock, secret)), "totp_invalid")
    totp.verify(ctx, ann, code_at(clock, secret))


@pytest.mark.parametrize("overrides", [LIMITED], ids=["limit 3"])
def test_the_count_is_per_member(app, ann, ctx, clock, secret, overrides):
    ws = make_workspace(app, "Bravo")
    make_user(app, ws, "bob@example.com")
    give_authenticator(app, "bob@example.com")
    bob = db.session.scalar(sa.select(User).where(User.email == "bob@example.com"))
    for _ in range(3):
        refused(lambda: totp.verify(ctx, ann, wrong(clock, secret)), "totp_invalid")

    totp.verify(ctx, bob, code_at(clock, secret))


@pytest.mark.parametrize("overrides", [LIMITED], ids=["limit 3"])
def test_setup_confirmation_is_throttled_too(ann, ctx, clock, overrides):
    setup = totp.begin_setup(ctx, ann)
    for _ in range(3):
        refused(
            lambda: totp.confirm_setup(ctx, ann, wrong(clock, setup.secret)),
            "totp_invalid",
        )
    with pytest.raises(Throttled):
        totp.confirm_setup(ctx, ann, code_at(clock, setup.secret))


def test_no_typed_email_reaches_the_members_count(ann):
    key = totp._throttle_key(ann)
    assert normalize_email(key) != key
    assert normalize_email(key.lower()) != key


# --- removal ----------------------------------------------------------------------


def test_removing_deletes_the_secret_and_is_audited(ann, ctx, secret):
    member = Context.for_user(ann, Client(ip="198.51.100.9"))
    totp.remove(member, ann)

    assert db.session.get(TotpSecret, ann.id) is None
    assert not mfa.factors(ann.id).totp
    (event,) = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.totp_removed")
    )
    assert event.actor_label == ANN


def test_removing_without_an_app_is_not_found(ann, ctx):
    totp.begin_setup(ctx, ann)
    with pytest.raises(NotFound):
        totp.remove(ctx, ann)
    # The waiting set-up is untouched.
    assert totp.pending_setup(ann) is not None


@pytest.mark.parametrize("mode", ["force", "force_except_sso"])
def test_the_last_factor_stays_while_mfa_is_forced(ann, ctx, secret, mode):
    db.session.get(SecurityPolicy, ann.workspace_id).mfa_mode = mode
    db.session.commit()

    with pytest.raises(Forbidden) as caught:
        totp.remove(ctx, ann)

    assert caught.value.code == "last_factor"
    assert mfa.factors(ann.id).totp


def test_an_unreadable_secret_is_a_clear_refusal(ann, ctx, secret):
    row(ann).secret_encrypted = "gAAAAAB-not-a-token"
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        totp.verify(ctx, ann, "123456")
    assert caught.value.code == "totp_key_missing"

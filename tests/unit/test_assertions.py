"""The gateway's signed assertion: what it claims, who can verify it, how
long the cache reuses it, and that rotation keeps old assertions valid."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
)
from joserfc.jwk import KeySet

from idp.keys import ensure_keys, load_keys, rotate_keys
from idp.services.assertions import LIFETIME_SECONDS, Claims, Signer, signer

ISSUER = "https://auth.example.com"
APP_A = "https://app.example.com"
APP_B = "https://billing.example.com"
CLAIMS = Claims(
    session_id="8a0c1a52-0000-4000-8000-000000000001",
    audience=APP_A,
    user_id="5b1d2c3e-0000-4000-8000-000000000002",
    email="ann@example.com",
    name="Ann Admin",
    role="admin",
    workspace="acme",
    amr=("pwd",),
    auth_time=1_700_000_000,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @property
    def stamp(self) -> int:
        return int(self.now.timestamp())


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    ensure_keys(folder)
    return folder


@pytest.fixture
def fake() -> Clock:
    return Clock()


@pytest.fixture
def make(keys: Path, fake: Clock):  # type: ignore[no-untyped-def]
    def _make(**kwargs) -> Signer:  # type: ignore[no-untyped-def]
        return Signer(load_keys(keys), issuer=ISSUER, clock=fake, **kwargs)

    return _make


def verify(token: str, signer_: Signer, *, audience: str, now: int) -> jwt.Token:
    """A downstream app's verification: our JWKS, ES256 only, issuer,
    audience and lifetime checked."""
    decoded = jwt.decode(
        token, KeySet.import_key_set(signer_.jwks()), algorithms=["ES256"]
    )
    jwt.JWTClaimsRegistry(
        now=now,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded


def test_assertion_is_es256_with_kid_and_every_claim(make, fake):
    signer_ = make()
    token = verify(signer_.assertion(CLAIMS), signer_, audience=APP_A, now=fake.stamp)
    assert token.header == {"alg": "ES256", "kid": signer_.kid, "typ": "JWT"}
    claims = dict(token.claims)
    assert len(claims.pop("jti")) >= 22
    assert claims == {
        "iss": ISSUER,
        "sub": CLAIMS.user_id,
        "aud": APP_A,
        "email": "ann@example.com",
        "name": "Ann Admin",
        "role": "admin",
        "workspace": "acme",
        "amr": ["pwd"],
        "auth_time": CLAIMS.auth_time,
        "iat": fake.stamp,
        "exp": fake.stamp + LIFETIME_SECONDS,
    }


def test_audience_of_app_a_is_refused_by_app_b(make, fake):
    """SECURITY 9.2.x: app B's claims registry refuses app A's assertion."""
    signer_ = make()
    token = signer_.assertion(CLAIMS)
    verify(token, signer_, audience=APP_A, now=fake.stamp)
    with pytest.raises(InvalidClaimError) as refused:
        verify(token, signer_, audience=APP_B, now=fake.stamp)
    assert refused.value.claim == "aud"


@pytest.mark.parametrize("age,valid", [(59, True), (60, False), (600, False)])
def test_assertion_lives_sixty_seconds(make, fake, age, valid):
    signer_ = make()
    token = signer_.assertion(CLAIMS)
    if valid:
        verify(token, signer_, audience=APP_A, now=fake.stamp + age)
        return
    with pytest.raises(ExpiredTokenError):
        verify(token, signer_, audience=APP_A, now=fake.stamp + age)


def test_jwks_holds_public_keys_only(make):
    published = make().jwks()["keys"]
    assert len(published) == 1
    assert "d" not in published[0]
    assert published[0]["use"] == "sig" and published[0]["alg"] == "ES256"


def _unsigned(token: str, **header: str) -> str:
    """The token's payload under another header, with no signature."""
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
    return f"{head.decode()}.{token.split('.')[1]}."


@pytest.mark.parametrize(
    "header",
    [{"alg": "none"}, {"alg": "HS256", "kid": "x"}, {"alg": "ES256"}],
    ids=["none", "hs256", "unsigned-es256"],
)
def test_a_verifier_pinned_to_es256_refuses_other_forms(make, fake, header):
    signer_ = make()
    forged = _unsigned(signer_.assertion(CLAIMS), **header)
    with pytest.raises(JoseError):
        verify(forged, signer_, audience=APP_A, now=fake.stamp)


def test_another_key_does_not_verify(make, fake, tmp_path):
    other_folder = tmp_path / "other"
    ensure_keys(other_folder)
    other = Signer(load_keys(other_folder), issuer=ISSUER, clock=fake)
    token = other.assertion(CLAIMS)
    header = jwt.decode(token, KeySet.import_key_set(other.jwks())).header
    assert header["kid"] == other.kid
    ours = make()
    # Same kid as ours, so only the signature can tell them apart.
    relabelled = KeySet.import_key_set(
        {"keys": [{**ours.jwks()["keys"][0], "kid": other.kid}]}
    )
    with pytest.raises(BadSignatureError):
        jwt.decode(token, relabelled, algorithms=["ES256"])


# --- the cache ---------------------------------------------------------------


def test_reused_while_more_than_30_seconds_remain(make, fake):
    signer_ = make()
    first = signer_.assertion(CLAIMS)
    fake.advance(29)
    assert signer_.assertion(CLAIMS) == first
    fake.advance(1)
    second = signer_.assertion(CLAIMS)
    assert second != first
    claims = verify(second, signer_, audience=APP_A, now=fake.stamp).claims
    assert claims["iat"] == fake.stamp


@pytest.mark.parametrize(
    "change",
    [
        {"role": "read_only"},
        {"name": "Ann Renamed"},
        {"email": "ann2@example.com"},
        {"audience": APP_B},
        {"session_id": "8a0c1a52-0000-4000-8000-000000000009"},
        {"amr": ("pwd", "otp")},
        {"auth_time": CLAIMS.auth_time + 1},
        {"workspace": "other"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_changed_claim_is_a_new_assertion(make, fake, change):
    signer_ = make()
    first = signer_.assertion(CLAIMS)
    changed = replace(CLAIMS, **change)
    second = signer_.assertion(changed)
    assert second != first
    audience = changed.audience
    claims = verify(second, signer_, audience=audience, now=fake.stamp).claims
    key, value = next(iter(change.items()))
    claim = {"audience": "aud", "session_id": None}.get(key, key)
    if claim is not None:
        assert claims[claim] == (list(value) if isinstance(value, tuple) else value)


def test_a_clock_set_back_never_gets_an_assertion_from_the_future(make, fake):
    signer_ = make()
    first = signer_.assertion(CLAIMS)
    fake.advance(-5)
    second = signer_.assertion(CLAIMS)
    assert second != first
    assert (
        verify(second, signer_, audience=APP_A, now=fake.stamp).claims["iat"]
        == fake.stamp
    )


def test_cache_is_bounded_and_drops_what_it_cannot_reuse(make, fake):
    signer_ = make(max_entries=3)
    for n in range(10):
        signer_.assertion(replace(CLAIMS, session_id=str(n)))
    assert signer_.cached() == 3
    fake.advance(30)
    signer_.assertion(replace(CLAIMS, session_id="fresh"))
    assert signer_.cached() == 1


def test_cache_is_safe_across_threads(make, fake):
    signer_ = make(max_entries=4)
    variants = [replace(CLAIMS, session_id=str(n), role="admin") for n in range(6)]
    results: list[tuple[Claims, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work(offset: int) -> None:
        try:
            start.wait()
            for n in range(60):
                claims = variants[(offset + n) % len(variants)]
                token = signer_.assertion(claims)
                with lock:
                    results.append((claims, token))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 480
    assert signer_.cached() <= 4
    keys = KeySet.import_key_set(signer_.jwks())
    for claims, token in results[::7]:
        decoded = jwt.decode(token, keys, algorithms=["ES256"])
        assert decoded.claims["aud"] == claims.audience


# --- rotation and the application's clock -------------------------------------


def test_after_rotation_new_key_signs_and_old_assertions_verify(keys, fake):
    before = Signer(load_keys(keys), issuer=ISSUER, clock=fake)
    old = before.assertion(CLAIMS)
    rotate_keys(keys)
    after = Signer(load_keys(keys), issuer=ISSUER, clock=fake)
    new = after.assertion(CLAIMS)
    assert after.kid != before.kid
    assert [k["kid"] for k in after.jwks()["keys"]] == [after.kid, before.kid]
    assert jwt.decode(new, KeySet.import_key_set(after.jwks())).header["kid"] == (
        after.kid
    )
    verify(old, after, audience=APP_A, now=fake.stamp)
    verify(new, after, audience=APP_A, now=fake.stamp)


def test_signer_of_the_app_uses_the_apps_clock_and_public_url(app_ctx, clock):
    token = signer().assertion(CLAIMS)
    claims = jwt.decode(token, KeySet.import_key_set(signer().jwks())).claims
    assert claims["iat"] == int(clock.now.timestamp())
    assert claims["iss"] == "http://localhost"
    clock.advance(seconds=30)
    assert signer().assertion(CLAIMS) != token


def test_a_key_ring_without_signing_keys_is_refused(keys):
    ring = load_keys(keys)
    with pytest.raises(ValueError):
        Signer(replace(ring, signing=()))

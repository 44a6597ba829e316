"""Passkeys and security keys, the service: the signature counter (MFA-2),
the relying party id and origins (MFA-3), and every relying-party check we
own rather than py_webauthn: challenges (once, in time, for this account
and ceremony), user handles, duplicate credentials, user verification.

The answers come from ``SoftKey``, a software authenticator: a real P-256
key whose registration ("none" attestation) and assertions are built byte
by byte as an authenticator and browser would, so py_webauthn verifies
them for real. Its ``create``/``get`` keyword arguments are the attacks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from idp.db import db
from idp.models import AuditEvent, SecurityPolicy, User, WebAuthnChallenge
from idp.models import WebAuthnCredential as Credential
from idp.services.context import Client, Context
from idp.services.errors import Forbidden, InvalidInput, NotFound
from idp.services.mfa import MfaFailed, webauthn
from idp.services.mfa.webauthn import RegistrationFailed
from tests.conftest import make_user, make_workspace

# --- a software authenticator ------------------------------------------------

UP, UV, AT = 0x01, 0x04, 0x40
SAME = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftKey:
    """One credential on a software authenticator. ``counting`` False is a
    synced passkey, whose counter is always 0."""

    origin: str = "http://localhost"
    verifies_user: bool = True
    counting: bool = True
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    user_handle: bytes | None = None
    count: int = 0

    def cose_key(self) -> bytes:
        point = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: point.x.to_bytes(32, "big"),
                -3: point.y.to_bytes(32, "big"),
            }
        )

    def auth_data(self, rp_id: str, *, uv: bool, count: int, attested: bool) -> bytes:
        flags = UP | (UV if uv else 0) | (AT if attested else 0)
        data = (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([flags])
            + count.to_bytes(4, "big")
        )
        if attested:
            data += (
                bytes(16)  # AAGUID
                + len(self.credential_id).to_bytes(2, "big")
                + self.credential_id
                + self.cose_key()
            )
        return data

    def client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            }
        ).encode()

    def create(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool | None = None,
    ) -> str:
        """navigator.credentials.create(), then credential.toJSON()."""
        options = json.loads(options_json)
        self.user_handle = unb64(options["user"]["id"])
        client = self.client_data("webauthn.create", options["challenge"], origin)
        auth_data = self.auth_data(
            rp_id or options["rp"]["id"],
            uv=self.verifies_user if uv is None else uv,
            count=self.count,
            attested=True,
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps(
            {
                "id": b64(self.credential_id),
                "rawId": b64(self.credential_id),
                "type": "public-key",
                "authenticatorAttachment": "cross-platform",
                "clientExtensionResults": {},
                "response": {
                    "clientDataJSON": b64(client),
                    "attestationObject": b64(attestation),
                    "transports": ["usb", "nfc"],
                },
            }
        )

    def get(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool | None = None,
        count: int | None = None,
        user_handle: Any = SAME,
        kind: str = "webauthn.get",
    ) -> str:
        """navigator.credentials.get(), then credential.toJSON()."""
        options = json.loads(options_json)
        if count is None:
            if self.counting:
                self.count += 1
            count = self.count if self.counting else 0
        client = self.client_data(kind, options["challenge"], origin)
        auth_data = self.auth_data(
            rp_id or options["rpId"],
            uv=self.verifies_user if uv is None else uv,
            count=count,
            attested=False,
        )
        signed = auth_data + hashlib.sha256(client).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        handle = self.user_handle if user_handle is SAME else user_handle
        return json.dumps(
            {
                "id": b64(self.credential_id),
                "rawId": b64(self.credential_id),
                "type": "public-key",
                "authenticatorAttachment": "cross-platform",
                "clientExtensionResults": {},
                "response": {
                    "clientDataJSON": b64(client),
                    "authenticatorData": b64(auth_data),
                    "signature": b64(signature),
                    "userHandle": b64(handle) if handle else None,
                },
            }
        )


# --- fixtures and helpers -----------------------------------------------------

CLIENT = Client(ip="203.0.113.7", peer_ip="203.0.113.7", user_agent="pytest")
AUTH = "https://auth.example.com"
# MFA-3's relying party: the parent domain, and the one exact origin.
MFA_3 = {"public_url": AUTH, "webauthn": {"rp_id": "example.com"}}


@dataclass
class People:
    mia: User
    rob: User


@pytest.fixture
def people(app) -> Any:  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    mia = make_user(app, ws, "mia@example.com")
    rob = make_user(app, ws, "rob@example.com")
    with app.app_context():
        yield People(db.session.get(User, mia.id), db.session.get(User, rob.id))


def ctx(user: User | None = None) -> Context:
    return Context.anonymous(CLIENT) if user is None else Context.for_user(user, CLIENT)


def register(
    user: User, key: SoftKey, kind: str = "passkey", name: str = "", **attack: Any
) -> Credential:
    options = webauthn.registration_options(ctx(user), user, kind)
    return webauthn.register(ctx(user), user, kind, key.create(options, **attack), name)


def sign_in(key: SoftKey, user: User | None = None, **attack: Any):  # type: ignore[no-untyped-def]
    """A passkey sign-in (no user) or the MFA step (a user)."""
    options = webauthn.authentication_options(user)
    return webauthn.authenticate(ctx(user), user, key.get(options, **attack))


def refusals(action: str = "mfa.failure") -> list[str | None]:
    return list(
        db.session.scalars(
            sa.select(AuditEvent.reason)
            .where(AuditEvent.action == action, AuditEvent.outcome != "success")
            .order_by(AuditEvent.id)
        )
    )


def stored(key: SoftKey) -> Credential:
    found = db.session.scalar(
        sa.select(Credential).where(Credential.credential_id == key.credential_id)
    )
    assert found is not None
    db.session.refresh(found)
    return found


def refused(code: str, call, *args: Any, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
    """The call is refused with reason ``code``, and the refusal audited."""
    with pytest.raises((MfaFailed, RegistrationFailed)) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code
    assert caught.value.audited
    registering = isinstance(caught.value, RegistrationFailed)
    assert refusals("mfa.webauthn_added" if registering else "mfa.failure")[-1] == code


# --- MFA-2: the signature counter ---------------------------------------------


def test_mfa_2_stored_zero_asserted_zero_is_accepted_and_kept(people):
    synced = SoftKey(counting=False)
    assert register(people.mia, synced).sign_count == 0
    for _ in range(3):
        assert sign_in(synced).user.id == people.mia.id
        assert stored(synced).sign_count == 0
    assert refusals("mfa.possible_clone") == []


def with_count_five(people: People) -> SoftKey:
    key = SoftKey()
    register(people.mia, key)
    sign_in(key, count=5)
    assert stored(key).sign_count == 5
    return key


@pytest.mark.parametrize("asserted", [5, 3, 0], ids=["same", "lower", "zero"])
@pytest.mark.parametrize("step", ["passkey", "mfa"])
def test_mfa_2_counter_not_moving_forward_is_refused_as_a_clone(
    people, clock, asserted, step
):
    key = with_count_five(people)
    used = stored(key).last_used_at
    clock.advance(minutes=1)
    user = people.mia if step == "mfa" else None
    refused("possible_clone", sign_in, key, user, count=asserted)
    assert stored(key).sign_count == 5
    assert stored(key).last_used_at == used
    event = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.possible_clone")
    ).one()
    assert event.outcome == "denied"
    assert event.target_id == str(stored(key).id)
    assert event.details == {"stored_count": 5, "asserted_count": asserted}


def test_mfa_2_counter_moving_forward_is_accepted_and_stored(people):
    key = with_count_five(people)
    assert sign_in(key, count=6).user.id == people.mia.id
    assert stored(key).sign_count == 6


@pytest.mark.parametrize(
    "attack",
    [
        {"origin": "https://evil.example"},
        {"rp_id": "evil.example"},
        {"user_handle": uuid.uuid4().bytes},
        {"kind": "webauthn.create"},
    ],
    ids=["origin", "rp_id", "user_handle", "ceremony"],
)
def test_mfa_2_count_is_written_only_after_the_whole_verification(people, attack):
    key = with_count_five(people)
    with pytest.raises(MfaFailed):
        sign_in(key, count=9, **attack)
    assert stored(key).sign_count == 5
    # 6 is still ahead of what is stored, so nothing was written.
    assert sign_in(key, count=6).credential.sign_count == 6


def test_mfa_2_a_bad_signature_writes_no_count(people):
    key = with_count_five(people)
    options = webauthn.authentication_options(None)
    answer = json.loads(key.get(options, count=9))
    answer["response"]["signature"] = b64(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    refused("bad_signature", webauthn.authenticate, ctx(), None, json.dumps(answer))
    assert stored(key).sign_count == 5


# --- MFA-3: relying party id and origin ---------------------------------------

OTHER_ORIGINS = {
    "lookalike": "https://evilexample.com",
    "http": "http://auth.example.com",
    "suffix": "https://auth.example.com.evil.example",
    "port": "https://auth.example.com:8443",
    "parent": "https://example.com",
    "trailing-slash": "https://auth.example.com/",
    "case": "https://AUTH.example.com",
}


@pytest.mark.parametrize("overrides", [MFA_3], ids=["mfa-3"])
def test_mfa_3_the_exact_origin_verifies(people, overrides):
    key = SoftKey(origin=AUTH)
    assert register(people.mia, key).kind == "passkey"
    options = json.loads(webauthn.authentication_options(None))
    assert options["rpId"] == "example.com"
    assert sign_in(key).user.id == people.mia.id


@pytest.mark.parametrize("overrides", [MFA_3], ids=["mfa-3"])
@pytest.mark.parametrize("origin", OTHER_ORIGINS.values(), ids=OTHER_ORIGINS.keys())
def test_mfa_3_any_other_origin_is_refused_at_registration(people, overrides, origin):
    refused(
        "origin_mismatch", register, people.mia, SoftKey(origin=AUTH), origin=origin
    )
    assert webauthn.credentials(people.mia) == []


@pytest.mark.parametrize("overrides", [MFA_3], ids=["mfa-3"])
@pytest.mark.parametrize("origin", OTHER_ORIGINS.values(), ids=OTHER_ORIGINS.keys())
@pytest.mark.parametrize("step", ["passkey", "mfa"])
def test_mfa_3_any_other_origin_is_refused_at_sign_in(people, overrides, origin, step):
    key = SoftKey(origin=AUTH)
    register(people.mia, key)
    user = people.mia if step == "mfa" else None
    refused("origin_mismatch", sign_in, key, user, origin=origin)


RP_IDS = {
    "another-domain": "evil.example",
    "the-subdomain": "auth.example.com",
    "public-suffix": "com",
}


@pytest.mark.parametrize("overrides", [MFA_3], ids=["mfa-3"])
@pytest.mark.parametrize("rp_id", RP_IDS.values(), ids=RP_IDS.keys())
def test_mfa_3_authenticator_data_for_another_rp_id_is_refused(
    people, overrides, rp_id
):
    key = SoftKey(origin=AUTH)
    refused("rp_id_mismatch", register, people.mia, key, rp_id=rp_id)
    register(people.mia, key)
    refused("rp_id_mismatch", sign_in, key, rp_id=rp_id)
    refused("rp_id_mismatch", sign_in, key, people.mia, rp_id=rp_id)


# --- challenges ---------------------------------------------------------------


def test_a_challenge_works_once(people):
    key = SoftKey()
    options = webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    answer = key.create(options)
    webauthn.register(ctx(people.mia), people.mia, "passkey", answer, "")
    refused(
        "challenge_unknown",
        webauthn.register,
        ctx(people.mia),
        people.mia,
        "passkey",
        answer,
        "",
    )
    options = webauthn.authentication_options(None)
    assertion = key.get(options)
    webauthn.authenticate(ctx(), None, assertion)
    refused("challenge_unknown", webauthn.authenticate, ctx(), None, assertion)


def test_of_two_parallel_uses_of_one_answer_exactly_one_wins(app, people):
    key = SoftKey()
    register(people.mia, key)
    answer = key.get(webauthn.authentication_options(None))
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt() -> None:
        with app.app_context():
            start.wait()
            try:
                webauthn.authenticate(ctx(), None, answer)
                outcomes.append("accepted")
            except MfaFailed as exc:
                outcomes.append(exc.code)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted", "challenge_unknown"]


def test_a_refused_answer_spends_its_challenge(people):
    key = SoftKey()
    register(people.mia, key)
    options = webauthn.authentication_options(None)
    refused(
        "origin_mismatch",
        webauthn.authenticate,
        ctx(),
        None,
        key.get(options, origin="https://evil.example"),
    )
    # The same challenge, now correctly signed, finds nothing.
    refused("challenge_unknown", webauthn.authenticate, ctx(), None, key.get(options))


def test_an_expired_challenge_is_refused(people, clock, app):
    life = app.extensions["idp"].settings["webauthn"]["challenge_seconds"]
    key = SoftKey()
    options = webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    clock.advance(seconds=life)
    refused(
        "challenge_expired",
        webauthn.register,
        ctx(people.mia),
        people.mia,
        "passkey",
        key.create(options),
        "",
    )
    clock.advance(seconds=-life)
    options = webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    clock.advance(seconds=life - 1)
    webauthn.register(ctx(people.mia), people.mia, "passkey", key.create(options), "")
    options = webauthn.authentication_options(None)
    clock.advance(seconds=life + 1)
    answer = key.get(options)
    refused("challenge_expired", webauthn.authenticate, ctx(), None, answer)
    # Spent even so: the row is gone.
    refused("challenge_unknown", webauthn.authenticate, ctx(), None, answer)


def test_expired_challenges_are_cleared_when_new_ones_are_issued(people, clock, app):
    life = app.extensions["idp"].settings["webauthn"]["challenge_seconds"]
    for _ in range(3):
        webauthn.authentication_options(None)
    clock.advance(seconds=life + 1)
    webauthn.authentication_options(None)
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(WebAuthnChallenge))
        == 1
    )


def test_a_challenge_for_another_account_is_refused(people):
    key = SoftKey()
    options = webauthn.registration_options(ctx(people.rob), people.rob, "passkey")
    refused(
        "challenge_unknown",
        webauthn.register,
        ctx(people.mia),
        people.mia,
        "passkey",
        key.create(options),
        "",
    )
    register(people.mia, key, kind="security_key")
    options = webauthn.authentication_options(people.rob)
    refused(
        "challenge_unknown",
        webauthn.authenticate,
        ctx(people.mia),
        people.mia,
        key.get(options),
    )


def test_a_challenge_for_another_ceremony_is_refused(people):
    key = SoftKey()
    register(people.mia, key)
    # A security-key challenge does not register a passkey.
    options = webauthn.registration_options(ctx(people.mia), people.mia, "security_key")
    refused(
        "challenge_unknown",
        webauthn.register,
        ctx(people.mia),
        people.mia,
        "passkey",
        SoftKey().create(options),
        "",
    )
    # The MFA step's challenge (bound to mia) does not sign in anonymously,
    # and the anonymous one does not pass mia's MFA step.
    options = webauthn.authentication_options(people.mia)
    refused("challenge_unknown", webauthn.authenticate, ctx(), None, key.get(options))
    options = webauthn.authentication_options(None)
    refused(
        "challenge_unknown",
        webauthn.authenticate,
        ctx(people.mia),
        people.mia,
        key.get(options),
    )


def test_a_challenge_handed_to_another_browser_is_refused(people):
    key = SoftKey()
    register(people.mia, key)
    mine = json.loads(webauthn.authentication_options(None))["challenge"]
    theirs = webauthn.authentication_options(None)
    refused(
        "challenge_unknown",
        webauthn.authenticate,
        ctx(),
        None,
        key.get(theirs),
        issued=mine,
    )
    options = webauthn.authentication_options(None)
    issued = json.loads(options)["challenge"]
    done = webauthn.authenticate(ctx(), None, key.get(options), issued=issued)
    assert done.user.id == people.mia.id


# --- accounts, credentials, user verification ---------------------------------


def test_a_user_handle_of_another_account_is_refused(people):
    key = SoftKey()
    register(people.mia, key)
    register(people.rob, SoftKey())
    refused("user_handle_mismatch", sign_in, key, user_handle=people.rob.id.bytes)
    refused(
        "user_handle_mismatch",
        sign_in,
        key,
        people.mia,
        user_handle=people.rob.id.bytes,
    )
    refused("user_handle_missing", sign_in, key, user_handle=None)
    # At the MFA step a security key may send none: the account is known.
    assert sign_in(key, people.mia, user_handle=None).user.id == people.mia.id


def test_a_credential_id_already_registered_is_refused(people):
    key = SoftKey()
    register(people.mia, key)
    refused("credential_registered", register, people.rob, key)
    refused("credential_registered", register, people.mia, key, kind="security_key")
    assert [c.user_id for c in db.session.scalars(sa.select(Credential))] == [
        people.mia.id
    ]


def test_registration_excludes_the_members_own_credentials(people):
    key = SoftKey()
    register(people.mia, key, kind="security_key")
    options = json.loads(
        webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    )
    assert [c["id"] for c in options["excludeCredentials"]] == [b64(key.credential_id)]
    assert options["user"]["id"] == b64(people.mia.id.bytes)
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"


def test_user_verification_missing_is_refused_where_required(people):
    lazy = SoftKey(verifies_user=False)
    refused("user_verification_missing", register, people.mia, lazy)
    register(people.mia, SoftKey(credential_id=lazy.credential_id, key=lazy.key))
    refused("user_verification_missing", sign_in, lazy)


def test_a_security_key_needs_no_user_verification(people):
    key = SoftKey(verifies_user=False)
    added = register(people.mia, key, kind="security_key", name="Blue key")
    assert (added.kind, added.name, added.transports) == (
        "security_key",
        "Blue key",
        ["nfc", "usb"],
    )
    done = sign_in(key, people.mia)
    assert (done.user.id, done.user_verified) == (people.mia.id, False)
    assert sign_in(key, people.mia, uv=True).user_verified
    # Never a passkey sign-in on its own, whatever it says.
    refused("credential_unknown", sign_in, key, uv=True)


def test_the_mfa_step_takes_only_the_members_own_credentials(people):
    theirs = SoftKey()
    register(people.rob, theirs)
    register(people.mia, SoftKey())
    refused("credential_unknown", sign_in, theirs, people.mia)
    options = json.loads(webauthn.authentication_options(people.mia))
    assert len(options["allowCredentials"]) == 1
    assert options["userVerification"] == "discouraged"


def test_an_unknown_credential_is_refused(people):
    refused("credential_unknown", sign_in, SoftKey(user_handle=people.mia.id.bytes))


# --- hostile answers ----------------------------------------------------------


def _with(key: SoftKey, path: str, value: Any) -> str:
    """A real assertion by ``key`` with one field replaced."""
    answer = json.loads(key.get(webauthn.authentication_options(None)))
    *parents, last = path.split(".")
    node = answer
    for part in parents:
        node = node[part]
    node[last] = value
    return json.dumps(answer)


def _client_data(text: bytes) -> Any:
    return lambda key: _with(key, "response.clientDataJSON", b64(text))


HOSTILE = {
    "empty": lambda key: "",
    "not-json": lambda key: "{not json",
    "array": lambda key: "[]",
    "string": lambda key: '"credential"',
    "empty-object": lambda key: "{}",
    "no-response": lambda key: _with(key, "response", None),
    "bad-raw-id": lambda key: _with(key, "rawId", "!!!"),
    "bad-user-handle": lambda key: _with(key, "response.userHandle", "!!!"),
    "user-handle-number": lambda key: _with(key, "response.userHandle", 7),
    "client-data-not-json": _client_data(b"\xff{"),
    "client-data-array": _client_data(b"[1]"),
    "challenge-number": _client_data(
        b'{"type":"webauthn.get","challenge":1,"origin":"http://localhost"}'
    ),
    "authenticator-data-short": lambda key: _with(
        key, "response.authenticatorData", b64(b"ab")
    ),
    "signature-garbage": lambda key: _with(key, "response.signature", b64(b"ab")),
    "nested": lambda key: "[" * 5000 + "]" * 5000,
    "oversized": lambda key: _with(key, "id", "A" * 20_000),
    "type": lambda key: _with(key, "type", "password"),
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_assertions_are_refused_and_audited(people, make):
    key = SoftKey()
    register(people.mia, key)
    with pytest.raises(MfaFailed) as caught:
        webauthn.authenticate(ctx(), None, make(key))
    assert caught.value.audited
    assert refusals()[-1] == caught.value.code
    assert stored(key).sign_count == 0


REGISTRATION_HOSTILE = {
    "empty": "",
    "not-json": "{not json",
    "array": "[]",
    "empty-object": "{}",
    "no-attestation": json.dumps(
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": "e30"},
        }
    ),
    "bad-attestation": json.dumps(
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": b64(b"{}"), "attestationObject": "!!"},
        }
    ),
    "oversized": "x" * 20_000,
}


@pytest.mark.parametrize(
    "answer", REGISTRATION_HOSTILE.values(), ids=REGISTRATION_HOSTILE.keys()
)
def test_hostile_registrations_are_refused_and_audited(people, answer):
    webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    with pytest.raises(RegistrationFailed) as caught:
        webauthn.register(ctx(people.mia), people.mia, "passkey", answer, "")
    assert refusals("mfa.webauthn_added")[-1] == caught.value.code
    assert webauthn.credentials(people.mia) == []


def test_a_garbage_attestation_for_a_live_challenge_is_refused(people):
    options = webauthn.registration_options(ctx(people.mia), people.mia, "passkey")
    answer = json.loads(SoftKey().create(options))
    answer["response"]["attestationObject"] = b64(cbor2.dumps({"fmt": "none"}))
    answer = json.dumps(answer)
    with pytest.raises(RegistrationFailed) as caught:
        webauthn.register(ctx(people.mia), people.mia, "passkey", answer, "")
    assert refusals("mfa.webauthn_added") == [caught.value.code]


# --- names, rename, delete ----------------------------------------------------


def test_names_are_one_clean_line_with_a_default(people):
    first = register(people.mia, SoftKey(), name="  Work\tlaptop\n ")
    assert first.name == "Work laptop"
    assert register(people.mia, SoftKey(), kind="security_key").name == "Security key"
    with pytest.raises(InvalidInput):
        webauthn.rename(ctx(people.mia), people.mia, first.id, "x" * 101)
    webauthn.rename(ctx(people.mia), people.mia, first.id, "Phone")
    assert stored_by_id(first.id).name == "Phone"
    event = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.webauthn_renamed")
    ).one()
    assert event.details == {"old": "Work laptop", "new": "Phone"}


def stored_by_id(row_id: uuid.UUID) -> Credential:
    found = db.session.get(Credential, row_id)
    assert found is not None
    return found


def test_rename_and_delete_reach_only_ones_own(people):
    theirs = register(people.rob, SoftKey())
    with pytest.raises(NotFound):
        webauthn.rename(ctx(people.mia), people.mia, theirs.id, "Mine now")
    with pytest.raises(NotFound):
        webauthn.delete(ctx(people.mia), people.mia, theirs.id)
    with pytest.raises(NotFound):
        webauthn.delete(ctx(people.mia), people.mia, "not an id")
    assert stored_by_id(theirs.id).name == "Passkey"


def test_the_last_factor_is_not_deleted_while_mfa_is_forced(people):
    only = register(people.mia, SoftKey())
    policy = db.session.scalar(
        sa.select(SecurityPolicy).where(
            SecurityPolicy.workspace_id == people.mia.workspace_id
        )
    )
    policy.mfa_mode = "force"
    db.session.commit()
    with pytest.raises(Forbidden):
        webauthn.delete(ctx(people.mia), people.mia, only.id)
    second = register(people.mia, SoftKey(), kind="security_key")
    webauthn.delete(ctx(people.mia), people.mia, only.id)
    assert [c.id for c in webauthn.credentials(people.mia)] == [second.id]
    removed = db.session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "mfa.webauthn_removed")
    ).one()
    assert removed.details == {"kind": "passkey", "name": "Passkey"}

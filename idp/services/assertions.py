"""The signed identity assertion handed to downstream apps (ES256, 60 s),
and the public keys that verify it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from flask import current_app
from joserfc import jwt
from joserfc.jwk import ECKey

from idp.clock import Clock, now
from idp.keys import KeyRing
from idp.security import new_token
from idp.state import settings

LIFETIME_SECONDS = 60
# A cached assertion is reused only while more than this much life remains,
# so an app never receives one that expires in transit.
REUSE_MARGIN_SECONDS = 30
CACHE_ENTRIES = 10_000
ALGORITHM = "ES256"


@dataclass(frozen=True)
class Claims:
    """Who passed the check, for one audience (the requested origin)."""

    session_id: str
    audience: str
    user_id: str
    email: str
    name: str
    role: str
    workspace: str
    amr: tuple[str, ...]
    auth_time: int


@dataclass(frozen=True)
class _Signed:
    token: str
    issued: int
    expires: int


class Signer:
    """Signs with the newest signing key; publishes every key present, so
    an assertion signed before a rotation still verifies.

    ``issuer`` defaults to the public URL and ``clock`` to the application's
    clock, both read when an assertion is made.
    """

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str | None = None,
        clock: Clock | None = None,
        max_entries: int = CACHE_ENTRIES,
    ) -> None:
        if not ring.signing:
            raise ValueError("no signing key")
        self._keys = [(kid, _jwk(private)) for kid, private in ring.signing]
        self._issuer = issuer
        self._clock = clock or now
        self._max_entries = max(1, max_entries)
        # Keyed by every claim, so a changed role, name or session state is
        # a different entry and never answered from an older one.
        self._cache: OrderedDict[Claims, _Signed] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def kid(self) -> str:
        """The id of the key that signs."""
        return self._keys[0][0]

    def cached(self) -> int:
        """How many assertions the cache holds."""
        with self._lock:
            return len(self._cache)

    def jwks(self) -> dict[str, Any]:
        """Every public key, newest first, as a JWK Set."""
        return {
            "keys": [
                {
                    **key.as_dict(private=False),
                    "kid": kid,
                    "use": "sig",
                    "alg": ALGORITHM,
                }
                for kid, key in self._keys
            ]
        }

    def assertion(self, claims: Claims) -> str:
        """A JWT for ``claims``, reused from the cache while it has more than
        30 s to live."""
        moment = int(self._clock().timestamp())
        with self._lock:
            hit = self._cache.get(claims)
            if hit is not None and self._reusable(hit, moment):
                self._cache.move_to_end(claims)
                return hit.token
        # Signed outside the lock: two threads may both sign the same claims,
        # which costs a signature and is otherwise harmless.
        signed = self._sign(claims, moment)
        with self._lock:
            self._cache[claims] = signed
            self._cache.move_to_end(claims)
            self._trim(moment)
        return signed.token

    @staticmethod
    def _reusable(signed: _Signed, moment: int) -> bool:
        # A clock set back must not hand out an assertion issued "later".
        return (
            signed.issued <= moment and signed.expires - moment > REUSE_MARGIN_SECONDS
        )

    def _trim(self, moment: int) -> None:
        """Drop the least recently used entries that can no longer be reused,
        then any beyond the bound. Called with the lock held."""
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if self._reusable(oldest, moment):
                break
            self._cache.popitem(last=False)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _sign(self, claims: Claims, issued: int) -> _Signed:
        kid, key = self._keys[0]
        expires = issued + LIFETIME_SECONDS
        payload = {
            "iss": self._issuer or settings().public_url,
            "sub": claims.user_id,
            "aud": claims.audience,
            "email": claims.email,
            "name": claims.name,
            "role": claims.role,
            "workspace": claims.workspace,
            "amr": list(claims.amr),
            "auth_time": claims.auth_time,
            "iat": issued,
            "exp": expires,
            "jti": new_token(),
        }
        header = {"alg": ALGORITHM, "kid": kid, "typ": "JWT"}
        token = jwt.encode(header, payload, key, algorithms=[ALGORITHM])
        return _Signed(token, issued, expires)


def _jwk(private: Any) -> ECKey:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ECKey.import_key(pem)


def signer() -> Signer:
    """The application's signer."""
    return current_app.extensions["idp_signer"]

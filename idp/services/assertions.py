"""The signed identity assertion handed to downstream apps (ES256, 60 s),
and the public keys that verify it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from flask import current_app
from joserfc import jwt
from joserfc.jwk import ECKey

from idp.keys import KeyRing
from idp.security import new_token
from idp.state import settings

LIFETIME_SECONDS = 60
# A cached assertion is reused only while more than this much life remains.
REUSE_MARGIN_SECONDS = 30
CACHE_ENTRIES = 10_000


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


class Signer:
    """Signs with the newest signing key; publishes every key present, so
    an assertion signed before a rotation still verifies."""

    def __init__(self, ring: KeyRing) -> None:
        self._keys = [(kid, _jwk(private)) for kid, private in ring.signing]
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": "ES256"}
                for kid, key in self._keys
            ]
        }

    def assertion(self, claims: Claims, *, wall_clock: float | None = None) -> str:
        """A JWT for ``claims``, reused from the cache while it has more than
        30 s to live. The cache key covers every claim, so a changed role or
        name is never served from it."""
        moment = time.time() if wall_clock is None else wall_clock
        key = hashlib.sha256(repr(claims).encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] - moment > REUSE_MARGIN_SECONDS:
                self._cache.move_to_end(key)
                return hit[0]
        token, expires = self._sign(claims, int(moment))
        with self._lock:
            self._cache[key] = (token, expires)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return token

    def _sign(self, claims: Claims, issued: int) -> tuple[str, float]:
        kid, key = self._keys[0]
        expires = issued + LIFETIME_SECONDS
        payload = {
            "iss": settings().public_url,
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
        header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
        return jwt.encode(header, payload, key, algorithms=["ES256"]), float(expires)


def _jwk(private: Any) -> ECKey:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ECKey.import_key(pem)


def signer() -> Signer:
    return current_app.extensions["idp_signer"]

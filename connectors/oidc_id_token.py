"""An ID token's checks and what its claims say about the person.

What an ID token must pass (SECURITY.md 9.1.x, 9.2.x, 10.x; OIDC Core
3.1.3.7): a signature by a key of the IdP's JWKS, with an algorithm the IdP
publishes and we accept, and a key whose type fits that algorithm; the
issuer we configured (or, for Entra's template, the token's own tenant,
one the admin allowed); our client id among the audiences; exp, iat and
nbf within the clock skew; and the nonce we sent. Everything we use comes
from the token: nothing is completed from the userinfo endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwk import JWKRegistry, Key

from connectors.oidc import ACCEPTED_ALGORITHMS, OidcError, Provider, is_tenant_id
from connectors.profile import Profile

# The key each algorithm needs: type, and the curve where one is fixed.
_KEY_FOR = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", ("P-256",)),
    "ES384": ("EC", ("P-384",)),
    "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
    "Ed25519": ("OKP", ("Ed25519",)),
}
MIN_RSA_BITS = 2048
# OIDC Core 2: sub is at most 255 ASCII characters.
MAX_SUBJECT = 255
MAX_RECEIVED_CLAIMS = 100


class UnknownKey(OidcError):
    """The ID token names a key the JWKS lacks: the IdP may have rotated."""


@dataclass(frozen=True)
class IdToken:
    """A verified ID token: its issuer and subject, the Entra tenant when
    the issuer is a template, and every claim."""

    issuer: str
    subject: str
    claims: dict[str, Any]
    tenant: str | None = None


def _invalid(
    message: str, code: str = "oidc_id_token_invalid", **details: Any
) -> OidcError:
    return OidcError(message, code=code, details=details)


def verify_id_token(
    id_token: str,
    *,
    provider: Provider,
    jwks: Mapping[str, Any],
    client_id: str,
    nonce: str,
    now: float,
    skew_seconds: float,
    allowed_tenants: Collection[str] = (),
) -> IdToken:
    """The ID token's claims once every check holds; OidcError (UnknownKey
    when the key id is not in ``jwks``) otherwise. ``now`` is Unix time."""
    header = _header_of(id_token)
    alg = header.get("alg")
    # Pinned twice: to what this IdP publishes, and to our own list, so a
    # Provider built by hand cannot let HS256 or none through either.
    if (
        not isinstance(alg, str)
        or alg not in provider.algorithms
        or alg not in ACCEPTED_ALGORITHMS
    ):
        raise _invalid(
            "The ID token is signed with an algorithm this IdP does not use.",
            "oidc_alg_refused",
            alg=str(alg)[:20],
        )
    typ = header.get("typ")
    if typ is not None and str(typ).lower() not in ("jwt", "application/jwt"):
        # An access token (at+jwt) or a logout token is not an ID token.
        raise _invalid("The token is not an ID token.", typ=str(typ)[:40])
    claims = _verified_payload(id_token, header, alg, jwks)
    issuer, tenant = _check_issuer(claims, provider, allowed_tenants)
    _check_audience(claims, client_id)
    _check_times(claims, now, skew_seconds)
    sent = claims.get("nonce")
    # The comparison idp.security.secrets_equal makes (connectors do not
    # import idp).
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent.encode("utf-8", "surrogatepass"), nonce.encode("utf-8", "surrogatepass")
    ):
        raise _invalid(
            "The ID token does not answer this sign-in (nonce).",
            "oidc_nonce",
            nonce="missing" if sent is None else "different",
        )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
        raise _invalid("The ID token names no valid subject.")
    return IdToken(issuer=issuer, subject=subject, claims=claims, tenant=tenant)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _header_of(id_token: str) -> dict[str, Any]:
    parts = id_token.split(".")
    if len(parts) != 3:
        # Five parts would be an encrypted token, which we never ask for.
        raise _invalid("The ID token is not a signed JWT.")
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error) as exc:
        raise _invalid("The ID token's header cannot be read.") from exc
    if not isinstance(header, dict):
        raise _invalid("The ID token's header cannot be read.")
    return header


def _verified_payload(
    id_token: str, header: Mapping[str, Any], alg: str, jwks: Mapping[str, Any]
) -> dict[str, Any]:
    # The key comes from the IdP's JWKS alone: jku, x5u, jwk and x5c in the
    # header are never read (SECURITY.md 9.1.3).
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("The ID token's key id cannot be read.")
    candidates = _keys_for(jwks, alg, kid)
    if not candidates:
        raise UnknownKey(
            "The ID token is signed with a key this IdP does not publish.",
            code="oidc_key_unknown",
            details={"kid": str(kid)[:100]},
        )
    registry = _Pinned(algorithms=[alg], strict_check_header=False)
    for key in candidates:
        try:
            signed = jws.deserialize_compact(id_token, key, registry=registry)
        except BadSignatureError:
            continue
        except (JoseError, ValueError) as exc:
            raise _invalid("The ID token cannot be read.") from exc
        try:
            payload = json.loads(signed.payload or b"")
        except ValueError as exc:
            raise _invalid("The ID token's claims cannot be read.") from exc
        if not isinstance(payload, dict):
            raise _invalid("The ID token's claims cannot be read.")
        return payload
    raise _invalid("The ID token's signature is not valid.", "oidc_signature_invalid")


class _Pinned(jws.JWSRegistry):
    """Exactly the one algorithm the checks above allowed, with no
    library-wide recommendation list in the way (EdDSA is still what
    several IdPs publish)."""

    def get_alg(self, name: str) -> Any:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm {name!r} is not allowed")
        return self.algorithms[name]


def _keys_for(jwks: Mapping[str, Any], alg: str, kid: str | None) -> list[Key]:
    """The JWKS keys that may verify ``alg`` under ``kid``; with no kid,
    every key that fits."""
    kty, curves = _KEY_FOR[alg]
    found: list[Key] = []
    for entry in jwks.get("keys") or []:
        if not isinstance(entry, dict) or entry.get("kty") != kty:
            continue
        if kid is not None and entry.get("kid") != kid:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", alg) != alg:
            continue
        if curves is not None and entry.get("crv") not in curves:
            continue
        if kty == "RSA" and _modulus_bits(entry) < MIN_RSA_BITS:
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            found.append(JWKRegistry.import_key(public))
        except (JoseError, ValueError, TypeError):
            continue
    return found


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _modulus_bits(entry: Mapping[str, Any]) -> int:
    try:
        return int.from_bytes(_b64decode(str(entry.get("n", "")))).bit_length()
    except (ValueError, binascii.Error):
        return 0


def _check_issuer(
    claims: Mapping[str, Any], provider: Provider, allowed_tenants: Collection[str]
) -> tuple[str, str | None]:
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise _invalid("The ID token names no issuer.", "oidc_issuer")
    if not provider.tenant_template:
        if issuer != provider.issuer:
            raise _invalid(
                "The ID token was issued by another IdP.",
                "oidc_issuer",
                iss=issuer[:200],
            )
        return issuer, None
    # Entra multi-tenant: the issuer is the template filled with the
    # token's own tenant, and that tenant must be one the admin allowed.
    tenant = claims.get("tid")
    if not isinstance(tenant, str) or not is_tenant_id(tenant):
        raise _invalid("The ID token names no tenant.", "oidc_issuer")
    if issuer != provider.issuer_for(tenant):
        raise _invalid(
            "The ID token's issuer does not match its tenant.",
            "oidc_issuer",
            iss=issuer[:200],
            tenant=tenant,
        )
    if tenant not in allowed_tenants:
        raise _invalid(
            "Your organisation's directory is not one this workspace accepts.",
            "oidc_tenant_not_allowed",
            tenant=tenant,
        )
    return issuer, tenant


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise _invalid(
            "The ID token was issued to another application.", "oidc_audience"
        )
    azp = claims.get("azp")
    # OIDC Core 3.1.3.7: with several audiences, the party it was issued to
    # must be us.
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise _invalid(
            "The ID token was issued to another application.", "oidc_audience"
        )


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"The ID token's {name} is not a time.")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float, skew: float) -> None:
    expires = _number(claims, "exp")
    issued = _number(claims, "iat")
    if expires is None or issued is None:
        raise _invalid("The ID token lacks exp or iat.")
    if now > expires + skew:
        raise _invalid("The ID token has expired.", "oidc_expired")
    not_before = _number(claims, "nbf")
    if issued > now + skew or (not_before is not None and not_before > now + skew):
        raise _invalid(
            "The ID token is not valid yet: check the clocks.", "oidc_not_yet_valid"
        )


# The claim each field comes from unless the connection's attribute map
# names another.
DEFAULT_CLAIMS = {
    "email": "email",
    "first_name": "given_name",
    "last_name": "family_name",
    "display_name": "name",
    "groups": "groups",
}


def profile(
    claims: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> Profile:
    """Map ID token claims to profile fields. preferred_username is never
    taken for the email: Entra lets people and tenants set it freely."""
    chosen = {**DEFAULT_CLAIMS, **(names or {})}
    email = _text(claims.get(chosen["email"]))
    return Profile(
        email=email,
        email_verified=email is not None and _email_verified(claims),
        first_name=_text(claims.get(chosen["first_name"])),
        last_name=_text(claims.get(chosen["last_name"])),
        display_name=_text(claims.get(chosen["display_name"])),
        groups=_groups(claims.get(chosen["groups"])),
        received=_received(claims),
    )


def _email_verified(claims: Mapping[str, Any]) -> bool:
    """True only when the IdP says so. Absent means unverified: Entra sends
    no email_verified, and its email claim can hold any address a tenant
    typed, unless the app asked for the optional claim xms_edov (the
    tenant owns the address's domain)."""
    value = claims.get("email_verified")
    if value is None:
        value = claims.get("xms_edov")
    # Some IdPs send the boolean as text.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(dict.fromkeys(g for g in value if isinstance(g, str) and g))


def _received(claims: Mapping[str, Any]) -> dict[str, list[str]]:
    received = {}
    for name, value in list(claims.items())[:MAX_RECEIVED_CLAIMS]:
        values = value if isinstance(value, list) else [value]
        received[str(name)] = [
            v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for v in values
        ]
    return received

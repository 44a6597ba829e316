"""OpenID Connect relying party: the IdP's discovery document, its keys,
the authorization request and the token request, with no Flask and no
database (``idp.services.sso.oidc`` holds the state). The ID token's own
checks are in ``connectors.oidc_id_token``.

Only the code flow with PKCE (S256), a confidential client (a secret sent
by client_secret_post or client_secret_basic), and ID tokens signed with an
asymmetric algorithm. We never call the userinfo endpoint.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from connectors.fetch import (
    FetchError,
    FetchRules,
    Resolver,
    check_url,
    get_json,
    post_form,
    system_resolver,
)

# Asymmetric algorithms only. HS256/384/512 would need the client secret as
# the verification key, a path we do not offer: refusing them outright is
# what stops a token MACed with the IdP's public key (OIDC-1). "none" is
# never in the list.
ACCEPTED_ALGORITHMS = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512",
    "EdDSA", "Ed25519",
)  # fmt: skip

# Entra ID's multi-tenant endpoints (common, organizations) publish an
# issuer template: the real issuer names the person's tenant.
TENANT_PLACEHOLDER = "{tenantid}"
ENTRA_MULTI_TENANT = ("common", "organizations")
DISCOVERY_PATH = "/.well-known/openid-configuration"
# An OAuth error code (RFC 6749 A.7), cut short for the audit log.
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")


class OidcError(Exception):
    """A refused discovery document, token answer or ID token; ``code`` is
    the reason, ``str`` is fit to show, ``details`` go to the audit log."""

    def __init__(
        self, message: str, *, code: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = dict(details or {})


@dataclass(frozen=True)
class Provider:
    """An IdP as its discovery document describes it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    # What the IdP publishes and we accept, in its order.
    algorithms: tuple[str, ...]
    # client_secret_post or client_secret_basic.
    token_auth_method: str
    # RFC 9207: the IdP names itself in every authorization response.
    sends_iss: bool = False

    @property
    def tenant_template(self) -> bool:
        return TENANT_PLACEHOLDER in self.issuer

    def issuer_for(self, tenant: str) -> str:
        return self.issuer.replace(TENANT_PLACEHOLDER, tenant)


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


def fetch_discovery(
    issuer: str, rules: FetchRules, *, resolve: Resolver = system_resolver
) -> tuple[dict[str, Any], Provider]:
    """The discovery document of ``issuer``, checked. FetchError when it
    cannot be read, OidcError when it is not acceptable."""
    document = get_json(discovery_url(issuer), rules, resolve=resolve)
    return document, parse_discovery(document, issuer=issuer, rules=rules)


def parse_discovery(
    document: Mapping[str, Any], *, issuer: str, rules: FetchRules
) -> Provider:
    """Check a discovery document against the issuer the admin configured
    (OidcError ``sso_discovery_invalid``, with a message for the admin)."""

    def refuse(message: str) -> OidcError:
        return OidcError(message, code="sso_discovery_invalid")

    published = document.get("issuer")
    if not isinstance(published, str) or not published:
        raise refuse("The discovery document names no issuer.")
    if not _issuer_matches(published, issuer):
        # SECURITY.md 10.5.3: a document for another issuer is not this
        # IdP's, whatever URL served it.
        raise refuse(
            f"The discovery document names the issuer {published!r}; enter "
            "exactly that as the issuer."
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        url = document.get(name)
        if not isinstance(url, str):
            raise refuse(f"The discovery document has no {name}.")
        try:
            check_url(url, rules)
        except FetchError as exc:
            raise refuse(f"The discovery document's {name}: {exc}") from exc
        endpoints[name] = url
    response_types = document.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise refuse("The IdP does not offer the authorization code flow.")
    signing = document.get("id_token_signing_alg_values_supported")
    if not isinstance(signing, list):
        # An OAuth 2.0 authorization server's metadata (RFC 8414) looks
        # alike but promises no ID token.
        raise refuse(
            "This is not an OpenID Connect discovery document: it names no "
            "ID token signing algorithms. Enter the IdP's OpenID Connect issuer."
        )
    algorithms = tuple(a for a in signing if a in ACCEPTED_ALGORITHMS)
    if not algorithms:
        shown = ", ".join(str(a) for a in signing[:10]) or "none"
        raise refuse(
            f"The IdP signs ID tokens only with algorithms we do not accept "
            f"({shown}). Ask for RS256 or ES256."
        )
    methods = document.get("token_endpoint_auth_methods_supported")
    if not isinstance(methods, list):
        methods = ["client_secret_basic"]  # the default, Discovery 3
    # Post first: the secret goes as typed, with none of the encoding
    # questions HTTP Basic raises.
    for method in ("client_secret_post", "client_secret_basic"):
        if method in methods:
            break
    else:
        raise refuse(
            "The IdP accepts neither client_secret_post nor client_secret_basic "
            "at its token endpoint."
        )
    return Provider(
        issuer=published,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks_uri=endpoints["jwks_uri"],
        algorithms=algorithms,
        token_auth_method=method,
        sends_iss=document.get("authorization_response_iss_parameter_supported")
        is True,
    )


def _issuer_matches(published: str, configured: str) -> bool:
    if published == configured:
        return True
    if TENANT_PLACEHOLDER not in published:
        return False
    # Entra's template answers only at its multi-tenant aliases; a tenant's
    # own URL publishes that tenant's issuer and compares exactly.
    return any(
        published.replace(TENANT_PLACEHOLDER, alias) == configured
        for alias in ENTRA_MULTI_TENANT
    )


def is_tenant_id(value: str) -> bool:
    """Entra tenant ids are GUIDs, in lower case."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def fetch_jwks(
    url: str, rules: FetchRules, *, resolve: Resolver = system_resolver
) -> dict[str, Any]:
    """The IdP's key set, as published. FetchError when it cannot be read
    or is not a key set."""
    document = get_json(url, rules, resolve=resolve)
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise FetchError("The IdP's JWKS is not a key set.")
    return {"keys": keys}


def new_code_verifier() -> str:
    # RFC 7636 4.1: 43 to 128 characters; 48 random bytes give 64.
    return secrets.token_urlsafe(48)


def authorization_url(
    provider: Provider,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    nonce: str,
    code_verifier: str,
) -> str:
    """Where the browser goes: the code flow with PKCE (S256)."""
    params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", create_s256_code_challenge(code_verifier)),
        ("code_challenge_method", "S256"),
    ]
    return str(add_params_to_uri(provider.authorization_endpoint, params))


def exchange_code(
    provider: Provider,
    *,
    code: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code_verifier: str,
    rules: FetchRules,
    resolve: Resolver = system_resolver,
) -> str:
    """The ID token the token endpoint gives for ``code``. FetchError when
    the IdP cannot be reached; OidcError ``oidc_token_exchange_failed``
    when it refuses or answers without an ID token."""
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    headers = {}
    if provider.token_auth_method == "client_secret_post":
        fields.update(client_id=client_id, client_secret=client_secret)
    else:
        # RFC 6749 2.3.1: each part form-encoded before Base64.
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    status, answer = post_form(
        provider.token_endpoint, fields, rules, headers=headers, resolve=resolve
    )
    if status != 200:
        error = answer.get("error")
        raise OidcError(
            "Your company's IdP refused to complete the sign-in.",
            code="oidc_token_exchange_failed",
            details={"status": status, "error": error_code(error)},
        )
    id_token = answer.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise OidcError(
            "Your company's IdP completed the sign-in without an ID token.",
            code="oidc_token_exchange_failed",
            details={"status": status, "error": "no_id_token"},
        )
    return id_token


def error_code(value: object) -> str | None:
    """An OAuth error code fit for the audit log, or None."""
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
        return value
    return None if value is None else "unreadable"

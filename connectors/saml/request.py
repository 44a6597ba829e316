"""Our AuthnRequest, sent to the IdP by HTTP-Redirect and signed with our
SP key; ``inflate_request`` reads one back from such a URL."""

from __future__ import annotations

import base64
import zlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from saml2 import BINDING_HTTP_POST, saml, samlp
from saml2.pack import http_redirect_message

from connectors.saml.xml import NS

_SIGN_ALGORITHM = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"


class _Signer:
    """pysaml2's redirect signer, without its shared module state: its own
    RSACrypto sets the key on a signer every thread shares."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key

    def sign(self, message: bytes, key: object = None) -> bytes:
        return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())


class _SignerBackend:
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key

    def get_signer(self, sigalg: str, sigkey: object = None) -> _Signer | None:
        return _Signer(self.key) if sigalg == _SIGN_ALGORITHM else None


def authn_request_url(
    *,
    sso_url: str,
    request_id: str,
    sp_entity_id: str,
    acs_url: str,
    issue_instant: datetime,
    relay_state: str,
    key_pem: bytes,
) -> str:
    """The IdP's sign-in address carrying our AuthnRequest by HTTP-Redirect:
    deflated, signed (rsa-sha256) with our SP key."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the SAML signing key must be RSA")
    request = samlp.AuthnRequest(
        id=request_id,
        version="2.0",
        issue_instant=issue_instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        destination=sso_url,
        protocol_binding=BINDING_HTTP_POST,
        assertion_consumer_service_url=acs_url,
        issuer=saml.Issuer(text=sp_entity_id, format=saml.NAMEID_FORMAT_ENTITY),
        name_id_policy=samlp.NameIDPolicy(allow_create="true"),
    )
    message = request.to_string({"samlp": NS["samlp"], "saml": NS["saml"]}).decode()
    info = http_redirect_message(
        message,
        sso_url,
        relay_state=relay_state,
        typ="SAMLRequest",
        sigalg=_SIGN_ALGORITHM,
        sign=True,
        backend=_SignerBackend(key),
    )
    return str(dict(info["headers"])["Location"])


def inflate_request(value: str) -> str:
    """The XML of a SAMLRequest taken from an HTTP-Redirect URL."""
    return zlib.decompress(base64.b64decode(value), -15).decode()

"""IdP certificates: read from PEM or a bare base64 body, refused unless
they carry an RSA or elliptic-curve key we accept, and described for the
admin (expiry, fingerprint, warnings)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import warnings
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning

from connectors.saml.xml import SamlError

# Older AD FS farms still sign with 1024-bit keys: accepted, with a warning.
MIN_RSA_BITS = 1024
WEAK_RSA_BITS = 2048

_PEM_LINE = re.compile(r"-----(BEGIN|END) CERTIFICATE-----")


def _load(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        # AD FS makes certificates with negative serial numbers, which
        # cryptography warns about; to us a certificate only carries a key.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


def _der(pem: str) -> bytes:
    return base64.b64decode("".join(_PEM_LINE.sub("", pem).split()), validate=True)


def normalize_certificate(text: str) -> str:
    """A certificate as PEM with 64-character lines, from PEM or a bare
    base64 body, whatever its whitespace (Okta wraps with spaces)."""
    try:
        der = _der(text)
        certificate = _load(der)
    except (binascii.Error, ValueError) as exc:
        raise SamlError(
            "saml_certificate_invalid", "The certificate could not be read."
        ) from exc
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise SamlError(
                "saml_certificate_invalid",
                f"The certificate's RSA key has {key.key_size} bits; at least "
                f"{MIN_RSA_BITS} are required.",
            )
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise SamlError(
            "saml_certificate_invalid",
            "The certificate's key is neither RSA nor elliptic-curve.",
        )
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def certificate_expiry(pem: str) -> datetime:
    return _load(_der(pem)).not_valid_after_utc


def certificate_warnings(pem: str, now: datetime) -> list[str]:
    """What an admin should hear about an IdP certificate we accept."""
    certificate = _load(_der(pem))
    found = []
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < WEAK_RSA_BITS:
        found.append(
            f"A signing certificate has a {key.key_size}-bit RSA key; ask the "
            f"IdP to roll over to a key of at least {WEAK_RSA_BITS} bits."
        )
    if certificate.not_valid_after_utc <= now:
        found.append(
            f"A signing certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}. "
            "Signatures made with it are still checked, but the IdP should roll "
            "it over."
        )
    return found


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of the certificate, colon-separated, as IdP consoles show it."""
    digest = hashlib.sha256(_der(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _body(pem: str) -> str:
    return base64.b64encode(_der(pem)).decode()

"""Key material in the keys folder: created once with mode 0600, rotated by
adding a newer file. The newest key of each kind signs or encrypts; every
key still present verifies or decrypts."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KINDS = {"secret": ".key", "signing": ".pem", "encryption": ".key", "saml": ".pem"}
# The SAML service provider's key pair: RSA, which every IdP accepts (AD FS
# and others refuse ECDSA), with a self-signed certificate beside it in a
# ``.crt`` file of the same name; IdPs pin the certificate, not a CA.
SAML_CERT_YEARS = 10


class KeysMissing(Exception):
    pass


def _saml_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Portcullis SAML SP")])
    start = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start.replace(year=start.year + SAML_CERT_YEARS))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_material(kind: str) -> bytes:
    if kind == "secret":
        return secrets.token_hex(32).encode()
    if kind == "encryption":
        return Fernet.generate_key()
    if kind == "saml":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _files(folder: Path, kind: str) -> list[Path]:
    """Newest first: names carry a sortable UTC stamp."""
    return sorted(folder.glob(f"{kind}-*{KINDS[kind]}"), reverse=True)


def _add(folder: Path, kind: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(3)
    path = folder / f"{kind}-{stamp}{KINDS[kind]}"
    material = _new_material(kind)
    if kind == "saml":
        # The certificate first: a key without it is never picked up.
        key = serialization.load_pem_private_key(material, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        path.with_suffix(".crt").write_bytes(_saml_certificate(key))
    _write_private(path, material)
    return path


def ensure_keys(folder: Path) -> list[Path]:
    """Create the folder and any missing kind of key; return what was made."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return [_add(folder, kind) for kind in KINDS if not _files(folder, kind)]


def rotate_keys(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_add(folder, kind) for kind in KINDS]


@dataclass(frozen=True)
class SamlKeyPair:
    key_file: Path
    cert_file: Path

    @property
    def certificate_pem(self) -> str:
        return self.cert_file.read_text()


@dataclass(frozen=True)
class KeyRing:
    secrets: tuple[str, ...]
    signing: tuple[tuple[str, ec.EllipticCurvePrivateKey], ...]
    encryption: MultiFernet
    # Newest first: the newest signs and decrypts; every one is published
    # in the SP metadata, so an IdP can roll over to the next.
    saml: tuple[SamlKeyPair, ...] = ()

    @property
    def secret_key(self) -> str:
        return self.secrets[0]


def load_keys(folder: Path) -> KeyRing:
    found = {kind: _files(folder, kind) for kind in KINDS}
    missing = [kind for kind, files in found.items() if not files]
    if missing:
        raise KeysMissing(
            f"no {', '.join(missing)} key in {folder}; run `idp init` first"
        )
    signing = []
    for path in found["signing"]:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeysMissing(f"{path} is not an EC private key")
        signing.append((path.stem.removeprefix("signing-"), key))
    saml = []
    for path in found["saml"]:
        cert = path.with_suffix(".crt")
        if not cert.exists():
            raise KeysMissing(f"{path} has no certificate beside it ({cert.name})")
        saml.append(SamlKeyPair(key_file=path.resolve(), cert_file=cert.resolve()))
    return KeyRing(
        secrets=tuple(p.read_text().strip() for p in found["secret"]),
        signing=tuple(signing),
        encryption=MultiFernet(
            [Fernet(p.read_bytes().strip()) for p in found["encryption"]]
        ),
        saml=tuple(saml),
    )

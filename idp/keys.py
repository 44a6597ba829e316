"""Key material in the keys folder: created once with mode 0600, rotated by
adding a newer file. The newest key of each kind signs or encrypts; every
key still present verifies or decrypts."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KINDS = {"secret": ".key", "signing": ".pem", "encryption": ".key"}


class KeysMissing(Exception):
    pass


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_material(kind: str) -> bytes:
    if kind == "secret":
        return secrets.token_hex(32).encode()
    if kind == "encryption":
        return Fernet.generate_key()
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
    _write_private(path, _new_material(kind))
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
class KeyRing:
    secrets: tuple[str, ...]
    signing: tuple[tuple[str, ec.EllipticCurvePrivateKey], ...]
    encryption: MultiFernet

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
    return KeyRing(
        secrets=tuple(p.read_text().strip() for p in found["secret"]),
        signing=tuple(signing),
        encryption=MultiFernet(
            [Fernet(p.read_bytes().strip()) for p in found["encryption"]]
        ),
    )

"""Password rules and argon2id hashing, bounded by a per-process semaphore."""

from __future__ import annotations

import threading
import unicodedata
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idp.services.errors import Busy, InvalidInput


class PasswordService:
    """Hashing with the configured argon2id cost, and the rules of a new
    password. One instance per application; the semaphore bounds how many
    hashes (19 MiB each by default) run at once in this process."""

    def __init__(
        self,
        *,
        memory_kib: int,
        time_cost: int,
        parallelism: int,
        min_length: int,
        max_length: int,
        refuse_common: bool,
        concurrency: int,
        wait_seconds: float,
    ) -> None:
        self.hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self.min_length = min_length
        self.max_length = max_length
        self.refuse_common = refuse_common
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(concurrency)
        self._dummy_hash: str | None = None

    @staticmethod
    def prepare(password: str) -> str:
        # NFC at set and at check alike, so the same typed text always
        # verifies whichever keyboard or OS composed it (ASVS 6.2.8).
        return unicodedata.normalize("NFC", password)

    def check_new(self, password: str) -> str:
        """The prepared password, or InvalidInput saying what is wrong."""
        if len(password) > self.max_length:
            raise InvalidInput(
                f"Use at most {self.max_length} characters.", code="password_too_long"
            )
        prepared = self.prepare(password)
        if len(prepared) < self.min_length:
            raise InvalidInput(
                f"Use at least {self.min_length} characters.", code="password_too_short"
            )
        if self.refuse_common and prepared.lower() in common_passwords():
            raise InvalidInput(
                "That password is one of the most common ones and easy to guess; "
                "choose another.",
                code="password_common",
            )
        return prepared

    def hash(self, password: str) -> str:
        with self._slot():
            return self.hasher.hash(self.prepare(password))

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). An overlong password or a missing hash
        still costs one hash, so timing does not tell them apart."""
        if len(password) > self.max_length:
            # Refused before hashing: nothing longer was ever stored.
            return False, False
        candidate = self.prepare(password)
        with self._slot():
            if stored_hash is None:
                self._verify_dummy(candidate)
                return False, False
            try:
                self.hasher.verify(stored_hash, candidate)
            except VerifyMismatchError:
                return False, False
            except (VerificationError, InvalidHashError):
                return False, False
            return True, self.hasher.check_needs_rehash(stored_hash)

    def _verify_dummy(self, candidate: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash("portcullis dummy password")
        try:
            self.hasher.verify(self._dummy_hash, candidate)
        except VerificationError:
            pass

    def _slot(self) -> _Slot:
        return _Slot(self._slots, self.wait_seconds)


class _Slot:
    def __init__(self, semaphore: threading.BoundedSemaphore, wait: float) -> None:
        self.semaphore = semaphore
        self.wait = wait

    def __enter__(self) -> None:
        if not self.semaphore.acquire(timeout=self.wait):
            raise Busy(
                "Too many sign-ins at once; try again in a moment.", retry_after=2
            )

    def __exit__(self, *exc: object) -> None:
        self.semaphore.release()


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = (
        resources.files("idp").joinpath("data/common-passwords.txt").read_text("utf-8")
    )
    return frozenset(
        line.lower() for line in text.splitlines() if line and not line.startswith("# ")
    )

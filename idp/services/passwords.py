"""Password rules and argon2id hashing, bounded by a per-process semaphore
and run on threads of their own at a lower CPU priority."""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idp.services.errors import Busy, InvalidInput

log = logging.getLogger(__name__)
T = TypeVar("T")
# The hash threads' nice value, above the request threads' (Linux applies
# it per thread). The scheduler then gives a runnable request thread about
# ten times the CPU share of a hash, so a storm of sign-ins slows the
# gateway's checks little; on an idle machine a hash still runs at full
# speed.
HASH_NICENESS = 10


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
        # Request threads that may wait for a slot: as many as there are
        # slots. Past that a sign-in is answered 429 at once, so waiting
        # sign-ins never hold every thread of a worker and starve the checks.
        self._queue = threading.BoundedSemaphore(concurrency * 2)
        self._threads = _HashThreads(concurrency)
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
        prepared = self.prepare(password)
        with self._slot():
            return self._threads.run(self.hasher.hash, prepared)

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). An overlong password or a missing hash
        still costs one hash, so timing does not tell them apart."""
        if len(password) > self.max_length:
            # Refused before hashing: nothing longer was ever stored.
            return False, False
        candidate = self.prepare(password)
        with self._slot():
            return self._threads.run(self._verify, stored_hash, candidate)

    def _verify(self, stored_hash: str | None, candidate: str) -> tuple[bool, bool]:
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
        return _Slot(self._queue, self._slots, self.wait_seconds)


class _HashThreads:
    """As many threads as hash slots, made on first use in each process (a
    forked gunicorn worker starts its own), each lowered to HASH_NICENESS.
    The caller holds a slot, so a thread is always free for its hash; it
    waits for the result while argon2, which releases the GIL, works."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._pid = 0
        self._pool: ThreadPoolExecutor | None = None

    def run(self, fn: Callable[..., T], *args: object) -> T:
        return self._executor().submit(fn, *args).result()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._pool = ThreadPoolExecutor(
                    max_workers=self._size,
                    thread_name_prefix="argon2",
                    initializer=_lower_priority,
                )
            return self._pool


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)
    except (AttributeError, OSError) as exc:
        # Not Linux, or not allowed: hashes then run at the request
        # threads' priority, as they would without this.
        log.warning("passwords.priority_unchanged error=%s", exc)


class _Slot:
    def __init__(
        self,
        queue: threading.BoundedSemaphore,
        semaphore: threading.BoundedSemaphore,
        wait: float,
    ) -> None:
        self.queue = queue
        self.semaphore = semaphore
        self.wait = wait

    def __enter__(self) -> None:
        if not self.queue.acquire(blocking=False):
            raise _busy()
        if not self.semaphore.acquire(timeout=self.wait):
            self.queue.release()
            raise _busy()

    def __exit__(self, *exc: object) -> None:
        self.semaphore.release()
        self.queue.release()


def _busy() -> Busy:
    return Busy("Too many sign-ins at once; try again in a moment.", retry_after=2)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = (
        resources.files("idp").joinpath("data/common-passwords.txt").read_text("utf-8")
    )
    return frozenset(
        line.lower() for line in text.splitlines() if line and not line.startswith("# ")
    )

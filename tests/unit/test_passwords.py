import threading

import pytest
from argon2 import PasswordHasher

from idp.services.errors import Busy, InvalidInput
from idp.services.passwords import PasswordService, common_passwords


def service(**kw) -> PasswordService:
    values = {
        "memory_kib": 64,
        "time_cost": 1,
        "parallelism": 1,
        "min_length": 12,
        "max_length": 1024,
        "refuse_common": True,
        "concurrency": 2,
        "wait_seconds": 1.0,
    }
    values.update(kw)
    return PasswordService(**values)


def test_hash_is_argon2id_with_configured_cost():
    h = service(memory_kib=19456, time_cost=2).hash("a fine long passphrase")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_verify_round_trip_and_mismatch():
    pw = service()
    h = pw.hash("a fine long passphrase")
    assert pw.verify(h, "a fine long passphrase") == (True, False)
    assert pw.verify(h, "a fine long passphrasE") == (False, False)


def test_changed_parameters_ask_for_a_rehash():
    old = PasswordHasher(memory_cost=32, time_cost=1, parallelism=1).hash(
        "a fine long passphrase"
    )
    assert service().verify(old, "a fine long passphrase") == (True, True)


def test_unicode_is_normalised_the_same_at_set_and_check():
    pw = service()
    composed = "caf\u00e9 au lait s'il vous pla\u00eet"
    decomposed = "cafe\u0301 au lait s'il vous pla\u0131\u0302t".replace(
        "\u0131\u0302", "i\u0302"
    )
    assert pw.verify(pw.hash(composed), decomposed)[0]


def test_no_truncation_past_72_bytes():
    pw = service()
    base = "x" * 100
    assert not pw.verify(pw.hash(base + "a"), base + "b")[0]


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("short", "password_too_short"),
        ("x" * 1025, "password_too_long"),
        ("password1234", "password_common"),
        ("PASSWORD1234", "password_common"),
    ],
    ids=["short", "too-long", "common", "common-any-case"],
)
def test_new_password_rules(password, code):
    with pytest.raises(InvalidInput) as exc:
        service().check_new(password)
    assert exc.value.code == code


def test_a_long_uncommon_password_is_fine_without_composition_rules():
    assert (
        service().check_new("all lower case words here") == "all lower case words here"
    )


class CountingHasher:
    def __init__(self, real: PasswordHasher) -> None:
        self.real = real
        self.verifications = 0

    def verify(self, stored: str, password: str) -> bool:
        self.verifications += 1
        return self.real.verify(stored, password)

    def hash(self, password: str) -> str:
        return self.real.hash(password)


def test_overlong_password_is_refused_without_hashing():
    pw = service()
    pw.hasher = CountingHasher(pw.hasher)
    assert pw.verify("$argon2id$whatever", "x" * 1_000_000) == (False, False)
    assert pw.hasher.verifications == 0


def test_unknown_account_still_costs_a_hash():
    pw = service()
    pw.hasher = CountingHasher(pw.hasher)
    assert pw.verify(None, "anything at all") == (False, False)
    assert pw.hasher.verifications == 1


def test_semaphore_answers_busy_when_every_slot_is_taken():
    pw = service(concurrency=1, wait_seconds=0.05)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with pw._slot():
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    try:
        with pytest.raises(Busy) as exc:
            pw.hash("a fine long passphrase")
        assert exc.value.status == 429 and exc.value.retry_after > 0
    finally:
        release.set()
        thread.join()


def test_common_list_is_shipped_and_large():
    words = common_passwords()
    assert len(words) > 10_000
    assert "password" in words and "12345678" in words


def test_hashes_run_on_threads_of_lower_priority():
    """A storm of sign-ins must leave the CPU to the gateway's checks: each
    hash runs on a thread whose nice value is HASH_NICENESS above ours."""
    import os

    from idp.services.passwords import HASH_NICENESS

    pw = service()
    seen: list[tuple[int, int]] = []

    class Recording:
        def __init__(self, inner: PasswordHasher) -> None:
            self.inner = inner

        def hash(self, password: str) -> str:
            native = threading.get_native_id()
            seen.append((native, os.getpriority(os.PRIO_PROCESS, native)))
            return self.inner.hash(password)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.inner, name)

    pw.hasher = Recording(pw.hasher)  # type: ignore[assignment]
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pw.check_new("a fine long passphrase")
    stored = pw.hash("a fine long passphrase")

    assert pw.verify(stored, "a fine long passphrase") == (True, False)
    ((thread, niceness),) = seen
    assert thread != threading.get_native_id()
    assert niceness == min(19, ours + HASH_NICENESS)


def test_only_as_many_sign_ins_wait_as_there_are_slots():
    """Past the slots and as many waiting, a hash is refused at once rather
    than holding one more request thread for hash_wait_seconds."""
    pw = service(concurrency=1, wait_seconds=30)
    holding = threading.Event()
    release = threading.Event()
    outcomes: list[str] = []

    def hold() -> None:
        with pw._slot():
            holding.set()
            release.wait(30)

    def wait_for_slot() -> None:
        pw.hash("a fine long passphrase")
        outcomes.append("hashed")

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    try:
        # The waiter takes the one place in the queue, eventually.
        for _ in range(500):
            if pw._queue._value == 0:  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
        with pytest.raises(Busy):
            pw.hash("a fine long passphrase")
    finally:
        release.set()
        holder.join()
        waiter.join()
    assert outcomes == ["hashed"]

"""The password hashers: Argon2id at OWASP's parameters for new passwords, Django's PBKDF2 strings still
read, every hash computed on threads of lower priority than the caller's."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from unittest.mock import patch

import pytest
from django.contrib.auth.hashers import (
    Argon2PasswordHasher,
    PBKDF2PasswordHasher,
    check_password,
    get_hasher,
    identify_hasher,
    make_password,
)

from kbsite import settings as site_settings
from kbsite.hashers import THREAD_NAME_PREFIX, YieldingArgon2PasswordHasher, YieldingPBKDF2PasswordHasher

pytestmark = pytest.mark.unit

ITERATIONS = 1000  # the algorithm, not its cost, is under test


@pytest.fixture
def site_hashers(settings):
    """The site's own list of hashers (the test settings hash with MD5 for speed)."""
    settings.PASSWORD_HASHERS = site_settings.PASSWORD_HASHERS
    settings.PASSWORD_HASHING_NICENESS = 10


def test_it_writes_and_reads_exactly_djangos_pbkdf2_strings() -> None:
    ours, django = YieldingPBKDF2PasswordHasher(), PBKDF2PasswordHasher()

    encoded = ours.encode("correct horse", "somesalt", ITERATIONS)

    assert encoded == django.encode("correct horse", "somesalt", ITERATIONS)
    assert ours.algorithm == "pbkdf2_sha256"
    assert ours.verify("correct horse", encoded) and django.verify("correct horse", encoded)
    assert not ours.verify("wrong horse", encoded)


def test_it_writes_argon2id_strings_at_owasps_parameters_that_djangos_hasher_reads() -> None:
    ours, django = YieldingArgon2PasswordHasher(), Argon2PasswordHasher()

    encoded = ours.encode("correct horse", ours.salt())

    decoded = django.decode(encoded)
    assert (decoded["variety"], decoded["memory_cost"], decoded["time_cost"], decoded["parallelism"]) == (
        "argon2id",
        19456,
        2,
        1,
    )
    assert django.verify("correct horse", encoded) and ours.verify("correct horse", encoded)
    assert not ours.verify("wrong horse", encoded)
    assert not ours.must_update(encoded)
    assert django.must_update(encoded)  # Django's own parameters differ: the site's must be the ones read


def test_new_passwords_are_argon2id_and_old_pbkdf2_ones_sign_in_and_are_rehashed(site_hashers) -> None:
    old = PBKDF2PasswordHasher().encode("s3cret", "salt1234", ITERATIONS)
    rehashed = []

    assert isinstance(get_hasher("default"), YieldingArgon2PasswordHasher)
    assert isinstance(identify_hasher(make_password("s3cret")), YieldingArgon2PasswordHasher)
    assert isinstance(identify_hasher(old), YieldingPBKDF2PasswordHasher)
    assert check_password("s3cret", old, setter=rehashed.append)
    assert not check_password("wrong", old)

    assert len(rehashed) == 1 and rehashed[0] == "s3cret"


def test_an_argon2_hash_of_djangos_heavier_parameters_signs_in_and_moves_to_the_sites(site_hashers) -> None:
    heavier = Argon2PasswordHasher().encode("s3cret", "saltsaltsaltsalt")
    rehashed = []

    assert check_password("s3cret", heavier, setter=rehashed.append)
    assert rehashed == ["s3cret"]


def _spy_on(hasher_class, method: str, seen: dict):
    real = getattr(hasher_class, method)

    def spy(self, *args):
        native = threading.get_native_id()
        os_name = Path(f"/proc/self/task/{native}/comm").read_text().strip()
        seen[method] = (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, native), os_name)
        return real(self, *args)

    return patch.object(hasher_class, method, spy)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux's")
def test_pbkdf2_is_computed_on_a_lower_priority_thread_while_the_caller_waits(site_hashers) -> None:
    seen = {}

    with _spy_on(PBKDF2PasswordHasher, "encode", seen):
        encoded = YieldingPBKDF2PasswordHasher().encode("pw", "salt5678", ITERATIONS)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert encoded == PBKDF2PasswordHasher().encode("pw", "salt5678", ITERATIONS)
    thread, nice, os_name = seen["encode"]
    assert thread.startswith(THREAD_NAME_PREFIX) and nice == min(19, mine + 10)
    assert os_name == "kb-hashing"  # what top -H and /proc/PID/task show


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux's")
def test_argon2_hashes_and_checks_on_a_lower_priority_thread_while_the_caller_waits(site_hashers) -> None:
    seen = {}
    hasher = YieldingArgon2PasswordHasher()

    with _spy_on(Argon2PasswordHasher, "encode", seen), _spy_on(Argon2PasswordHasher, "verify", seen):
        assert hasher.verify("pw", hasher.encode("pw", "salt5678salt5678"))

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for method in ("encode", "verify"):
        thread, nice, os_name = seen[method]
        assert thread.startswith(THREAD_NAME_PREFIX) and os_name == "kb-hashing", method
        assert nice == min(19, mine + 10), method

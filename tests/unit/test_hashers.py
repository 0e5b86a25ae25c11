"""The password hasher: Django's PBKDF2 strings, computed on threads of lower priority than the caller's."""

from __future__ import annotations

import os
import sys
import threading
from unittest.mock import patch

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, check_password, get_hasher, make_password

from kbsite.hashers import THREAD_NAME_PREFIX, YieldingPBKDF2PasswordHasher

pytestmark = pytest.mark.unit

ITERATIONS = 1000  # the algorithm, not its cost, is under test


def test_it_writes_and_reads_exactly_djangos_pbkdf2_strings() -> None:
    ours, django = YieldingPBKDF2PasswordHasher(), PBKDF2PasswordHasher()

    encoded = ours.encode("correct horse", "somesalt", ITERATIONS)

    assert encoded == django.encode("correct horse", "somesalt", ITERATIONS)
    assert ours.algorithm == "pbkdf2_sha256"
    assert ours.verify("correct horse", encoded) and django.verify("correct horse", encoded)
    assert not ours.verify("wrong horse", encoded)


def test_the_site_hashes_new_passwords_with_it_and_reads_the_old_ones(settings) -> None:
    settings.PASSWORD_HASHERS = ["kbsite.hashers.YieldingPBKDF2PasswordHasher"]
    old = PBKDF2PasswordHasher().encode("s3cret", "salt1234", ITERATIONS)

    assert isinstance(get_hasher("default"), YieldingPBKDF2PasswordHasher)
    assert check_password("s3cret", old)
    assert check_password("s3cret", make_password("s3cret"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux's")
def test_the_hash_is_computed_on_a_lower_priority_thread_while_the_caller_waits(settings) -> None:
    settings.PASSWORD_HASHING_NICENESS = 10
    seen = {}
    hash_it = PBKDF2PasswordHasher.encode

    def spy(self, password, salt, iterations=None):
        seen["thread"] = threading.current_thread().name
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return hash_it(self, password, salt, iterations)

    with patch.object(PBKDF2PasswordHasher, "encode", spy):
        encoded = YieldingPBKDF2PasswordHasher().encode("pw", "salt5678", ITERATIONS)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert encoded == hash_it(PBKDF2PasswordHasher(), "pw", "salt5678", ITERATIONS)
    assert seen["thread"].startswith(THREAD_NAME_PREFIX)
    assert seen["nice"] == min(19, mine + 10)

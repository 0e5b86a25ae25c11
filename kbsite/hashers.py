"""Password hashers: Argon2id at OWASP's minimum, computed on threads that yield the CPU to searches.

A sign-in hashes its password once. Django's default, PBKDF2-SHA256 at a million iterations, costs a
quarter to a third of a second of a core (0.225-0.365 s measured here), so on a small server two
sign-ins a second take half a core from the searches running beside them. Argon2id, the algorithm
OWASP's password storage cheat sheet and Django's documentation put first, is memory-hard: at the
parameters OWASP recommends as a minimum (19 MiB, two passes, one lane) an attacker's GPU gains far less on
it than on PBKDF2, and a sign-in costs some 30 ms of CPU instead (README: Passwords).

Both hashers write the strings Django's own write (same algorithm names), so Django's hashers read
them and these read Django's. A password stored with PBKDF2 still signs in and is re-hashed with
Argon2id then (Django's check_password does that when the preferred hasher changed), and one stored
with other Argon2 parameters is re-hashed with these.

The hashing runs on a few threads kept for it whose priority is lowered by PASSWORD_HASHING_NICENESS
(Linux nice steps): with searches running, a sign-in waits a little longer for the CPU instead of every
search waiting for it. At most one hash per thread is in flight, so at most four times 19 MiB.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher, PBKDF2PasswordHasher

from search.priority import lower_this_threads_priority, name_this_thread

THREAD_NAME_PREFIX = "kbsite-password-hashing"

_T = TypeVar("_T")


@functools.cache
def _hashing_threads() -> ThreadPoolExecutor:
    """Threads kept for hashing passwords, started on first use, each lowered once as it starts."""
    def started() -> None:
        name_this_thread("kb-hashing")
        lower_this_threads_priority(getattr(settings, "PASSWORD_HASHING_NICENESS", 10), what="a password hashing thread")

    return ThreadPoolExecutor(
        max_workers=min(os.cpu_count() or 1, 4), thread_name_prefix=THREAD_NAME_PREFIX, initializer=started
    )


def _on_hashing_thread(work: Callable[..., _T], *args: object) -> _T:
    """Run `work` on a hashing thread while the caller waits."""
    return _hashing_threads().submit(work, *args).result()


class YieldingPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2-SHA256 exactly as Django's, hashed on the low-priority threads; the caller's thread waits.

    It reads the passwords stored before Argon2id became the default. Its `verify` calls `encode`, so
    checking a password runs on the hashing threads too.
    """

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        return _on_hashing_thread(super().encode, password, salt, iterations)


class YieldingArgon2PasswordHasher(Argon2PasswordHasher):
    """Argon2id as Django writes it, at OWASP's recommended minimum, on the low-priority threads.

    19 MiB (19,456 KiB), two passes, one lane: OWASP's password storage cheat sheet. A lane per core
    would finish one sign-in sooner but take every core meanwhile. Django's Argon2 hasher verifies
    without calling `encode`, so `verify` is sent to the hashing threads as well.
    """

    time_cost = 2
    memory_cost = 19456
    parallelism = 1

    def encode(self, password: str, salt: str) -> str:
        return _on_hashing_thread(super().encode, password, salt)

    def verify(self, password: str, encoded: str) -> bool:
        return _on_hashing_thread(super().verify, password, encoded)

"""Django's PBKDF2 password hasher, computed on threads that yield the CPU to searches.

A sign-in hashes its password a million times (PBKDF2, a third of a second or more of a core). On a
small server two sign-ins a second take most of a core from the searches running beside them. The
hash here is the one Django computes (same algorithm name, same strings), on a few threads kept for
it whose priority is lowered by PASSWORD_HASHING_NICENESS (Linux nice steps): with searches running,
a sign-in waits a little longer for the CPU instead of every search waiting for it.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from search.priority import lower_this_threads_priority

THREAD_NAME_PREFIX = "kbsite-password-hashing"


@functools.cache
def _hashing_threads() -> ThreadPoolExecutor:
    """Threads kept for hashing passwords, started on first use, each lowered once as it starts."""
    lower = functools.partial(
        lower_this_threads_priority,
        getattr(settings, "PASSWORD_HASHING_NICENESS", 10),
        what="a password hashing thread",
    )
    return ThreadPoolExecutor(
        max_workers=min(os.cpu_count() or 1, 4), thread_name_prefix=THREAD_NAME_PREFIX, initializer=lower
    )


class YieldingPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2-SHA256 exactly as Django's, hashed on the low-priority threads; the caller's thread waits."""

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        hash_it = super().encode
        return _hashing_threads().submit(hash_it, password, salt, iterations).result()

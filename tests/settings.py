"""Test settings: the project's settings with Qdrant's embedded store in memory, one per QdrantService."""

from kbsite.settings import *  # noqa: F403

QDRANT = {**QDRANT, "URL": None, "PATH": ":memory:"}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A key of the tests' own: `bootstrap` run in a test then writes no key file into the real var/.
SECRET_KEY = "kbsite-tests-only-" + "k" * 40

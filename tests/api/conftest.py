"""The API tests' shared state: rate-limit counters start empty in every test."""

from __future__ import annotations

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _empty_rate_limit_counters():
    # The throttles count in the cache per token id, and databases reuse ids between tests.
    cache.clear()
    yield
    cache.clear()

"""The API tests' shared state: rate-limit counters start empty in every test; an editor and a reader of the
module's `kb`."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from knowledge.models import Role
from tests.api.test_api import bearer, issue_token
from tests.factories import add_member, make_user


@pytest.fixture(autouse=True)
def _empty_rate_limit_counters():
    # The throttles count in the cache per token id, and databases reuse ids between tests.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def editor_headers(kb):
    """Bearer headers of eddie, an editor of the test module's `kb` fixture."""
    user = make_user(username="eddie")
    add_member(kb, user, Role.EDITOR)
    return bearer(issue_token(user))


@pytest.fixture
def reader_headers(kb):
    """Bearer headers of rita, a reader of the test module's `kb` fixture."""
    user = make_user(username="rita")
    add_member(kb, user, Role.READER)
    return bearer(issue_token(user))

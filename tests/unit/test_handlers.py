"""Which requests share the process's sync thread and which keep Django's thread per request."""

from __future__ import annotations

from unittest import mock

import pytest

from kbsite.handlers import SharedThreadForAPIHandler

KB = "6a1f7a4e-0000-4000-8000-000000000020"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/accounts/login/"),  # PBKDF2: a third of a second or more
        ("GET", "/accounts/login/"),
        ("POST", "/accounts/logout/"),
        ("POST", "/admin/login/"),
        ("GET", "/admin/knowledge/knowledgebase/"),
        ("POST", "/kbs/upload/"),
        ("POST", f"/api/v1/kbs/{KB}/documents"),  # a file hashed and stored
        ("POST", "/api/v1/kbs/field-notes/documents/text"),
    ],
)
async def test_heavy_sync_work_keeps_a_thread_of_its_own(method: str, path: str) -> None:
    django = mock.AsyncMock()
    scope = {"type": "http", "method": method, "path": path}

    await SharedThreadForAPIHandler(django)(scope, None, None)

    django.assert_awaited_once_with(scope, None, None)
    django.handle.assert_not_awaited()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/search"),
        ("GET", "/api/v1/health"),
        ("GET", f"/api/v1/kbs/{KB}/documents"),  # listing documents is light
        ("GET", "/search/"),
        ("GET", f"/kbs/{KB}/"),
        ("POST", f"/api/v1/kbs/{KB}/documents/{KB}/archive"),
    ],
)
async def test_light_requests_share_the_sync_thread(method: str, path: str) -> None:
    django = mock.AsyncMock()
    scope = {"type": "http", "method": method, "path": path}

    await SharedThreadForAPIHandler(django)(scope, None, None)

    django.handle.assert_awaited_once_with(scope, None, None)
    django.assert_not_awaited()

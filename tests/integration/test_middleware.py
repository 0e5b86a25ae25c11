"""Django's middleware on the async path: hooks without I/O stay on the event loop, sessions and messages still work."""

from __future__ import annotations

import re

import django.core.handlers.base
import django.utils.deprecation
import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management import call_command
from django.test import AsyncClient
from django.test.client import AsyncClientHandler
from django.urls import reverse

import kbsite.middleware
from kbsite.handlers import ASGIHandler, InlineHooksLoading
from knowledge.models import KnowledgeBase
from tests.api.test_api import bearer, issue_token
from tests.factories import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class InlineHooksClientHandler(InlineHooksLoading, AsyncClientHandler):
    """The test client's handler, loading the middleware as kbsite's ASGI handler does."""


def client(*, enforce_csrf_checks: bool = False) -> AsyncClient:
    made = AsyncClient(enforce_csrf_checks=enforce_csrf_checks)
    made.handler = InlineHooksClientHandler(enforce_csrf_checks)
    return made


@pytest.fixture
def hops(monkeypatch) -> list[str]:
    """The middleware hooks sent to a thread, as the requests go: by kbsite's middleware, by Django's
    `MiddlewareMixin`, or adapted by Django's handler as it loads them (a sync `process_view`)."""
    sent: list[str] = []
    real = kbsite.middleware.sync_to_async

    def spy(hook, **kwargs):
        owner = getattr(hook, "__self__", None)
        name = f"{type(owner).__name__}.{hook.__name__}" if owner is not None else hook.__qualname__

        def hop(*args, **kw):
            sent.append(name)
            return real(hook, **kwargs)(*args, **kw)

        return hop

    monkeypatch.setattr(kbsite.middleware, "sync_to_async", spy)
    monkeypatch.setattr(django.utils.deprecation, "sync_to_async", spy)
    monkeypatch.setattr(django.core.handlers.base, "sync_to_async", spy)
    return sent


async def test_the_site_handler_runs_a_light_requests_hooks_on_the_event_loop(hops) -> None:
    headers = bearer(await sync_to_async(issue_token)(await sync_to_async(make_user)(username="hal")))
    # Made as kbsite.asgi makes it, after the spy is in place: Django adapts the hooks as it loads them.
    transport = httpx.ASGITransport(app=ASGIHandler())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        health = await http.get("/api/v1/health")
        created = await http.post("/api/v1/kbs", json={"name": "Hal's notes"}, headers=headers)

    assert health.status_code == 200
    # The hooks ran: SecurityMiddleware's and XFrameOptionsMiddleware's headers are there.
    assert health.headers["X-Content-Type-Options"] == "nosniff" and health.headers["X-Frame-Options"] == "DENY"
    # An API POST (csrf-exempt, a token's) passes CSRF's view hook on the loop too.
    assert created.status_code == 201, created.text
    assert hops == []


def test_settings_name_djangos_middleware_so_its_deploy_checks_see_it(capsys) -> None:
    assert set(kbsite.middleware.INLINE_HOOKS) <= set(settings.MIDDLEWARE)

    call_command("check", "--deploy", "--fail-level", "CRITICAL")

    reported = capsys.readouterr()
    for missing in ("security.W001", "security.W002", "security.W003"):
        assert missing not in reported.out + reported.err


async def test_signing_in_saves_the_session_on_a_thread_and_the_next_request_is_signed_in(hops) -> None:
    await sync_to_async(make_user)(username="erin")
    members = client(enforce_csrf_checks=True)
    login = reverse("web:login")
    form = (await members.get(login)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    hops.clear()

    signed_in = await members.post(login, {"username": "erin", "password": "pw-erin", "csrfmiddlewaretoken": token})

    assert signed_in.status_code == 302
    assert "SessionMiddleware.process_response" in hops
    page = await members.get(reverse("web:knowledge_bases"))
    assert page.status_code == 200 and "erin" in page.content.decode()


async def test_a_post_without_its_csrf_token_is_refused() -> None:
    await sync_to_async(make_user)(username="gina")

    refused = await client(enforce_csrf_checks=True).post(
        reverse("web:login"), {"username": "gina", "password": "pw-gina"}
    )

    assert refused.status_code == 403


async def test_a_message_set_by_one_request_is_shown_by_the_next(hops) -> None:
    members = client()
    await members.aforce_login(await sync_to_async(make_user)(username="frank"))

    created = await members.post(
        reverse("web:kb_new"), {"name": "Field guide", "description": "", "chunk_size": 200, "chunk_overlap": 40}
    )

    kb = await KnowledgeBase.objects.aget(name="Field guide")
    assert created.status_code == 302 and "MessageMiddleware.process_response" in hops
    shown = (await members.get(reverse("web:kb", args=[kb.pk]))).content.decode()
    assert "Field guide is yours" in shown
    again = (await members.get(reverse("web:kb", args=[kb.pk]))).content.decode()
    assert "Field guide is yours" not in again

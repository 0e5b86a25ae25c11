"""Django's middleware on the async path: hooks without I/O stay on the event loop, sessions and messages still work."""

from __future__ import annotations

import re

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
from kbsite.handlers import InlineHooksLoading
from knowledge.models import KnowledgeBase
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
    """The middleware hooks sent to a thread (by kbsite's middleware or Django's own), as the requests go."""
    sent: list[str] = []
    real = kbsite.middleware.sync_to_async

    def spy(hook, **kwargs):
        sent.append(f"{type(hook.__self__).__name__}.{hook.__name__}")
        return real(hook, **kwargs)

    monkeypatch.setattr(kbsite.middleware, "sync_to_async", spy)
    monkeypatch.setattr(django.utils.deprecation, "sync_to_async", spy)
    return sent


async def test_the_site_application_runs_a_light_requests_hooks_on_the_event_loop(hops) -> None:
    from kbsite.asgi import django_application

    transport = httpx.ASGITransport(app=django_application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/api/v1/health")

    assert response.status_code == 200
    # The hooks ran: SecurityMiddleware's and XFrameOptionsMiddleware's headers are there.
    assert response.headers["X-Content-Type-Options"] == "nosniff" and response.headers["X-Frame-Options"] == "DENY"
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


async def test_a_post_without_its_csrf_token_is_refused(hops) -> None:
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

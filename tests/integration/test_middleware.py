"""Django's middleware on the async path: hooks without I/O stay on the event loop, sessions and messages still work."""

from __future__ import annotations

import re

import django.utils.deprecation
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.urls import reverse

import kbsite.middleware
from knowledge.models import KnowledgeBase
from tests.factories import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


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


async def test_a_request_that_reads_no_session_runs_every_hook_on_the_event_loop(hops) -> None:
    response = await AsyncClient().get("/api/v1/health")

    assert response.status_code == 200
    # The hooks ran: SecurityMiddleware's and XFrameOptionsMiddleware's headers are there.
    assert response["X-Content-Type-Options"] == "nosniff" and response["X-Frame-Options"] == "DENY"
    assert hops == []


async def test_signing_in_saves_the_session_on_a_thread_and_the_next_request_is_signed_in(hops) -> None:
    await sync_to_async(make_user)(username="erin")
    client = AsyncClient(enforce_csrf_checks=True)
    login = reverse("web:login")
    form = (await client.get(login)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    hops.clear()

    signed_in = await client.post(login, {"username": "erin", "password": "pw-erin", "csrfmiddlewaretoken": token})

    assert signed_in.status_code == 302
    assert "SessionMiddleware.process_response" in hops
    page = await client.get(reverse("web:knowledge_bases"))
    assert page.status_code == 200 and "erin" in page.content.decode()


async def test_a_message_set_by_one_request_is_shown_by_the_next(hops) -> None:
    client = AsyncClient()
    await client.aforce_login(await sync_to_async(make_user)(username="frank"))

    created = await client.post(
        reverse("web:kb_new"), {"name": "Field guide", "description": "", "chunk_size": 200, "chunk_overlap": 40}
    )

    kb = await KnowledgeBase.objects.aget(name="Field guide")
    assert created.status_code == 302 and "MessageMiddleware.process_response" in hops
    shown = (await client.get(reverse("web:kb", args=[kb.pk]))).content.decode()
    assert "Field guide is yours" in shown
    again = (await client.get(reverse("web:kb", args=[kb.pk]))).content.decode()
    assert "Field guide is yours" not in again

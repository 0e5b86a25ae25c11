"""The server's start-up hooks (kbsite.lifespan): work done once at start, not in a request."""

from __future__ import annotations

import sys
from unittest.mock import patch

import pytest
from django.urls import URLResolver, clear_url_caches, reverse

from kbsite.lifespan import STARTUP_HOOKS, build_url_maps, shorten_gil_turns

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh_resolvers():
    clear_url_caches()  # the resolvers, and so their maps, are made anew from here
    yield
    clear_url_caches()


def _names() -> list[str]:
    # One name of the root and one of each namespace the site reverses in its requests.
    kb_id, document_id = "5b0e8a52-1f3c-4d5e-9a7b-2c4d6e8f0a1b", "7c1f9b63-2a4d-4e6f-8b9c-3d5e7f9a1b2c"
    return [
        reverse("api-v1:document", kwargs={"kb_id": kb_id, "document_id": document_id}),
        reverse("admin:index"),
        reverse("web:login"),
    ]


async def test_after_start_up_reversing_a_name_builds_no_url_maps(fresh_resolvers) -> None:
    await build_url_maps()

    with patch.object(URLResolver, "_populate", side_effect=AssertionError("a URL map was built in a request")):
        names = _names()

    assert names[0].endswith("/documents/7c1f9b63-2a4d-4e6f-8b9c-3d5e7f9a1b2c") and names[1].startswith("/")


def test_without_it_the_first_reverse_builds_them(fresh_resolvers) -> None:
    built = []
    real = URLResolver._populate

    def spy(self):
        built.append(self)
        return real(self)

    with patch.object(URLResolver, "_populate", spy):
        _names()

    assert built


def test_the_maps_are_built_before_the_heap_is_frozen() -> None:
    assert STARTUP_HOOKS.index("kbsite.lifespan.build_url_maps") < STARTUP_HOOKS.index(
        "kbsite.lifespan.freeze_startup_heap"
    )


@pytest.fixture
def switch_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


async def test_start_up_shortens_the_turns_threads_take_at_the_gil(settings, switch_interval) -> None:
    sys.setswitchinterval(0.005)  # Python's default
    settings.GIL_SWITCH_INTERVAL_MS = 1

    await shorten_gil_turns()

    assert sys.getswitchinterval() == pytest.approx(0.001)
    assert "kbsite.lifespan.shorten_gil_turns" in STARTUP_HOOKS

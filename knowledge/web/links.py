"""The members' pages' navigation links, reversed once per URL prefix instead of on every page."""

from __future__ import annotations

from functools import lru_cache

from django.http import HttpRequest
from django.urls import get_script_prefix, reverse

NAVIGATION = {"home": "web:home", "search": "web:search", "kbs": "web:knowledge_bases", "logout": "web:logout"}


def site_links(request: HttpRequest) -> dict[str, dict[str, str]]:
    """Template context processor: `site_links.search` and the others, for the pages' header.

    Each `{% url %}` of a namespaced view looks up the active language through asgiref's context-local
    storage, which in an async view costs more than the rest of the header; the links only change
    with the prefix the site is served under.
    """
    return {"site_links": _links(get_script_prefix())}


@lru_cache(maxsize=8)
def _links(prefix: str) -> dict[str, str]:
    return {name: reverse(view) for name, view in NAVIGATION.items()}

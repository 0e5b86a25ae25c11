"""Rate limits per API token (or per user on a browser session), read from settings: searches and uploads."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from ninja.throttling import SimpleRateThrottle


class TokenRateThrottle(SimpleRateThrottle):
    """settings.SEARCH[setting] calls per period for each token, kept in Django's cache.

    With the default local-memory cache each server process counts on its own; point CACHES at a
    shared cache for one count across processes.
    """

    setting = "RATE_LIMIT"

    def __init__(self) -> None:
        # The rate is read per request, so a changed setting applies without rebuilding the API.
        self.rate = None

    def allow_request(self, request: HttpRequest) -> bool:
        self.rate = settings.SEARCH.get(self.setting)
        if not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request)

    def get_cache_key(self, request: HttpRequest) -> str:
        token_id = getattr(request, "api_token_id", None)
        ident = f"token-{token_id}" if token_id is not None else f"user-{request.auth.pk}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class SearchRateThrottle(TokenRateThrottle):
    """KBSITE_SEARCH_RATE_LIMIT searches per period."""

    scope = "search"
    setting = "RATE_LIMIT"


class UploadRateThrottle(TokenRateThrottle):
    """KBSITE_UPLOAD_RATE_LIMIT uploads (files and text documents together) per period."""

    scope = "upload"
    setting = "UPLOAD_RATE_LIMIT"

"""How API callers prove who they are: a personal token as a Bearer header, or the browser's session."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer

from knowledge.services.tokens import ApiTokenService


class TokenAuth(HttpBearer):
    """`Authorization: Bearer kbs_…`, a token made in the admin or with `manage.py create_api_token`."""

    async def authenticate(self, request: HttpRequest, token: str) -> Any:
        api_token = await ApiTokenService().authenticate(token)
        if api_token is None:
            return None
        # Rate limits count per token; the throttle reads this.
        request.api_token_id = api_token.pk
        return api_token.user


class SessionAuth(APIKeyCookie):
    """The admin's login session, for API calls from the browser (unsafe methods need the CSRF token)."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        # Without a session cookie this is not a browser call: skip the CSRF check, so that a
        # missing or bad token answers 401, not "CSRF check failed".
        if self.param_name not in request.COOKIES:
            return None
        return super()._get_key(request)

    async def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = await request.auser()
        return user if user.is_authenticated and user.is_active else None

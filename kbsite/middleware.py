"""Django's own middleware, with the hooks that do no I/O run on the event loop instead of a thread.

Settings name Django's classes (its deploy checks find them by dotted path); `kbsite.handlers` loads
these subclasses in their place (`INLINE_HOOKS`). Under ASGI, Django's `MiddlewareMixin` sends every
`process_request` and `process_response` of its sync middleware through `sync_to_async`, and Django's
handler does the same with a sync `process_view`: a dozen hops to a thread and back for each request,
though most hooks only read a header or set one. Under 100 connections of searches the event loop
spent 14 % of its time making those hops (py-spy). Here each hook runs inline unless it may touch the
database or the cache, which only happens in a few cases Django documents and each class names: a
session that was read or changed (or saved on every request), a message stored or read, the CSRF
token kept in the session or checked on a protected form.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110's, as Django's CSRF check has them


class InlineHooksMixin:
    """Runs the hooks of a Django `MiddlewareMixin` subclass on the event loop unless one says it needs a thread."""

    def request_needs_thread(self, request) -> bool:
        return False

    def response_needs_thread(self, request, response) -> bool:
        return False

    async def __acall__(self, request):
        # As MiddlewareMixin.__acall__, with the hop only where a hook may do I/O.
        response = None
        if hasattr(self, "process_request"):
            if self.request_needs_thread(request):
                response = await sync_to_async(self.process_request, thread_sensitive=True)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    """Headers and the HTTPS redirect: no I/O."""


class SessionMiddleware(InlineHooksMixin, sessions.SessionMiddleware):
    """Making the (lazy) session is no I/O; saving it is, and so is anything after it was read."""

    def response_needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.accessed or session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    """User agents, the slash redirect (a URL resolved) and Content-Length: no I/O."""


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """The token comes from a cookie (no I/O), or from the session when CSRF_USE_SESSIONS is set.

    Loaded by an async handler only (`kbsite.handlers`): its `process_view` is a coroutine.
    """

    def request_needs_thread(self, request) -> bool:
        return settings.CSRF_USE_SESSIONS

    def response_needs_thread(self, request, response) -> bool:
        return settings.CSRF_USE_SESSIONS

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        # Django would send a sync process_view to a thread on every request. Only checking the token of
        # an unsafe request to a protected view may do I/O (its form body parsed, the session read).
        view = super().process_view
        if (
            getattr(request, "csrf_processing_done", False)
            or getattr(callback, "csrf_exempt", False)
            or request.method in SAFE_METHODS
        ):
            return view(request, callback, callback_args, callback_kwargs)
        return await sync_to_async(view, thread_sensitive=True)(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    """Sets the lazy `request.user` and `request.auser`: the user is read only when asked for."""


class MessageMiddleware(InlineHooksMixin, messages.MessageMiddleware):
    """Storage is made lazily; storing messages, or reading them (the session's), is I/O."""

    def response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    """One header: no I/O."""


#: Django's middleware by dotted path, and the subclass `kbsite.handlers` loads in its place.
INLINE_HOOKS = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
}

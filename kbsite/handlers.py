"""Django's ASGI handler, with its middleware's light hooks on the event loop, and the API's and the members' pages'
light requests sharing one thread for their database work."""

from __future__ import annotations

import re

from django.core.handlers import asgi, base

# Requests whose sync work is heavy keep Django's thread per request, so none of it holds a search:
# the admin's sync views, sign-in and sign-out (PBKDF2 hashes a password for a third of a second or
# more), and uploads (a file of up to the upload limit hashed and stored).
OWN_THREAD_PATHS = re.compile(r"^/(?:admin/|accounts/|kbs/upload/$|api/v1/kbs/[^/]+/documents(?:/text)?$)")


def needs_own_thread(scope: dict) -> bool:
    """Whether the request's sync work may be long enough to hold the shared thread (see OWN_THREAD_PATHS)."""
    if not OWN_THREAD_PATHS.match(scope["path"]):
        return False
    # An upload path's GET lists documents: light. Sign-in and admin pages: any method.
    return scope["method"] != "GET" or not scope["path"].startswith("/api/")


class InlineHooksLoading:
    """Loads Django's middleware named in MIDDLEWARE as `kbsite.middleware`'s subclasses, hooks inline where no I/O.

    Settings keep Django's dotted paths: its deploy checks (security.W001-W003 and those they gate,
    HSTS, the HTTPS redirect, secure cookies) look for them there, and skip or misreport a subclass.
    Django resolves each path with `import_string` while it loads the middleware, once per handler;
    here that lookup maps Django's classes to their subclasses for the length of the loading.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        from kbsite.middleware import INLINE_HOOKS  # Django's middleware modules need the apps loaded

        import_string = base.import_string

        def resolve(path: str):
            return INLINE_HOOKS.get(path) or import_string(path)

        base.import_string = resolve
        try:
            super().load_middleware(is_async)
        finally:
            base.import_string = import_string


class ASGIHandler(InlineHooksLoading, asgi.ASGIHandler):
    """Django's ASGI handler, its middleware loaded with `InlineHooksLoading`."""


class SharedThreadForAPIHandler:
    """Route the light requests past Django's per-request ThreadSensitiveContext.

    Django gives every ASGI request a thread of its own for sync code, so each request's ORM
    calls open (and drop) their own database connection. The API's and the members' pages' views
    are async and wrap each unit of sync work whole, so they lose nothing by sharing the process's
    one sync thread, and keep one persistent connection: measured here, 165 → 250 searches/s and
    400 → 840 health checks/s. What could hold that thread for long (`needs_own_thread`: the
    admin, sign-ins, uploads) keeps Django's behaviour, so it holds no search.
    """

    def __init__(self, django_application: asgi.ASGIHandler) -> None:
        self.django_application = django_application

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http" and not needs_own_thread(scope):
            await self.django_application.handle(scope, receive, send)
        else:
            await self.django_application(scope, receive, send)

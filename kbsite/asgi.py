"""ASGI entry point for uvicorn: Django, its static files, and start-up and shut-down of the app services."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
# As django.core.asgi.get_asgi_application, with kbsite's handler (its middleware's light hooks on the loop).
django.setup(set_prefix=False)

from kbsite.handlers import ASGIHandler, SharedThreadForAPIHandler  # noqa: E402

django_application = ASGIHandler()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402  (needs settings)
from django.core.exceptions import SuspiciousFileOperation  # noqa: E402
from django.http import Http404  # noqa: E402

from kbsite.lifespan import with_lifespan  # noqa: E402


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's static files handler, answering a path that climbs out of the static folders with 404.

    Django's own lets the SuspiciousFileOperation of `/static/..%2f..%2fetc/passwd` through as a 500.
    """

    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousFileOperation as error:
            raise Http404("There is no such static file.") from error


application = with_lifespan(StaticFilesHandler(SharedThreadForAPIHandler(django_application)))

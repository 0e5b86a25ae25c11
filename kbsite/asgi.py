"""ASGI entry point for uvicorn: Django, its static files, and start-up and shut-down of the app services."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")

django_application = get_asgi_application()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402  (needs settings)

from kbsite.handlers import SharedThreadForAPIHandler  # noqa: E402
from kbsite.lifespan import with_lifespan  # noqa: E402

application = with_lifespan(ASGIStaticFilesHandler(SharedThreadForAPIHandler(django_application)))

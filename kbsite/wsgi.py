"""WSGI entry point (runserver and WSGI servers); async views run in a fresh event loop per request."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")

application = get_wsgi_application()

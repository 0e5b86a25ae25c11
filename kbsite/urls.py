"""kbsite's URLs: the members' pages, the admin and the API."""

from django.contrib import admin
from django.urls import include, path, re_path

from kbsite.api import api, unknown_path
from knowledge.metrics import metrics_view

urlpatterns = [
    path("", include("knowledge.web.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>.*)$", unknown_path),
]

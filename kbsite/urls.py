"""kbsite's URLs: the admin and the API."""

from django.contrib import admin
from django.urls import path, re_path
from django.views.generic import RedirectView

from kbsite.api import api, unknown_path

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>.*)$", unknown_path),
]

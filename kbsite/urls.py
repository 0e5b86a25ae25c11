"""kbsite's URLs: the members' pages, the admin and the API."""

from django.contrib import admin
from django.urls import include, path, re_path

from kbsite.api import api, unknown_path
from knowledge.metrics import metrics_view

# The API first: Django tries these in order for every request, and a search should not first be
# tried against every members' page (no pattern of one list matches a path of another).
urlpatterns = [
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>.*)$", unknown_path),
    path("metrics", metrics_view),
    path("admin/", admin.site.urls),
    path("", include("knowledge.web.urls")),
]

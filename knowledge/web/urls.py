"""The members' pages, at the site's root."""

from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from knowledge.web import views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="knowledge/web/login.html", redirect_authenticated_user=True, next_page="web:search"
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="web:login"), name="logout"),
    path("search/", views.search, name="search"),
    path("documents/<uuid:document_id>/", views.document, name="document"),
    path("documents/<uuid:document_id>/archive/", views.archive_document, name="archive_document"),
    path("kbs/", views.knowledge_bases, name="knowledge_bases"),
    path("kbs/upload/", views.upload, name="upload"),
    # Browsers and feed readers ask for /favicon.ico whatever the page's <link rel="icon"> says.
    path("favicon.ico", RedirectView.as_view(url=static("kbsite/favicon.svg"), permanent=True), name="favicon"),
]

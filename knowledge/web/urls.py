"""The members' pages, at the site's root."""

from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from knowledge.web import manage, views

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
    path("kbs/new/", manage.new_knowledge_base, name="kb_new"),
    path("kbs/<uuid:kb_id>/", manage.knowledge_base, name="kb"),
    path("kbs/<uuid:kb_id>/members/", manage.members, name="kb_members"),
    path("kbs/<uuid:kb_id>/members/<int:user_id>/role/", manage.member_role, name="kb_member_role"),
    path("kbs/<uuid:kb_id>/members/<int:user_id>/remove/", manage.remove_member, name="kb_member_remove"),
    path("kbs/<uuid:kb_id>/settings/", manage.kb_settings, name="kb_settings"),
    path("kbs/<uuid:kb_id>/fields/", manage.kb_fields, name="kb_fields"),
    path("kbs/<uuid:kb_id>/delete/", manage.delete_knowledge_base, name="kb_delete"),
    path("kbs/<uuid:kb_id>/documents/<uuid:document_id>/labels/", manage.document_labels, name="kb_document_labels"),
    path("kbs/<uuid:kb_id>/documents/<uuid:document_id>/delete/", manage.delete_document, name="kb_document_delete"),
    path("kbs/<uuid:kb_id>/documents/<uuid:document_id>/retry/", manage.document_action, {"action": "retry"}, name="kb_document_retry"),
    path("kbs/<uuid:kb_id>/documents/<uuid:document_id>/archive/", manage.document_action, {"action": "archive"}, name="kb_document_archive"),
    path("kbs/<uuid:kb_id>/documents/<uuid:document_id>/restore/", manage.document_action, {"action": "restore"}, name="kb_document_restore"),
]

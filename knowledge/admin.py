"""The admin for knowledge bases, their members and documents: thin, every change goes through a service."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import ngettext

from knowledge.errors import KnowledgeError
from knowledge.forms import DocumentForm, KnowledgeBaseForm, SearchForm, UploadForm
from knowledge.highlighting import marked_html
from knowledge.ingestion.preview import PREVIEW_CHUNKS, ChunkPreviewService
from knowledge.models import ApiToken, Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.selectors import chunk_counts, document_chunks, knowledge_bases_with_counts
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import EDITABLE_KB_FIELDS, KnowledgeBaseService
from knowledge.services.members import MembershipService
from knowledge.services.metadata_fields import MetadataFieldService
from knowledge.services.permissions import ROLE_RANK, PermissionService
from knowledge.services.tokens import ApiTokenService
from search.errors import SearchError
from search.services.search import get_search_service

CHUNKS_PER_PAGE = 20

admin.site.site_header = "kbsite administration"
admin.site.site_title = "kbsite"
admin.site.index_title = "Knowledge bases, documents and searches"


def role_on(request: HttpRequest, kb: KnowledgeBase) -> Role | None:
    """The user's role on a KB, asked once per request."""
    cache = request.__dict__.setdefault("_kb_roles", {})
    if kb.pk not in cache:
        cache[kb.pk] = PermissionService().role_for(user=request.user, kb=kb)
    return cache[kb.pk]


def has_role(request: HttpRequest, kb: KnowledgeBase | None, least: Role) -> bool:
    if kb is None:
        return True
    role = role_on(request, kb)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[least]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and has_role(request, obj, Role.OWNER)

    has_add_permission = has_delete_permission = has_change_permission


class KnowledgeBaseChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        # One concurrent round of Qdrant counts for the page, not one call per row.
        counts = chunk_counts([kb.pk for kb in self.result_list])
        for kb in self.result_list:
            kb.chunks_in_qdrant = counts[kb.pk]


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    form = KnowledgeBaseForm
    list_display = ["name", "slug", "owner", "document_count", "chunk_count", "status", "embedding_model", "created_at"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "description", "owner"]}),
        ("Indexing", {"fields": ["chunk_size", "chunk_overlap", "embedding_model", "vector_size"]}),
        ("Metadata fields", {"fields": ["declared_fields"]}),
        ("Record", {"fields": ["id", "created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["id", "embedding_model", "vector_size", "created_at", "updated_at"]
    autocomplete_fields = ["owner"]
    change_form_template = "admin/knowledge/knowledgebase/change_form.html"

    def get_fieldsets(self, request, obj=None):
        if obj is not None:
            return self.fieldsets
        # A new KB picks its embedding model; an existing one shows it, changed only by a rebuild.
        return [
            (title, {**options, "fields": ["chunk_size", "chunk_overlap", "embedder"]}) if title == "Indexing"
            else (title, options)
            for title, options in self.fieldsets
        ]

    def get_queryset(self, request):
        return knowledge_bases_with_counts(request.user)

    def get_changelist(self, request, **kwargs):
        return KnowledgeBaseChangeList

    @admin.display(description="documents", ordering="document_count")
    def document_count(self, kb: KnowledgeBase) -> int:
        return kb.document_count

    @admin.display(description="chunks (Qdrant)")
    def chunk_count(self, kb: KnowledgeBase) -> int | str:
        return getattr(kb, "chunks_in_qdrant", "")

    @admin.display(description="status")
    def status(self, kb: KnowledgeBase) -> str:
        parts = [
            f"{getattr(kb, f'{status}_count')} {label.lower()}"
            for status, label in DocumentStatus.choices
            if getattr(kb, f"{status}_count", 0)
        ]
        if getattr(kb, "archived_count", 0):
            parts.append(f"{kb.archived_count} archived")
        return ", ".join(parts) or "empty"

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and has_role(request, obj, Role.OWNER)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and has_role(request, obj, Role.OWNER)

    def get_changeform_initial_data(self, request):
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def save_model(self, request, obj, form, change):
        if change:
            changes = {field: form.cleaned_data[field] for field in form.changed_data if field in EDITABLE_KB_FIELDS}
            KnowledgeBaseService().update_knowledge_base(kb=obj, **changes)
            if {"chunk_size", "chunk_overlap"} & set(form.changed_data):
                messages.info(
                    request,
                    "The new chunk settings apply to documents indexed from now on. "
                    "Select the documents and run “Chunk and embed again”, or `manage.py reindex --kb "
                    f"{obj.slug}`, to apply them to the others.",
                )
            if "declared_fields" in form.changed_data:
                self._set_fields(request, obj, form.cleaned_data["declared_fields"])
            return
        created = KnowledgeBaseService().create_knowledge_base(
            name=obj.name,
            slug=obj.slug,
            owner=obj.owner,
            description=obj.description,
            chunk_size=obj.chunk_size,
            chunk_overlap=obj.chunk_overlap,
            embedding_model=form.cleaned_data.get("embedder") or None,
        )
        obj.pk, obj.embedding_model, obj.vector_size = created.pk, created.embedding_model, created.vector_size
        obj._state.adding = False
        if form.cleaned_data.get("declared_fields"):
            self._set_fields(request, obj, form.cleaned_data["declared_fields"])

    @staticmethod
    def _set_fields(request, kb: KnowledgeBase, fields: dict[str, str]) -> None:
        change = MetadataFieldService().set_fields(kb=kb, fields=fields)
        done = [
            f"{label}: {', '.join(keys)}"
            for label, keys in (("declared", change.added), ("retyped", change.retyped), ("removed", change.removed))
            if keys
        ]
        if done:
            messages.info(
                request,
                f"Metadata fields {'; '.join(done)}. Filter values rewritten in the chunks of "
                f"{change.documents_rewritten} document(s), without embedding.",
            )

    def save_formset(self, request, form, formset, change):
        # Members change through the service, which keeps a KB from losing its last owner.
        service, kb = MembershipService(), form.instance
        changed = formset.save(commit=False)
        for membership in formset.deleted_objects:
            self._apply(request, service.remove_member, kb=kb, user_id=membership.user_id)
        for membership in changed:
            if membership.pk is not None:
                before = Membership.objects.get(pk=membership.pk)
                if before.user_id != membership.user_id:
                    self._apply(request, service.remove_member, kb=kb, user_id=before.user_id)
            username = membership.user.get_username()
            self._apply(request, service.set_member, kb=kb, username=username, role=membership.role)

    @staticmethod
    def _apply(request, change, **arguments) -> None:
        try:
            change(**arguments)
        except KnowledgeError as exc:
            messages.error(request, exc.message)

    def delete_model(self, request, obj):
        KnowledgeBaseService().delete_knowledge_base(kb=obj)

    def delete_queryset(self, request, queryset):
        for kb in queryset:
            self.delete_model(request, kb)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        kb = self.get_object(request, object_id)
        extra_context = extra_context or {}
        if kb is not None:
            extra_context.update(self._search_context(request, kb))
            extra_context["documents_url"] = (
                reverse("admin:knowledge_document_changelist") + f"?knowledge_base__id__exact={kb.pk}"
            )
            extra_context["upload_url"] = reverse("admin:knowledge_document_upload") + f"?kb={kb.pk}"
        return super().change_view(request, object_id, form_url, extra_context)

    def _search_context(self, request, kb: KnowledgeBase) -> dict:
        # Bound only to a search: the page's other parameters (`_changelist_filters`) are not a query.
        form = SearchForm(request.GET if "q" in request.GET else None)
        context = {"search_form": form, "search_results": None}
        if not form.is_bound or not form.is_valid():
            return context
        try:
            response = get_search_service().search(
                query=form.cleaned_data["q"],
                kb_ids=[kb.pk],
                user_id=request.user.pk,
                mode=form.cleaned_data["mode"] or "hybrid",
                limit=form.cleaned_data["limit"],
                include_archived=form.cleaned_data["include_archived"],
            )
            context["search_results"] = response.results
            context["search_rows"] = [
                {"result": result, "marked": marked_html(result.content, result.highlights)}
                for result in response.results
            ]
            context["search_mode"] = response.mode
            context["search_notices"] = response.notices
        except SearchError as exc:
            context["search_error"] = exc.message
        return context


class DocumentChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        # The page reloads itself while documents on it are still being indexed.
        self.has_work_in_progress = any(
            document.status in (DocumentStatus.PENDING, DocumentStatus.PROCESSING) for document in self.result_list
        )


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("no", "Active"), ("yes", "Archived")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(archived_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(archived_at__isnull=True)
        return queryset


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    # Short cells and headers: with the filters beside it the list has about 630 px on a 1280 px screen.
    list_display = ["title", "knowledge_base", "status_label", "progress", "archived", "file_format", "created"]
    # Only KBs the user reads documents of: the plain filter would list every KB's name to every user.
    list_filter = [
        "status", ArchivedFilter, ("knowledge_base", admin.RelatedOnlyFieldListFilter), "source_format"
    ]
    list_select_related = ["knowledge_base"]
    search_fields = ["title", "source_name"]
    list_per_page = 50
    actions = ["reindex", "archive", "unarchive"]
    form = DocumentForm
    fields = [
        "title", "tags", "metadata", "knowledge_base", "status", "progress", "error", "archived_at",
        "source_name", "source_format", "source_size", "chunk_count", "attempts", "content_hash", "id",
        "created_at", "updated_at",
    ]
    readonly_fields = [field for field in fields if field not in DocumentForm.Meta.fields]
    change_list_template = "admin/knowledge/document/change_list.html"
    change_form_template = "admin/knowledge/document/change_form.html"

    def get_queryset(self, request):
        readable = PermissionService().knowledge_bases_for(request.user)
        return super().get_queryset(request).filter(knowledge_base__in=readable).defer("text")

    def get_changelist(self, request, **kwargs):
        return DocumentChangeList

    def get_urls(self):
        upload = path("upload/", self.admin_site.admin_view(self.upload_view), name="knowledge_document_upload")
        return [upload, *super().get_urls()]

    @admin.display(description="status", ordering="status")
    def status_label(self, document: Document) -> str:
        colours = {"ready": "#2e7d32", "failed": "#c62828", "processing": "#1565c0", "pending": "#6d6d6d"}
        label = format_html('<b style="color:{}">{}</b>', colours[document.status], document.get_status_display())
        if not document.error:
            return label
        # The problem under its status, not in a column of its own that is empty on most rows.
        return format_html('{}<div class="problem">{}</div>', label, Truncator(document.error).chars(80))

    @admin.display(description="progress")
    def progress(self, document: Document) -> str:
        # Rather than the model's `progress`, which reads "1 chunks": the admin words it for people.
        if document.status == DocumentStatus.PROCESSING and document.chunks_total:
            done = {"done": document.chunks_done, "total": document.chunks_total}
            return ngettext("%(done)d/%(total)d chunk", "%(done)d/%(total)d chunks", document.chunks_total) % done
        if document.status == DocumentStatus.READY:
            return ngettext("%(count)d chunk", "%(count)d chunks", document.chunk_count) % {"count": document.chunk_count}
        return ""

    @admin.display(description="format", ordering="source_format")
    def file_format(self, document: Document) -> str:
        return document.source_format

    @admin.display(description="created", ordering="created_at")
    def created(self, document: Document) -> str:
        return dateformat.format(timezone.localtime(document.created_at), "Y-m-d H:i")

    @admin.display(description="archived", boolean=True, ordering="archived_at")
    def archived(self, document: Document) -> bool:
        return document.is_archived

    def has_add_permission(self, request):
        return super().has_add_permission(request) and PermissionService().knowledge_bases_for(
            request.user, least=Role.EDITOR
        ).exists()

    def add_view(self, request, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:knowledge_document_upload"))

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and has_role(
            request, obj and obj.knowledge_base, Role.EDITOR
        )

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and has_role(
            request, obj and obj.knowledge_base, Role.EDITOR
        )

    def save_model(self, request, obj, form, change):
        # The title and labels live in the chunks too (results show the title, filters read the labels):
        # the service changes both places, by payload updates.
        service = DocumentService()
        if "title" in form.changed_data:
            service.rename(document=obj, title=obj.title)
        if {"tags", "metadata"} & set(form.changed_data):
            service.set_labels(document=obj, tags=obj.tags, metadata=obj.metadata)

    def delete_model(self, request, obj):
        DocumentService().delete_document(document=obj)

    def delete_queryset(self, request, queryset):
        for document in queryset.select_related("knowledge_base"):
            self.delete_model(request, document)

    def _editable(self, request, queryset):
        """The selected documents in KBs where the user is at least an editor."""
        writable = PermissionService().knowledge_bases_for(request.user, least=Role.EDITOR)
        allowed = queryset.filter(knowledge_base__in=writable)
        if allowed.count() < queryset.count():
            messages.warning(request, "Some selected documents are in knowledge bases you may only read; they were left alone.")
        return allowed

    @admin.action(description="Chunk and embed again")
    def reindex(self, request, queryset):
        count = DocumentService().queue_for_reindex(documents=self._editable(request, queryset))
        messages.success(
            request,
            ngettext(
                "Queued %(count)d document; the worker indexes it again in the background.",
                "Queued %(count)d documents; the worker indexes them again in the background.",
                count,
            ) % {"count": count},
        )

    @admin.action(description="Archive (hide from searches)")
    def archive(self, request, queryset):
        self._set_archived(request, queryset, archived=True)

    @admin.action(description="Unarchive")
    def unarchive(self, request, queryset):
        self._set_archived(request, queryset, archived=False)

    def _set_archived(self, request, queryset, *, archived: bool) -> None:
        service, changed = DocumentService(), 0
        for document in self._editable(request, queryset):
            try:
                service.set_archived(document=document, archived=archived)
                changed += 1
            except SearchError as exc:
                messages.error(request, f"{document.title}: {exc.message}")
        verb = "Archived" if archived else "Unarchived"
        documents = ngettext("%(count)d document", "%(count)d documents", changed) % {"count": changed}
        messages.success(request, f"{verb} {documents}; nothing was embedded again.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        document = self.get_object(request, object_id)
        extra_context = extra_context or {}
        if document is not None:
            extra_context.update(self._chunks_context(request, document))
        return super().change_view(request, object_id, form_url, extra_context)

    def _chunks_context(self, request, document: Document) -> dict:
        try:
            offset = max(int(request.GET.get("chunk_offset", 0)), 0)
        except ValueError:
            offset = 0
        try:
            chunks, next_offset = document_chunks(document, offset=offset, limit=CHUNKS_PER_PAGE)
        except SearchError as exc:
            return {"chunks_error": exc.message}
        return {
            "chunks": chunks,
            "chunk_offset": offset,
            "next_chunk_offset": next_offset,
            "previous_chunk_offset": max(offset - CHUNKS_PER_PAGE, 0) if offset else None,
        }

    def upload_view(self, request):
        if not self.has_add_permission(request):
            raise DjangoPermissionDenied
        writable = PermissionService().knowledge_bases_for(request.user, least=Role.EDITOR)
        form = UploadForm(request.POST or None, request.FILES or None, knowledge_bases=writable,
                          initial={"knowledge_base": request.GET.get("kb")})
        previews = None
        if request.method == "POST" and form.is_valid():
            # "Preview chunks" shows the page again with each file's chunks; "Upload" queues the files.
            if "preview" not in request.POST:
                return self._upload(request, form.cleaned_data["knowledge_base"], form.cleaned_data)
            previews = self._previews(form.cleaned_data, user_id=request.user.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": "Upload documents",
            "max_upload_size": form.max_upload_size,
            "previews": previews,
            "preview_chunks": PREVIEW_CHUNKS,
        }
        return TemplateResponse(request, "admin/knowledge/document/upload.html", context)

    @staticmethod
    def _previews(cleaned: dict, *, user_id: int) -> list[dict]:
        """Each file's chunk preview, or why it cannot be read; no document is made."""
        service, previews = ChunkPreviewService(), []
        for upload in cleaned["files"]:
            try:
                preview = service.preview(
                    kb=cleaned["knowledge_base"],
                    user_id=user_id,
                    filename=upload.name,
                    data=upload.read(),
                    chunk_size=cleaned["preview_chunk_size"],
                    chunk_overlap=cleaned["preview_chunk_overlap"],
                )
            except KnowledgeError as exc:
                previews.append({"filename": upload.name, "error": exc.message})
            else:
                previews.append({"filename": preview.filename, "preview": preview})
        return previews

    def _upload(self, request, kb: KnowledgeBase, cleaned: dict) -> HttpResponseRedirect:
        added = self._add_uploads(request, kb, cleaned)
        if added:
            messages.success(
                request,
                ngettext(
                    "Queued %(count)d document in %(kb)s; watch it become ready here.",
                    "Queued %(count)d documents in %(kb)s; watch them become ready here.",
                    added,
                ) % {"count": added, "kb": kb.name},
            )
        return HttpResponseRedirect(
            reverse("admin:knowledge_document_changelist") + f"?knowledge_base__id__exact={kb.pk}"
        )

    def _add_uploads(self, request, kb: KnowledgeBase, cleaned: dict) -> int:
        batch = DocumentService().add_uploads(
            kb=kb, files=cleaned["files"], tags=cleaned["tags"] or None, metadata=cleaned["metadata"] or None
        )
        for refusal in batch.refused:
            messages.warning(request, refusal)
        for replaced in batch.replaced:
            messages.info(request, f"{replaced.document.source_name} replaced the earlier version; only it is indexed again.")
        return len(batch.added)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name", "expires_at"]

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if "expires_at" in self.changed_data:
            try:
                ApiTokenService.check_expiry(expires_at)
            except KnowledgeError as exc:
                raise forms.ValidationError(exc.message) from exc
        return expires_at


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "expires_at", "active"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__username"]
    actions = ["revoke"]

    def get_autocomplete_fields(self, request):
        return ["user"] if request.user.is_superuser else []

    @admin.display(boolean=True, description="active")
    def active(self, token: ApiToken) -> bool:
        return token.is_active

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def get_fields(self, request, obj=None):
        made = ["user", "name", "expires_at"]
        return made if obj is None else [*made, "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_changeform_initial_data(self, request):
        return {"user": request.user.pk}

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            # Staff make tokens for themselves only.
            # request.user is a lazy object: its type has no manager; the field's model has.
            kwargs["queryset"] = db_field.remote_field.model._default_manager.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name", "expires_at"])
            return
        issued = ApiTokenService().create_token(user=obj.user, name=obj.name, expires_at=obj.expires_at)
        obj.pk = issued.token.pk
        messages.warning(
            request,
            f"The token is {issued.secret} — copy it now: it is not shown again and only its hash is kept.",
        )

    @admin.action(description="Revoke (the token stops working at once)")
    def revoke(self, request, queryset):
        count = ApiTokenService().revoke(tokens=queryset)
        messages.success(request, ngettext("Revoked %(count)d token.", "Revoked %(count)d tokens.", count) % {"count": count})

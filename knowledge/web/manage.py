"""The members' pages for running a knowledge base: create one, its documents, its members, its settings.

Thin views: PermissionService decides who may do what, as for the API, and the services that serve the
API do the work (documents, members, knowledge bases); each change goes into the KB's history.
"""

from __future__ import annotations

from math import ceil
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import ngettext
from django.views.decorators.http import require_http_methods, require_POST

from knowledge.errors import KnowledgeBaseNotFound, KnowledgeError, PermissionDenied
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.selectors import kb_documents, kb_indexing_progress
from knowledge.services.documents import DocumentService
from knowledge.services.kb_owners import KnowledgeBaseOwnerService
from knowledge.services.members import MembershipService
from knowledge.services.metadata_fields import MetadataFieldService
from knowledge.services.permissions import ROLE_RANK, PermissionService
from knowledge.web.manage_forms import (
    AddMemberForm,
    DeleteKnowledgeBaseForm,
    DocumentFilterForm,
    DocumentLabelsForm,
    KnowledgeBaseSettingsForm,
    MetadataFieldsForm,
    NewKnowledgeBaseForm,
    RoleForm,
)
from search.errors import SearchError

PAGE_SIZE = 25
SETTINGS_FIELDS = ("name", "description", "chunk_size", "chunk_overlap")


async def _kb_and_role(
    request: HttpRequest, kb_id: UUID, least: Role
) -> tuple[AbstractBaseUser, KnowledgeBase, Role]:
    """The KB and the user's role if it is at least `least`: 404 for one they may not read, 403 if too low."""
    user = await request.auser()
    permissions = PermissionService()
    try:
        kb = await permissions.aget_knowledge_base(user=user, kb_id=kb_id, least=Role.READER)
        role = await permissions.arequire(user=user, kb=kb, least=least)
    except KnowledgeBaseNotFound as exc:
        raise Http404(exc.message) from None
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from None
    return user, kb, role


async def _document_of(kb: KnowledgeBase, document_id: UUID) -> Document:
    document = await Document.objects.filter(knowledge_base=kb, pk=document_id).defer("text").afirst()
    if document is None:
        raise Http404(f"{kb.name!r} has no such document.")
    document.knowledge_base = kb
    return document


def _kb_url(kb: KnowledgeBase, back: str = "", fragment: str = "messages") -> str:
    """The KB's page with the filters it was left with (a query string, rebuilt so nothing else rides on it)."""
    query = urlencode(parse_qsl(back)[:10])
    return (
        reverse("web:kb", args=[kb.pk])
        + (f"?{query}" if query else "")
        + (f"#{fragment}" if fragment else "")
    )


def _document_links(kb: KnowledgeBase) -> dict[str, str]:
    """Each document action's URL with `{}` for the document's id, reversed once a page, not once a row:
    in an async view each reverse looks up the active language through asgiref's context-local storage."""
    placeholder = str(UUID(int=0))
    names = {"read": "web:document"} | {
        action: f"web:kb_document_{action}" for action in ("labels", "delete", "retry", "archive", "restore")
    }
    return {
        key: reverse(name, args=[UUID(int=0)] if key == "read" else [kb.pk, UUID(int=0)]).replace(
            placeholder, "{}"
        )
        for key, name in names.items()
    }


def _context(user, kb: KnowledgeBase, role: Role, **extra) -> dict:
    return {
        "viewer": user,
        "section": "kbs",
        "kb": kb,
        "role": role,
        "can_edit": ROLE_RANK[role] >= ROLE_RANK[Role.EDITOR],
        "is_owner": role == Role.OWNER,
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
async def new_knowledge_base(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    may_create = await PermissionService().amay_create_knowledge_bases(user)
    form = NewKnowledgeBaseForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and may_create and form.is_valid():
        try:
            kb = await KnowledgeBaseOwnerService().acreate(actor=user, **form.cleaned_data)
        except KnowledgeError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"{kb.name} is yours: upload documents to it, and add its members.")
            return HttpResponseRedirect(reverse("web:kb", args=[kb.pk]))
    context = {"viewer": user, "section": "kbs", "form": form, "may_create": may_create}
    return render(
        request,
        "knowledge/web/kb_new.html",
        context,
        status=403 if not may_create else 422 if form.errors else 200,
    )


@login_required
async def knowledge_base(request: HttpRequest, kb_id: UUID) -> HttpResponse:
    user, kb, role = await _kb_and_role(request, kb_id, Role.READER)
    filters = DocumentFilterForm(request.GET)
    chosen = filters.cleaned_data if filters.is_valid() else {}
    rows = kb_documents(kb, status=chosen.get("status") or "", tag=chosen.get("tag") or "")
    total = await rows.acount()
    pages = max(1, ceil(total / PAGE_SIZE))
    page = min(chosen.get("page") or 1, pages)
    documents = [doc async for doc in rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]]
    links = _document_links(kb)
    for document in documents:
        document.knowledge_base = kb
        document.links = {name: pattern.format(document.pk) for name, pattern in links.items()}
    query = [(k, v) for k, v in (("status", chosen.get("status")), ("tag", chosen.get("tag"))) if v]
    context = _context(
        user,
        kb,
        role,
        filters=filters,
        status_value=chosen.get("status") or "",
        tag_value=chosen.get("tag") or "",
        filter_choices=filters.fields["status"].choices,
        documents=documents,
        total=total,
        page=page,
        pages=pages,
        first_shown=(page - 1) * PAGE_SIZE + 1 if documents else 0,
        last_shown=(page - 1) * PAGE_SIZE + len(documents),
        previous_href=f"?{urlencode([*query, ('page', page - 1)])}" if page > 1 else None,
        next_href=f"?{urlencode([*query, ('page', page + 1)])}" if page < pages else None,
        back=request.GET.urlencode(),
        progress=await kb_indexing_progress(kb),
        filtered=bool(query),
    )
    return render(request, "knowledge/web/kb.html", context)


@login_required
@require_POST
async def document_action(request: HttpRequest, kb_id: UUID, document_id: UUID, action: str) -> HttpResponse:
    """Retry a failed document, archive one or restore it (editors), then back to the KB's page as it was."""
    _, kb, _ = await _kb_and_role(request, kb_id, Role.EDITOR)
    document = await _document_of(kb, document_id)
    service = DocumentService()
    try:
        if action == "retry":
            if document.status != DocumentStatus.FAILED:
                messages.info(request, f"{document.title} has not failed: there is nothing to retry.")
            else:
                await service.aqueue_for_reindex(documents=[document])
                messages.success(request, f"{document.title} is queued again; its status follows below.")
        else:
            await service.aset_archived(document=document, archived=action == "archive")
            verb = "archived: searches no longer find it" if action == "archive" else "back in searches"
            messages.success(request, f"{document.title} is {verb}.")
    except SearchError as exc:
        messages.error(request, f"{document.title}: {exc.message}")
    return HttpResponseRedirect(_kb_url(kb, request.POST.get("back", "")))


@login_required
@require_http_methods(["GET", "POST"])
async def document_labels(request: HttpRequest, kb_id: UUID, document_id: UUID) -> HttpResponse:
    user, kb, role = await _kb_and_role(request, kb_id, Role.EDITOR)
    document = await _document_of(kb, document_id)
    back = request.POST.get("back", request.GET.get("back", ""))
    if request.method == "POST":
        form = DocumentLabelsForm(request.POST)
        if form.is_valid():
            try:
                await DocumentService().aset_labels(
                    document=document, tags=form.cleaned_data["tags"], metadata=form.cleaned_data["metadata"]
                )
            except (KnowledgeError, SearchError) as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(
                    request, f"{document.title}: tags and metadata saved; searches filter by them now."
                )
                return HttpResponseRedirect(_kb_url(kb, back))
    else:
        form = DocumentLabelsForm(initial={"tags": document.tags, "metadata": document.metadata})
    context = _context(
        user, kb, role, document=document, form=form, back=back, back_href=_kb_url(kb, back, "")
    )
    return render(request, "knowledge/web/document_labels.html", context)


@login_required
@require_http_methods(["GET", "POST"])
async def delete_document(request: HttpRequest, kb_id: UUID, document_id: UUID) -> HttpResponse:
    user, kb, role = await _kb_and_role(request, kb_id, Role.EDITOR)
    document = await _document_of(kb, document_id)
    back = request.POST.get("back", request.GET.get("back", ""))
    if request.method == "POST":
        try:
            await DocumentService().adelete_document(document=document)
        except SearchError as exc:
            messages.error(request, f"{document.title}: {exc.message}")
        else:
            messages.success(request, f"{document.title} is deleted.")
        return HttpResponseRedirect(_kb_url(kb, back))
    context = _context(user, kb, role, document=document, back=back, back_href=_kb_url(kb, back, ""))
    return render(request, "knowledge/web/document_delete.html", context)


async def _members(kb: KnowledgeBase) -> list[Membership]:
    return [
        m
        async for m in Membership.objects.filter(knowledge_base=kb)
        .select_related("user")
        .order_by("user__username")
    ]


@login_required
@require_http_methods(["GET", "POST"])
async def members(request: HttpRequest, kb_id: UUID) -> HttpResponse:
    """The KB's members with their roles (owners); a POST adds one by user name or e-mail."""
    user, kb, role = await _kb_and_role(request, kb_id, Role.OWNER)
    form = AddMemberForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            membership, previous = await MembershipService().aadd_member(
                kb=kb, identifier=form.cleaned_data["user"], role=form.cleaned_data["role"], actor=user
            )
        except KnowledgeError as exc:
            form.add_error("user", exc.message)
        else:
            name, now = membership.user.get_username(), membership.get_role_display().lower()
            if previous is None:
                messages.success(request, f"{name} is now {now} of {kb.name}.")
            elif previous == membership.role:
                messages.info(request, f"{name} was {now} of {kb.name} already.")
            else:
                messages.success(request, f"{name} is now {now} of {kb.name} (was {previous}).")
            return HttpResponseRedirect(reverse("web:kb_members", args=[kb.pk]) + "#messages")
    context = _context(
        user, kb, role, form=form, members=await _members(kb), roles=form.fields["role"].choices
    )
    return render(request, "knowledge/web/kb_members.html", context, status=422 if form.errors else 200)


@login_required
@require_POST
async def member_role(request: HttpRequest, kb_id: UUID, user_id: int) -> HttpResponse:
    user, kb, _ = await _kb_and_role(request, kb_id, Role.OWNER)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose reader, editor or owner.")
    else:
        try:
            membership = await MembershipService().achange_role(
                kb=kb, user_id=user_id, role=form.cleaned_data["role"], actor=user
            )
        except KnowledgeError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                f"{membership.user.get_username()} is now {membership.get_role_display().lower()} of {kb.name}.",
            )
    return await _back_to_members(request, user, kb)


@login_required
@require_POST
async def remove_member(request: HttpRequest, kb_id: UUID, user_id: int) -> HttpResponse:
    user, kb, _ = await _kb_and_role(request, kb_id, Role.OWNER)
    try:
        await MembershipService().aremove_member(kb=kb, user_id=user_id, actor=user)
    except KnowledgeError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"You left {kb.name}." if user_id == user.pk else f"The member is removed from {kb.name}.",
        )
    return await _back_to_members(request, user, kb)


async def _back_to_members(request: HttpRequest, user, kb: KnowledgeBase) -> HttpResponse:
    """The members' page, or, for an owner who just gave up that role, the furthest page they may still see."""
    role = await PermissionService().arole_for(user=user, kb=kb)
    if role == Role.OWNER:
        return HttpResponseRedirect(reverse("web:kb_members", args=[kb.pk]) + "#messages")
    if role is not None:
        return HttpResponseRedirect(_kb_url(kb))
    return HttpResponseRedirect(reverse("web:knowledge_bases") + "#messages")


@login_required
@require_http_methods(["GET", "POST"])
async def kb_settings(request: HttpRequest, kb_id: UUID) -> HttpResponse:
    """Rename, describe, re-chunk (which queues the documents again, with progress shown) or delete (owners)."""
    user, kb, role = await _kb_and_role(request, kb_id, Role.OWNER)
    if request.method == "POST":
        form = KnowledgeBaseSettingsForm(request.POST)
        if form.is_valid():
            try:
                change = await KnowledgeBaseOwnerService().achange_settings(
                    actor=user, kb=kb, **form.cleaned_data
                )
            except KnowledgeError as exc:
                form.add_error(None, exc.message)
            else:
                if not change.changed:
                    messages.info(request, "Nothing changed.")
                elif change.requeued:
                    messages.success(
                        request,
                        ngettext(
                            "Saved. %(count)d document is being chunked again with the new settings; "
                            "searches find its earlier chunks until it is done.",
                            "Saved. %(count)d documents are being chunked again with the new settings; "
                            "searches find their earlier chunks until each is done.",
                            change.requeued,
                        )
                        % {"count": change.requeued},
                    )
                else:
                    messages.success(request, "Saved.")
                return HttpResponseRedirect(reverse("web:kb_settings", args=[kb.pk]) + "#messages")
    else:
        form = KnowledgeBaseSettingsForm(initial={field: getattr(kb, field) for field in SETTINGS_FIELDS})
    return await _settings_page(request, user, kb, role, form, DeleteKnowledgeBaseForm())


@login_required
@require_POST
async def kb_fields(request: HttpRequest, kb_id: UUID) -> HttpResponse:
    """Declare, retype or remove the KB's metadata fields (owners); a retype rewrites filter values, no embedding."""
    user, kb, role = await _kb_and_role(request, kb_id, Role.OWNER)
    fields_form = MetadataFieldsForm(request.POST, initial={"declared_fields": kb.metadata_fields})
    if fields_form.is_valid():
        try:
            change = await MetadataFieldService().aset_fields(
                kb=kb, fields=fields_form.cleaned_data["declared_fields"], actor=user
            )
        except KnowledgeError as exc:
            fields_form.add_error("declared_fields", exc.message)
        else:
            done = [
                f"{label} {', '.join(keys)}"
                for label, keys in (
                    ("declared", change.added),
                    ("retyped", change.retyped),
                    ("removed", change.removed),
                )
                if keys
            ]
            messages.success(
                request, f"Metadata fields saved: {'; '.join(done)}." if done else "Nothing changed."
            )
            return HttpResponseRedirect(reverse("web:kb_settings", args=[kb.pk]) + "#messages")
    form = KnowledgeBaseSettingsForm(initial={field: getattr(kb, field) for field in SETTINGS_FIELDS})
    return await _settings_page(request, user, kb, role, form, DeleteKnowledgeBaseForm(), fields_form)


async def _settings_page(request, user, kb, role, form, delete_form, fields_form=None) -> HttpResponse:
    fields_form = fields_form or MetadataFieldsForm(initial={"declared_fields": kb.metadata_fields})
    context = _context(
        user,
        kb,
        role,
        form=form,
        fields_form=fields_form,
        delete_form=delete_form,
        progress=await kb_indexing_progress(kb),
        member_count=await Membership.objects.filter(knowledge_base=kb).acount(),
    )
    return render(
        request,
        "knowledge/web/kb_settings.html",
        context,
        status=422 if form.errors or delete_form.errors or fields_form.errors else 200,
    )


@login_required
@require_POST
async def delete_knowledge_base(request: HttpRequest, kb_id: UUID) -> HttpResponse:
    user, kb, role = await _kb_and_role(request, kb_id, Role.OWNER)
    form = DeleteKnowledgeBaseForm(request.POST)
    if form.is_valid():
        name = kb.name
        try:
            await KnowledgeBaseOwnerService().adelete(
                actor=user, kb=kb, typed_name=form.cleaned_data["confirm_name"]
            )
        except (KnowledgeError, SearchError) as exc:
            form.add_error("confirm_name", exc.message)
        else:
            messages.success(request, f"{name} is deleted, with its documents.")
            return HttpResponseRedirect(reverse("web:knowledge_bases") + "#messages")
    settings_form = KnowledgeBaseSettingsForm(
        initial={field: getattr(kb, field) for field in SETTINGS_FIELDS}
    )
    return await _settings_page(request, user, kb, role, settings_form, form)

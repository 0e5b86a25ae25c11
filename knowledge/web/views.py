"""The members' pages: thin views over the search service, the selectors and the document service."""

from __future__ import annotations

import re
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from knowledge.errors import DocumentNotFound, KnowledgeBaseNotFound, PermissionDenied
from knowledge.forms import UploadForm
from knowledge.ingestion.extraction import SUPPORTED_FORMATS
from knowledge.models import Document, DocumentStatus, Role
from knowledge.selectors import (
    knowledge_bases_with_roles,
    readable_document,
    readable_knowledge_bases,
    recent_documents,
)
from knowledge.services.documents import DocumentService
from knowledge.services.permissions import PermissionService
from knowledge.web.forms import MemberSearchForm
from knowledge.web.results import results_html
from search.errors import SearchError
from search.pages import page_label, page_range
from search.services.search import MAX_KNOWLEDGE_BASES, MAX_QUERY_CHARS, get_search_service

RECENT_DOCUMENTS = 30
UPLOAD_KB_SESSION_KEY = "upload_kb"
UNFINISHED = {DocumentStatus.PENDING, DocumentStatus.PROCESSING}


async def home(request: HttpRequest) -> HttpResponse:
    """The search page for a signed-in user, the sign-in page for anyone else."""
    user = await request.auser()
    return redirect("web:search" if user.is_authenticated else "web:login")


@login_required
async def search(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    kbs = await readable_knowledge_bases(user)
    form = MemberSearchForm(request.GET if "q" in request.GET else None, knowledge_bases=kbs)
    context = {
        "viewer": user,
        "section": "search",
        "form": form,
        "knowledge_bases": kbs,
        "kb_options": form.options("kb"),
        "mode_options": form.options("mode"),
        "per_document": form.is_bound and form["per_document"].value(),
        "limit": (form.cleaned_data["limit"] if form.is_bound and form.is_valid() else None) or 10,
        "max_query_chars": MAX_QUERY_CHARS,
        "searched": False,
    }
    if form.is_bound and not form.is_valid():
        # The query's own errors show beside the box; the others' fields may be hidden or unchecked.
        context["error"] = " ".join(
            f"{form.fields[name].label}: {message}"
            for name, errors in form.errors.items()
            if name != "q"
            for message in errors
        )
    elif form.is_bound and kbs:  # with none to read, the page says so and there is nothing to search
        # None chosen: every readable KB, which the page has just listed. Naming them spares the
        # service its own listing (the cap on how many one search covers is the service's).
        kb_ids = form.cleaned_data["kb"] or ([kb.pk for kb in kbs] if len(kbs) <= MAX_KNOWLEDGE_BASES else None)
        context["searched"] = True
        try:
            response = await get_search_service().asearch(
                query=form.cleaned_data["q"],
                kb_ids=kb_ids,
                user_id=user.pk,
                mode=form.cleaned_data["mode"] or "hybrid",
                limit=form.cleaned_data["limit"],
                group_by_document=form.cleaned_data["per_document"],
            )
        except SearchError as exc:
            context["error"] = exc.message
        else:
            more_limit = form.more_limit if len(response.results) >= form.cleaned_data["limit"] else None
            context.update(
                result_count=len(response.results),
                results_html=results_html(
                    response.results,
                    kb_names={kb.pk: kb.name for kb in kbs},
                    back_query=request.GET.urlencode(),
                    # Grouped by document, a result's document brings its next best passages along.
                    further={document.document_id: document.hits[1:] for document in response.documents or ()},
                ),
                per_document=response.documents is not None,
                mode=response.mode,
                notices=response.notices,
                more_href=_more_link(request, more_limit, len(response.results)) if more_limit else None,
            )
    return render(request, "knowledge/web/search.html", context)


def _more_link(request: HttpRequest, limit: int, shown: int) -> str:
    """The same search asking for `limit` results, landing on the first new one (results count from 1)."""
    query = [(key, value) for key, values in request.GET.lists() if key != "limit" for value in values]
    return f"?{urlencode([*query, ('limit', limit)])}#result-{shown + 1}"


def _passage(document: Document, start: str | None, end: str | None) -> dict | None:
    """The text cut around the passage [start, end) named in the query string, and its pages; None if none."""
    text = document.text
    try:
        first, last = int(start or ""), int(end or "")
    except ValueError:
        return None
    if not 0 <= first < last <= len(text):
        return None
    pages = page_range(document.page_starts, char_start=first, char_end=last)
    return {
        "before": text[:first],
        "hit": _marked_lines(text[first:last]),
        "after": text[last:],
        "pages": page_label(*pages),
        "start": first,
        "end": last,
    }


# A line break with the blank space around it: marked, it would show as a stub of highlight on an empty line.
LINE_BREAK = re.compile(r"[ \t]*\n\s*")


def _marked_lines(hit: str) -> list[tuple[str, bool]]:
    """The passage as (text, marked) pieces: each line's words marked, the line breaks between them not."""
    pieces, at = [], 0
    for match in LINE_BREAK.finditer(hit):
        if match.start() > at:
            pieces.append((hit[at : match.start()], True))
        pieces.append((match.group(), False))
        at = match.end()
    if at < len(hit):
        pieces.append((hit[at:], True))
    return pieces


@login_required
async def document(request: HttpRequest, document_id: UUID) -> HttpResponse:
    user = await request.auser()
    try:
        found = await readable_document(user, document_id=document_id)
    except (DocumentNotFound, KnowledgeBaseNotFound) as exc:
        raise Http404(exc.message) from None
    back = request.GET.get("back", "")
    context = {
        "viewer": user,
        "document": found,
        "passage": _passage(found, request.GET.get("start"), request.GET.get("end")),
        "back_url": reverse("web:search") + (f"?{back}" if back else ""),
    }
    return render(request, "knowledge/web/document.html", context)


@login_required
async def knowledge_bases(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    kbs = await knowledge_bases_with_roles(user)
    editable = [kb for kb, role in kbs if role != Role.READER]
    documents = await recent_documents(user, limit=RECENT_DOCUMENTS)
    editable_ids = {kb.pk for kb in editable}
    # The KB named in the link, else the one last uploaded to: a second upload goes where the first went.
    chosen = request.GET.get("kb") or await request.session.aget(UPLOAD_KB_SESSION_KEY, "")
    context = {
        "viewer": user,
        "section": "kbs",
        "knowledge_bases": kbs,
        "documents": [(doc, doc.knowledge_base_id in editable_ids) for doc in documents],
        "unfinished": any(doc.status in UNFINISHED for doc in documents),
        # The form is written out in the template: a bound queryset cannot be read from async code.
        "editable": editable,
        "chosen_kb": chosen,
        "may_create": await PermissionService().amay_create_knowledge_bases(user),
        "accepted_formats": ",".join(SUPPORTED_FORMATS),
        "max_upload_size": filesizeformat(int(settings.INGESTION["MAX_UPLOAD_BYTES"])),
    }
    return render(request, "knowledge/web/knowledge_bases.html", context)


def _editable_kb(user, kb_id: str):
    """The KB named in a form if the user may edit it: 404 when they may not read it, 403 when only read."""
    try:
        return PermissionService().get_knowledge_base(user=user, kb_id=UUID(kb_id), least=Role.EDITOR)
    except (ValueError, KnowledgeBaseNotFound):
        raise Http404("There is no such knowledge base you may read.") from None
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from None


@login_required
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    # Sync, like the admin's upload: each file is one transaction of DocumentService.add_upload.
    kb = _editable_kb(request.user, request.POST.get("knowledge_base", ""))
    request.session[UPLOAD_KB_SESSION_KEY] = str(kb.pk)
    writable = PermissionService().knowledge_bases_for(request.user, least=Role.EDITOR)
    form = UploadForm(request.POST, request.FILES, knowledge_bases=writable)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(errors))
        return HttpResponseRedirect(reverse("web:knowledge_bases") + "#messages")
    batch = DocumentService().add_uploads(kb=kb, files=form.cleaned_data["files"])
    for refusal in batch.refused:
        messages.warning(request, refusal)
    for replaced in batch.replaced:
        messages.info(request, f"{replaced.document.source_name} replaced the earlier version; only it is indexed again.")
    if batch.added:
        messages.success(
            request,
            ngettext(
                "Queued %(count)d document in %(kb)s; its status follows below.",
                "Queued %(count)d documents in %(kb)s; their status follows below.",
                len(batch.added),
            )
            % {"count": len(batch.added), "kb": kb.name},
        )
    # To the messages, which the documents' list follows: a refusal must not scroll out of view.
    return HttpResponseRedirect(reverse("web:knowledge_bases") + "#messages")


@login_required
@require_POST
async def archive_document(request: HttpRequest, document_id: UUID) -> HttpResponse:
    user = await request.auser()
    try:
        found = await readable_document(user, document_id=document_id, least=Role.EDITOR)
    except (DocumentNotFound, KnowledgeBaseNotFound) as exc:
        raise Http404(exc.message) from None
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from None
    archived = request.POST.get("archived", "1") == "1"
    try:
        await DocumentService().aset_archived(document=found, archived=archived)
    except SearchError as exc:
        messages.error(request, f"{found.title}: {exc.message}")
    else:
        verb = "archived: searches no longer find it" if archived else "back in searches"
        messages.success(request, f"{found.title} is {verb}.")
    return HttpResponseRedirect(reverse("web:knowledge_bases") + "#documents")

"""The knowledge API: knowledge bases, their members, documents, chunks and stats, and the health check."""

import base64
import binascii
from typing import Annotated
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Field, Form, Query, Router, Schema, Status, UploadedFile
from ninja import Path as PathParam
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.params.models import File as FileParam
from ninja.params.models import FileModel
from pydantic import field_validator

from knowledge.errors import DocumentNotFound, InvalidInput, UnsupportedFormat, UploadTooLarge
from knowledge.ingestion.preview import ChunkPreviewService
from knowledge.models import Document, Membership, Role
from knowledge.schemas import (
    ChunkPage,
    ChunkPreviewIn,
    ChunkPreviewOut,
    ChunkQuery,
    DocumentFileIn,
    DocumentFilters,
    DocumentOut,
    DocumentPatch,
    DocumentTextIn,
    HealthOut,
    KnowledgeBaseIn,
    KnowledgeBaseOut,
    KnowledgeBasePatch,
    MemberIn,
    MemberOut,
    StatsOut,
)
from knowledge.selectors import knowledge_base_stats
from knowledge.services.document_metadata import parse_metadata_json
from knowledge.services.documents import DocumentService
from knowledge.services.health import HealthService
from knowledge.services.knowledge_bases import KnowledgeBaseService
from knowledge.services.members import MembershipService
from knowledge.services.metadata_fields import MetadataFieldService
from knowledge.services.permissions import PermissionService
from search.schemas import ErrorOut
from search.services.chunks import ChunkService
from search.throttling import UploadRateThrottle

router = Router()
kbs = Router(tags=["knowledge bases"])
members = Router(tags=["members"])
documents = Router(tags=["documents"])
health = Router(tags=["health"], auth=None)
for child in (kbs, members, documents):
    router.add_router("/", child)

# 400 is an unparsable body; 422 one that parses but is not what the operation takes.
READ = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 422: ErrorOut}
WRITE = {**READ, 403: ErrorOut, 409: ErrorOut}
permissions = PermissionService()

# A knowledge base in a path: its id or its slug, told apart by PermissionService.knowledge_base_lookup.
KbRef = Annotated[
    str,
    PathParam(
        ...,
        min_length=1,
        max_length=100,
        pattern=r"^[-a-zA-Z0-9_]+$",
        description="The knowledge base's id or its slug (`research`).",
    ),
]


def _errors(*codes: int) -> dict[int, type[ErrorOut]]:
    return {code: ErrorOut for code in codes}


class BoundedPagination(LimitOffsetPagination):
    """limit and offset within what a database can take, so absurd values answer 422, not 500."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=500)
        offset: int = Field(0, ge=0, le=2**31 - 1)


async def _document(kb_id: str, document_id: UUID, request: HttpRequest, least: Role) -> Document:
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=least)
    document = (
        await Document.objects.filter(knowledge_base=kb, pk=document_id)
        .select_related("knowledge_base")
        .afirst()
    )
    if document is None:
        raise DocumentNotFound(f"{kb.name!r} has no document {document_id}.")
    return document


# Knowledge bases


@kbs.get("/kbs", response={200: list[KnowledgeBaseOut], 401: ErrorOut, 422: ErrorOut})
@paginate(BoundedPagination)
async def list_knowledge_bases(request: HttpRequest):
    """The knowledge bases the caller may read."""
    return permissions.knowledge_bases_for(request.auth).select_related("owner").order_by("name", "pk")


@kbs.post("/kbs", response={201: KnowledgeBaseOut, **_errors(400, 401, 403, 409, 422, 503)})
async def create_knowledge_base(request: HttpRequest, payload: KnowledgeBaseIn):
    """A new knowledge base owned by the caller, for the embedding model named (default: the built-in one; 422
    for one not configured, 503 when an endpoint asked its vector size does not answer; 403 when
    KBSITE_KB_CREATORS leaves the caller out)."""
    await permissions.arequire_may_create_knowledge_bases(request.auth)
    kb = await KnowledgeBaseService().acreate_knowledge_base(owner=request.auth, **payload.dict())
    return Status(201, kb)


@kbs.get("/kbs/{kb_id}", response={200: KnowledgeBaseOut, **READ})
async def get_knowledge_base(request: HttpRequest, kb_id: KbRef):
    return await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.READER)


@kbs.patch("/kbs/{kb_id}", response={200: KnowledgeBaseOut, **WRITE})
async def update_knowledge_base(request: HttpRequest, kb_id: KbRef, payload: KnowledgeBasePatch):
    """Change the name, description, chunk settings (they apply to documents indexed from now on) or declared
    metadata fields (owners)."""
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.OWNER)
    changes = payload.dict(exclude_unset=True)
    if (fields := changes.pop("metadata_fields", None)) is not None:
        await MetadataFieldService().aset_fields(kb=kb, fields=fields, actor=request.auth)
    return await KnowledgeBaseService().aupdate_knowledge_base(kb=kb, **changes)


@kbs.delete("/kbs/{kb_id}", response={204: None, **WRITE, 503: ErrorOut})
async def delete_knowledge_base(request: HttpRequest, kb_id: KbRef):
    """Delete the knowledge base, its documents and its Qdrant collections (owners)."""
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.OWNER)
    await KnowledgeBaseService().adelete_knowledge_base(kb=kb)
    return Status(204, None)


@kbs.get("/kbs/{kb_id}/stats", response={200: StatsOut, **READ, 503: ErrorOut})
async def get_knowledge_base_stats(request: HttpRequest, kb_id: KbRef):
    """Documents by status, archived documents, and chunks in Qdrant."""
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.READER)
    return await knowledge_base_stats(kb)


# Members


@members.get("/kbs/{kb_id}/members", response={200: list[MemberOut], **WRITE})
async def list_members(request: HttpRequest, kb_id: KbRef):
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.OWNER)
    return [
        m async for m in Membership.objects.filter(knowledge_base=kb).select_related("user").order_by("pk")
    ]


@members.post("/kbs/{kb_id}/members", response={200: MemberOut, 201: MemberOut, **WRITE})
async def set_member(request: HttpRequest, kb_id: KbRef, payload: MemberIn):
    """Add a member, or change a member's role (owners). 201 when added, 200 when changed."""
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.OWNER)
    membership, created = await MembershipService().aset_member(
        kb=kb, username=payload.username, role=payload.role
    )
    membership = await Membership.objects.select_related("user").aget(pk=membership.pk)
    return Status(201 if created else 200, membership)


@members.delete("/kbs/{kb_id}/members/{user_id}", response={204: None, **WRITE})
async def remove_member(request: HttpRequest, kb_id: KbRef, user_id: int = PathParam(..., ge=1, le=2**63 - 1)):
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.OWNER)
    await MembershipService().aremove_member(kb=kb, user_id=user_id)
    return Status(204, None)


# Documents


class MultipartFileModel(FileModel):
    """The uploaded file, looked at before Django parses the body.

    A body of another content type is refused first, saying where a text document goes now, and
    one announced far over the limit is never read. A file name with a NUL character is refused
    like any other text field (PostgreSQL cannot store it).
    """

    @classmethod
    def get_request_data(cls, request: HttpRequest, api, path_params: dict) -> dict | None:
        if request.content_type != "multipart/form-data":
            raise UnsupportedFormat(
                "This endpoint takes multipart/form-data with a `file` and its optional form fields. Text "
                "documents go as JSON with `title` and `text` to POST /api/v1/kbs/{kb_id}/documents/text."
            )
        limit = int(settings.INGESTION["MAX_UPLOAD_BYTES"])
        if int(request.headers.get("Content-Length") or 0) > limit + 64 * 1024:
            raise UploadTooLarge(f"The upload is larger than the limit of {limit // (1024 * 1024)} MB.")
        return super().get_request_data(request, api, path_params)

    @field_validator("*", mode="after")
    @classmethod
    def _name_without_nul(cls, upload: UploadedFile) -> UploadedFile:
        if "\x00" in (upload.name or ""):
            raise ValueError("The file name may not contain NUL characters (\\u0000).")
        return upload


class MultipartFile(FileParam):
    """ninja's `File`, read through MultipartFileModel."""

    _model = MultipartFileModel

    @classmethod
    def _param_source(cls) -> str:
        return "file"


@documents.post(
    "/kbs/{kb_id}/documents",
    response={202: DocumentOut, **WRITE, 413: ErrorOut, 415: ErrorOut, 429: ErrorOut},
    throttle=[UploadRateThrottle()],
)
async def upload_document(
    request: HttpRequest,
    kb_id: KbRef,
    file: Annotated[UploadedFile, MultipartFile(..., description=".txt .md .html .pdf .docx")],
    form: Form[DocumentFileIn],
    response: HttpResponse,
):
    """Queue a file sent as multipart/form-data (`file`, optional `title`, `tags`, `metadata` as JSON text).

    Answers 202 with the document; poll its `url` until `status` is `ready` or `failed`. The same
    content twice in a knowledge base is refused (409); a file of the same name replaces that document.
    """
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.EDITOR)
    service = DocumentService()
    # Before reading: a chunked request carries no Content-Length for the check above.
    service.check_upload_size(file.name, file.size)
    # Reading runs off the shared database thread, which other API calls need.
    data = await sync_to_async(file.read, thread_sensitive=False)()
    metadata = parse_metadata_json(form.metadata) if form.metadata is not None else None
    added = await service.aadd_upload(
        kb=kb, filename=file.name, data=data, title=form.title, tags=form.tags, metadata=metadata
    )
    return await _queued(added.document.pk, response)


@documents.post(
    "/kbs/{kb_id}/chunk-preview",
    response={200: ChunkPreviewOut, **WRITE, 413: ErrorOut, 415: ErrorOut, 429: ErrorOut},
    throttle=[UploadRateThrottle()],
)
async def preview_chunks(
    request: HttpRequest,
    kb_id: KbRef,
    file: Annotated[UploadedFile, MultipartFile(..., description=".txt .md .html .pdf .docx")],
    form: Form[ChunkPreviewIn],
):
    """The chunks a file would make, with the knowledge base's chunk settings or those given (editors).

    The file is read as an upload is, within the same limits, and nothing is stored: no document,
    no chunk. Answers the chunk count and the first 50 chunks with their offsets, tokens and pages.
    """
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.EDITOR)
    DocumentService.check_upload_size(file.name, file.size)
    data = await sync_to_async(file.read, thread_sensitive=False)()
    return await ChunkPreviewService().apreview(
        kb=kb, user_id=request.auth.pk, filename=file.name, data=data, chunk_size=form.chunk_size, chunk_overlap=form.chunk_overlap
    )


@documents.post(
    "/kbs/{kb_id}/documents/text",
    response={202: DocumentOut, **WRITE, 413: ErrorOut, 429: ErrorOut},
    throttle=[UploadRateThrottle()],
)
async def create_text_document(
    request: HttpRequest, kb_id: KbRef, payload: DocumentTextIn, response: HttpResponse
):
    """Queue a document given as text, in JSON with `title` and `text`.

    Answers 202 with the document, like a file upload; the same text twice is refused (409).
    """
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.EDITOR)
    added = await DocumentService().aadd_text_document(**payload.dict(), kb=kb)
    return await _queued(added.document.pk, response)


async def _queued(document_id: UUID, response: HttpResponse) -> Status:
    document = await Document.objects.select_related("knowledge_base").aget(pk=document_id)
    response["Location"] = DocumentOut.resolve_url(document)
    return Status(202, document)


@documents.get("/kbs/{kb_id}/documents", response={200: list[DocumentOut], **READ})
@paginate(BoundedPagination)
async def list_documents(request: HttpRequest, kb_id: KbRef, filters: Query[DocumentFilters]):
    """Newest first; filter by `status` and `archived`."""
    kb = await permissions.aget_knowledge_base(user=request.auth, kb_id=kb_id, least=Role.READER)
    rows = Document.objects.filter(knowledge_base=kb).select_related("knowledge_base").defer("text")
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.archived is not None:
        rows = rows.filter(archived_at__isnull=not filters.archived)
    return rows.order_by("-created_at", "pk")


@documents.get(
    "/kbs/{kb_id}/documents/{document_id}", response={200: DocumentOut, **READ}, url_name="document"
)
async def get_document(request: HttpRequest, kb_id: KbRef, document_id: UUID):
    """The document's status, progress (chunks done of total) and error, if any."""
    return await _document(kb_id, document_id, request, Role.READER)


@documents.patch("/kbs/{kb_id}/documents/{document_id}", response={200: DocumentOut, **WRITE, 503: ErrorOut})
async def update_document(request: HttpRequest, kb_id: KbRef, document_id: UUID, payload: DocumentPatch):
    """Change the title, tags or metadata (editors): payload changes in Qdrant, nothing is embedded again.

    `tags` and `metadata` each replace the document's own whole; the next search filters by them.
    """
    document = await _document(kb_id, document_id, request, Role.EDITOR)
    changes = payload.dict(exclude_unset=True)
    service = DocumentService()
    if changes.get("title") is not None:
        document = await service.arename(document=document, title=changes["title"])
    return await service.aset_labels(
        document=document, tags=changes.get("tags"), metadata=changes.get("metadata")
    )


@documents.post(
    "/kbs/{kb_id}/documents/{document_id}/archive", response={200: DocumentOut, **WRITE, 503: ErrorOut}
)
async def archive_document(request: HttpRequest, kb_id: KbRef, document_id: UUID):
    """Hide the document from default searches: a payload change in Qdrant, nothing is embedded again."""
    document = await _document(kb_id, document_id, request, Role.EDITOR)
    return await DocumentService().aset_archived(document=document, archived=True)


@documents.post(
    "/kbs/{kb_id}/documents/{document_id}/unarchive", response={200: DocumentOut, **WRITE, 503: ErrorOut}
)
async def unarchive_document(request: HttpRequest, kb_id: KbRef, document_id: UUID):
    document = await _document(kb_id, document_id, request, Role.EDITOR)
    return await DocumentService().aset_archived(document=document, archived=False)


@documents.post("/kbs/{kb_id}/documents/{document_id}/reindex", response={202: DocumentOut, **WRITE})
async def reindex_document(request: HttpRequest, kb_id: KbRef, document_id: UUID):
    """Queue the document to be chunked and embedded again from its stored text."""
    document = await _document(kb_id, document_id, request, Role.EDITOR)
    await DocumentService().aqueue_for_reindex(documents=[document])
    return Status(202, await Document.objects.select_related("knowledge_base").aget(pk=document.pk))


@documents.delete("/kbs/{kb_id}/documents/{document_id}", response={204: None, **WRITE, 503: ErrorOut})
async def delete_document(request: HttpRequest, kb_id: KbRef, document_id: UUID):
    """Delete the document and its points in Qdrant."""
    document = await _document(kb_id, document_id, request, Role.EDITOR)
    await DocumentService().adelete_document(document=document)
    return Status(204, None)


@documents.get(
    "/kbs/{kb_id}/documents/{document_id}/chunks", response={200: ChunkPage, **READ, 503: ErrorOut}
)
async def list_chunks(request: HttpRequest, kb_id: KbRef, document_id: UUID, page: Query[ChunkQuery]):
    """The document's chunks in order, as Qdrant holds them; pass `next_cursor` back as `cursor`."""
    document = await _document(kb_id, document_id, request, Role.READER)
    chunks, next_offset = await ChunkService().get_chunks_by_document(
        kb_id=document.knowledge_base_id, document_id=document.pk, offset=_offset_of(page.cursor), limit=page.limit
    )
    return {"items": chunks, "next_cursor": _cursor_for(next_offset)}


def _cursor_for(offset: int | None) -> str | None:
    return None if offset is None else base64.urlsafe_b64encode(f"c:{offset}".encode()).decode().rstrip("=")


def _offset_of(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        offset = int(value) if kind == "c" else -1
    except (ValueError, binascii.Error, UnicodeDecodeError):
        offset = -1
    if offset < 0:
        raise InvalidInput("The cursor is not one this API gave out: start again without one.")
    return offset


# Health


@health.get("/health", response={200: HealthOut, 503: ErrorOut})
async def get_health(request: HttpRequest):
    """200 when the database and Qdrant both answer; 503 says which did not."""
    checks = await HealthService().check()
    if all(state == "ok" for state in checks.values()):
        return {"status": "ok", **checks}
    failed = [name for name, state in checks.items() if state != "ok"]
    return Status(
        503, {"code": "unavailable", "message": f"{' and '.join(failed)} did not answer.", "detail": checks}
    )

"""The knowledge API's request and response shapes: knowledge bases, members, documents, chunks, stats."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.urls import reverse
from ninja import Field, Schema
from pydantic import ConfigDict

from knowledge.models import Document, KnowledgeBase, Membership, Role
from knowledge.services.knowledge_bases import MIN_CHUNK_TOKENS
from search.schemas import InputSchema

RoleName = Literal["reader", "editor", "owner"]
StatusName = Literal["pending", "processing", "ready", "failed"]
FieldTypeName = Literal["text", "number", "date", "bool"]


class KnowledgeBaseIn(InputSchema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "Field notes", "slug": "field-notes", "description": "Notes."}]
        }
    )

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(
        None, max_length=100, pattern=r"^[-a-zA-Z0-9_]+$", description="Default: from the name."
    )
    description: str = Field("", max_length=10_000)
    chunk_size: int | None = Field(
        None, ge=MIN_CHUNK_TOKENS, le=254, description="Tokens per chunk (default from settings)."
    )
    chunk_overlap: int | None = Field(
        None, ge=0, le=253, description="Tokens shared with the previous chunk."
    )
    embedding_model: str | None = Field(
        None,
        max_length=100,
        description="The embedder: the built-in model (default) or an endpoint named in the site's EMBEDDERS_JSON. "
        "Fixed once made: `manage.py reindex --recreate --model NAME` moves a knowledge base to another.",
    )


class KnowledgeBasePatch(InputSchema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"description": "Notes from the 2026 season."}]}
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    chunk_size: int | None = Field(None, ge=MIN_CHUNK_TOKENS, le=254)
    chunk_overlap: int | None = Field(None, ge=0, le=253)
    metadata_fields: dict[str, FieldTypeName] | None = Field(
        None,
        description="Every metadata field, with its type: a key left out is removed (refused while documents "
        "carry it); a new type rewrites the chunks' filter values, once every document's value has it.",
    )


class KnowledgeBaseOut(Schema):
    id: UUID
    name: str
    slug: str
    description: str
    owner: str | None = Field(description="The owner's username.")
    embedding_model: str
    vector_size: int
    chunk_size: int
    chunk_overlap: int
    metadata_fields: dict[str, str] = Field(
        description="The metadata keys searches may filter on, each with its type (text, number, date, bool)."
    )
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_owner(kb: KnowledgeBase) -> str | None:
        return kb.owner.get_username() if kb.owner_id else None


class MemberIn(InputSchema):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "bob", "role": "reader"}]})

    username: str = Field(min_length=1, max_length=150)
    role: RoleName = Role.READER.value


class MemberOut(Schema):
    user_id: int
    username: str
    role: RoleName
    created_at: datetime

    @staticmethod
    def resolve_username(membership: Membership) -> str:
        return membership.user.get_username()


TAGS_DESCRIPTION = "Labels to filter searches by (`filter`: `{\"tag\": {\"any\": [...]}}`); at most 50."
METADATA_DESCRIPTION = (
    "Flat facts to filter searches by: keys of letters, digits and _ (at most 50), values text, numbers, "
    "true/false, or dates as ISO 8601 text (`2024-05-17`), compared as dates by gt/gte/lt/lte."
)
METADATA_EXAMPLE = {"year": 2024, "status": "draft", "reviewed": True, "published": "2024-05-17"}


class DocumentFileIn(InputSchema):
    """The form fields sent with an uploaded file."""

    title: str = Field("", max_length=500, description="Default: from the file.")
    tags: list[str] | None = Field(
        None,
        description=TAGS_DESCRIPTION + " One field per tag. Left out: a replaced document keeps its own.",
    )
    metadata: str | None = Field(
        None,
        description=METADATA_DESCRIPTION + ' As a JSON object in this text field, e.g. {"year": 2024}. '
        "Left out: a replaced document keeps its own.",
    )


class DocumentTextIn(InputSchema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"title": "Tide tables", "text": "High water comes about fifty minutes later each day."}
            ]
        }
    )

    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1)
    source_name: str = Field("", max_length=500, description="A file name to recognise new versions by.")
    tags: list[str] | None = Field(
        None, description=TAGS_DESCRIPTION + " Left out: a replaced document keeps its own."
    )
    metadata: dict[str, Any] | None = Field(
        None,
        description=METADATA_DESCRIPTION + " Left out: a replaced document keeps its own.",
        examples=[METADATA_EXAMPLE],
    )


class DocumentPatch(InputSchema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tags": ["policy", "hr"], "metadata": METADATA_EXAMPLE}]}
    )

    title: str | None = Field(None, min_length=1, max_length=500)
    tags: list[str] | None = Field(None, description=TAGS_DESCRIPTION + " Replaces the document's tags.")
    metadata: dict[str, Any] | None = Field(
        None,
        description=METADATA_DESCRIPTION + " Replaces the document's metadata whole (send each key to keep).",
    )


class ProgressOut(Schema):
    chunks_done: int
    chunks_total: int


class DocumentOut(Schema):
    id: UUID
    kb_id: UUID
    title: str
    source_name: str
    source_format: str
    source_size: int
    content_hash: str = Field(
        description="SHA-256 of the bytes uploaded (of the UTF-8 text for a text document): a file whose hash "
        "differs is a new version, which `manage.py sync_folder` indexes again."
    )
    source_folder: str = Field(
        description="The folder `manage.py sync_folder` keeps this document in step with, where source_name is "
        "its path; empty for a document not synced from a folder."
    )
    status: StatusName
    progress: ProgressOut
    chunk_count: int
    error: str
    archived: bool
    archived_at: datetime | None
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    url: str = Field(description="Where to poll the document's status.")

    @staticmethod
    def resolve_kb_id(document: Document) -> UUID:
        return document.knowledge_base_id

    @staticmethod
    def resolve_progress(document: Document) -> dict:
        return {"chunks_done": document.chunks_done, "chunks_total": document.chunks_total}

    @staticmethod
    def resolve_archived(document: Document) -> bool:
        return document.is_archived

    @staticmethod
    def resolve_url(document: Document) -> str:
        return reverse(
            "api-v1:document", kwargs={"kb_id": document.knowledge_base_id, "document_id": document.pk}
        )


class DocumentFilters(Schema):
    status: StatusName | None = None
    archived: bool | None = None


class ChunkOut(Schema):
    chunk_index: int
    text: str
    char_start: int | None
    char_end: int | None
    page_start: int | None = Field(description="The chunk's first page (from 1); null without pages.")
    page_end: int | None
    archived: bool

    @staticmethod
    def resolve_text(chunk) -> str:
        return chunk.content

    @staticmethod
    def resolve_archived(chunk) -> bool:
        return chunk.archived_at is not None


class ChunkPage(Schema):
    items: list[ChunkOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ChunkQuery(Schema):
    cursor: str | None = Field(None, max_length=100)
    limit: int = Field(50, ge=1, le=500)


class ChunkPreviewIn(InputSchema):
    """The form fields sent with a file to preview; left out, the knowledge base's own settings apply."""

    chunk_size: int | None = Field(None, ge=MIN_CHUNK_TOKENS, le=254, description="Tokens per chunk.")
    chunk_overlap: int | None = Field(None, ge=0, le=253, description="Tokens shared with the chunk before.")


class PreviewChunkOut(Schema):
    index: int
    char_start: int = Field(description="Where the chunk starts in the extracted text.")
    char_end: int
    token_count: int
    page_start: int | None = Field(description="The chunk's first page (from 1); null without pages.")
    page_end: int | None
    text: str


class ChunkPreviewOut(Schema):
    filename: str
    format: str
    title: str = Field(description="The title the document would get.")
    chunk_size: int
    chunk_overlap: int
    characters: int = Field(description="Characters of extracted text.")
    page_count: int | None = Field(description="Pages of a PDF or a Word file with page breaks, else null.")
    chunk_count: int = Field(description="How many chunks the file makes, all of them.")
    chunks: list[PreviewChunkOut] = Field(description="The first 50 chunks.")


class StatsOut(Schema):
    documents: dict[StatusName, int]
    archived: int
    chunks: int = Field(description="Chunks in Qdrant.")


class HealthOut(Schema):
    status: Literal["ok"]
    database: str
    qdrant: str

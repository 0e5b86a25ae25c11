"""The search API's request and response shapes, and the one error shape every endpoint answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ninja import Field, Schema
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from search.filters import SURROGATE
from search.services.search import (
    DEFAULT_GROUP_SIZE,
    MAX_CONTEXT_CHUNKS,
    MAX_GROUP_SIZE,
    MAX_KNOWLEDGE_BASES,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    SearchMode,
)


class ErrorOut(Schema):
    """Every error: a stable code to branch on, a message for people, details where they help."""

    code: str = Field(examples=["kb_not_found"])
    message: str = Field(examples=["No knowledge base you may read has the id 0f6c…."])
    detail: Any = None


class InputSchema(Schema):
    """A request body: a JSON object, nothing else (Ninja would read any value's attributes as fields).

    No text anywhere in a field (a list's items, an object's keys and values, at any depth) may hold a
    NUL character, which PostgreSQL cannot store, or a lone surrogate (JSON's "\\ud800"), which is no
    character and which nothing downstream can encode: both are refused here, naming the field,
    before anything reaches the database or Qdrant.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _only_storable_text(cls, value: Any) -> Any:
        # A loop, not recursion: a value's depth is the sender's to choose.
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    raise ValueError("Text may not contain NUL characters (\\u0000).")
                if SURROGATE.search(item):
                    raise ValueError(
                        "Text may not contain lone surrogates (\\ud800 to \\udfff), which are no characters: "
                        "send valid UTF-8."
                    )
            elif isinstance(item, dict):
                pending.extend(item.keys())
                pending.extend(item.values())
            elif isinstance(item, (list, tuple)):
                pending.extend(item)
        return value

    @model_validator(mode="before")
    @classmethod
    def _must_be_an_object(cls, data: Any) -> Any:
        # Ninja hands the value over wrapped in a DjangoGetter; look at what it wraps.
        if not isinstance(getattr(data, "_obj", data), dict):
            raise ValueError("The body must be a JSON object.")
        return data


class SearchIn(InputSchema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "how do bees tell each other where flowers are",
                    "kb_ids": ["3f1c2b9e-6f1d-4b8e-9a47-2f0d5c6b7a81"],
                    "limit": 5,
                    "mode": "hybrid",
                }
            ]
        }
    )

    # No min_length: "" gets the service's own `empty_query` answer, like a query of spaces.
    query: str = Field(max_length=MAX_QUERY_CHARS, description="What to look for, in words.")
    kb_ids: list[UUID] | None = Field(
        None,
        min_length=1,
        max_length=MAX_KNOWLEDGE_BASES,
        description=f"Knowledge bases to search; left out: every one you may read (the first {MAX_KNOWLEDGE_BASES} "
        "by name, with a notice when there are more).",
    )
    limit: int = Field(
        10, ge=1, le=MAX_LIMIT, description="How many chunks to return (documents, with group_by_document)."
    )
    mode: SearchMode = Field(
        SearchMode.HYBRID,
        description="hybrid: meaning and keywords, fused by rank (default); semantic: meaning only, "
        "scores are cosine similarities; keyword: BM25 over the words, scores are BM25.",
    )
    include_archived: bool = Field(False, description="Also search archived documents.")
    score_threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Leave out chunks less similar than this (cosine): in hybrid mode, semantic candidates; "
        "not allowed in keyword mode.",
    )
    document_ids: list[UUID] | None = Field(None, max_length=100, description="Search only these documents.")
    filter: dict[str, Any] | None = Field(
        None,
        description="Search only documents whose tags and metadata pass this filter. A filter is one of: "
        '`{"and": [filter, ...]}`, `{"or": [filter, ...]}`; `{"tag": {"any"|"all"|"none": ["a", ...]}}`; '
        '`{"key": "<metadata key>", "<op>": value}` with op `eq`, `ne` (text, number, true/false), `in`, '
        "`not_in` (a list of those), `gt`, `gte`, `lt`, `lte` (a number, or an ISO 8601 date compared as a "
        "date), `exists` (true/false); several ops in one condition must all hold. `ne` and `not_in` also "
        "match documents without the key. A filter that cannot be read answers 422 with `detail.path` naming "
        "the part at fault, e.g. `filter.and[1].or[0].gte`.",
        examples=[
            {
                "and": [
                    {"tag": {"any": ["policy", "hr"]}},
                    {"or": [{"key": "year", "gte": 2020}, {"key": "status", "in": ["draft", "final"]}]},
                    {"key": "reviewed", "exists": True},
                ]
            }
        ],
    )
    group_by_document: bool = Field(
        False,
        description="One entry per document: `limit` counts documents, `documents` lists each one's best "
        "chunks, and `results` holds the best chunk of each.",
    )
    group_size: int = Field(
        DEFAULT_GROUP_SIZE,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="With group_by_document: the most chunks shown per document.",
    )
    context_chunks: int = Field(
        0,
        ge=0,
        le=MAX_CONTEXT_CHUNKS,
        description="Add to each chunk the passage from this many chunks before it to as many after it "
        "(fewer at a document's start or end), as `context` with its offsets.",
    )


# The search answer's models are plain pydantic models, not Ninja Schemas: the view returns a SearchOut
# built by pydantic-core from the service's dataclasses, which Ninja sends without validating it again.
# Ninja's way (a Schema per result, read through its DjangoGetter) took 0.7 ms of the event loop's
# time per search of 10 results; this takes 0.13 ms.


class HighlightOut(BaseModel):
    start: int = Field(description="Where a matched word starts in `text`.")
    end: int


class SearchResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    score: float = Field(
        description="Cosine similarity (semantic), BM25 (keyword) or the fused rank score (hybrid)."
    )
    text: str = Field(validation_alias="content", description="The chunk's text.")
    kb_id: UUID
    document_id: UUID
    title: str
    chunk_index: int
    char_start: int | None = Field(description="Where the chunk starts in the document's text.")
    char_end: int | None
    page_start: int | None = Field(
        description="The chunk's first page (from 1), for PDFs and Word files with page breaks; else null."
    )
    page_end: int | None = Field(description="The chunk's last page; null when page_start is.")
    highlights: list[HighlightOut] = Field(
        description="The words of `text` that match query words as BM25 sees them (stemmed, no stopwords)."
    )
    context: str | None = Field(
        None, description="With context_chunks: the document's text around the chunk, the chunk included."
    )
    context_start: int | None = Field(None, description="Where `context` starts in the document's text.")
    context_end: int | None = None

    @field_validator("highlights", mode="before")
    @classmethod
    def _spans(cls, spans: Any) -> Any:
        # The service's (start, end) pairs.
        return [{"start": start, "end": end} for start, end in spans]


class DocumentHitsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kb_id: UUID
    document_id: UUID
    title: str
    score: float = Field(description="Its best chunk's score.")
    hits: list[SearchResultOut] = Field(description="Its best chunks, best first.")


class SearchOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    results: list[SearchResultOut] = Field(
        description="Best first; with group_by_document, the best chunk of each document."
    )
    documents: list[DocumentHitsOut] | None = Field(
        None, description="With group_by_document: the documents found, best first, with their best chunks."
    )
    mode: SearchMode = Field(
        description="The mode that ran: semantic where no KB searched has keyword vectors yet."
    )
    notices: list[str] = Field(
        description="What to know about this search, e.g. a KB that needs `reindex --recreate`."
    )
    took_ms: float


class SearchHistoryOut(Schema):
    id: int
    query: str
    kb_ids: list[UUID]
    result_count: int
    latency_ms: float
    created_at: datetime

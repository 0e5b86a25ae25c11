"""Semantic search across the knowledge bases a user may read: validate, authorise, embed once, query, merge, audit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from search.embedding import EmbeddingService, embedding_service
from search.errors import (
    EmbeddingModelMismatch,
    EmptyQuery,
    InvalidFilter,
    InvalidKnowledgeBaseIds,
    InvalidLimit,
    KnowledgeBaseNotFound,
    QueryTooLong,
)
from search.services.chunks import ChunkService, StoredChunk

MAX_LIMIT = 100
MAX_QUERY_CHARS = 2000
MAX_KNOWLEDGE_BASES = 50
MAX_DOCUMENT_FILTER = 100


class SearchableKnowledgeBase(Protocol):
    id: UUID
    name: str
    embedding_model: str


class KnowledgeBaseAccess(Protocol):
    """Answers which of the given KBs a user may read; raises UnknownUser for a user that is not there."""

    async def readable_knowledge_bases(
        self, *, user_id: int, kb_ids: Sequence[UUID]
    ) -> Sequence[SearchableKnowledgeBase]: ...


class SearchRecorder(Protocol):
    async def record_search(
        self, *, user_id: int, query: str, kb_ids: Sequence[UUID], result_count: int, latency_ms: float
    ) -> object: ...


@dataclass(frozen=True)
class SearchResult:
    kb_id: UUID
    document_id: UUID
    title: str
    chunk_index: int
    content: str
    score: float
    char_start: int | None
    char_end: int | None

    @classmethod
    def from_chunk(cls, chunk: StoredChunk) -> SearchResult:
        return cls(
            kb_id=chunk.kb_id,
            document_id=chunk.document_id,
            title=chunk.title,
            chunk_index=chunk.chunk_index,
            content=chunk.content,
            score=float(chunk.score or 0.0),
            char_start=chunk.char_start,
            char_end=chunk.char_end,
        )


def _parse_uuids(values: object, *, what: str, error: type[Exception], most: int) -> list[UUID]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise error(f"{what} must be a list of UUIDs.")
    parsed: list[UUID] = []
    for value in values:
        try:
            parsed.append(value if isinstance(value, UUID) else UUID(str(value)))
        except ValueError:
            raise error(f"{what} holds {value!r}, which is not a UUID.", detail={"value": str(value)}) from None
    unique = list(dict.fromkeys(parsed))
    if len(unique) > most:
        raise error(f"{what} may name at most {most} items; it names {len(unique)}.")
    return unique


class SearchService:
    def __init__(
        self,
        permission_service: KnowledgeBaseAccess,
        audit_service: SearchRecorder,
        *,
        chunk_service: ChunkService | None = None,
        embeddings: EmbeddingService | None = None,
    ) -> None:
        self.permission_service = permission_service
        self.audit_service = audit_service
        self.chunk_service = chunk_service or ChunkService()
        self.embeddings = embeddings or embedding_service

    async def semantic_search(
        self,
        *,
        query: str,
        kb_ids: Sequence[UUID | str],
        user_id: int,
        limit: int = 10,
        include_archived: bool = False,
        score_threshold: float | None = None,
        document_ids: Sequence[UUID | str] | None = None,
    ) -> list[SearchResult]:
        """The best `limit` chunks for `query` across `kb_ids`, best first; the search is audited.

        Every KB must be readable by the user, or nothing is searched.
        """
        started = time.perf_counter()
        query = self._clean_query(query)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidLimit(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}.")
        wanted = _parse_uuids(kb_ids, what="kb_ids", error=InvalidKnowledgeBaseIds, most=MAX_KNOWLEDGE_BASES)
        if not wanted:
            raise InvalidKnowledgeBaseIds("kb_ids must name at least one knowledge base.")
        documents = None
        if document_ids is not None:
            documents = _parse_uuids(document_ids, what="document_ids", error=InvalidFilter, most=MAX_DOCUMENT_FILTER)
        if score_threshold is not None and not -1.0 <= score_threshold <= 1.0:
            raise InvalidFilter(f"score_threshold is a cosine similarity from -1 to 1, not {score_threshold}.")

        # Authorise while the query is embedded; a refusal cancels the embedding and searches nothing.
        embedding = asyncio.ensure_future(self.embeddings.embed_query(query))
        try:
            readable = await self.permission_service.readable_knowledge_bases(user_id=user_id, kb_ids=wanted)
            self._check_readable(readable, wanted)
        except BaseException:
            embedding.cancel()
            raise
        vector = await embedding

        hits_per_kb = await asyncio.gather(
            *(
                self.chunk_service.search_chunks(
                    kb_id=kb_id,
                    query_embedding=vector,
                    limit=limit,
                    include_archived=include_archived,
                    score_threshold=score_threshold,
                    document_ids=documents,
                )
                for kb_id in wanted
            )
        )
        hits = sorted((hit for hits in hits_per_kb for hit in hits), key=lambda hit: hit.score or 0.0, reverse=True)
        results = [SearchResult.from_chunk(hit) for hit in hits[:limit]]
        await self.audit_service.record_search(
            user_id=user_id,
            query=query,
            kb_ids=wanted,
            result_count=len(results),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        return results

    def _check_readable(self, readable: Sequence[SearchableKnowledgeBase], wanted: list[UUID]) -> None:
        found = {kb.id: kb for kb in readable}
        missing = [kb_id for kb_id in wanted if kb_id not in found]
        if missing:
            raise KnowledgeBaseNotFound(
                "No knowledge base you may read has the id "
                + ", ".join(str(kb_id) for kb_id in missing)
                + ". Check the ids, or ask the KB's owner to add you as a member.",
                detail={"kb_ids": [str(kb_id) for kb_id in missing]},
            )
        model_id = self.embeddings.model_id
        stale = [kb for kb in found.values() if kb.embedding_model != model_id]
        if stale:
            raise EmbeddingModelMismatch(
                f"Knowledge base {stale[0].name!r} was indexed with {stale[0].embedding_model}, but queries "
                f"are embedded with {model_id}. Run `manage.py reindex --kb <slug> --recreate` for it.",
                detail={"kb_ids": [str(kb.id) for kb in stale]},
            )

    @staticmethod
    def _clean_query(query: object) -> str:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQuery("The query is empty: send some words to search for.")
        query = query.strip()
        if len(query) > MAX_QUERY_CHARS:
            raise QueryTooLong(f"The query has {len(query)} characters; the most is {MAX_QUERY_CHARS}.")
        return query


_process_search_service: SearchService | None = None


def configure_search_service(service: SearchService) -> None:
    global _process_search_service
    _process_search_service = service


def get_search_service() -> SearchService:
    """The process's SearchService, built by SearchConfig.ready() with the permission service settings name."""
    if _process_search_service is None:
        raise RuntimeError("The search app is not ready: get_search_service() needs django.setup() first.")
    return _process_search_service

"""Search across the knowledge bases a user may read: validate, authorise, embed once, query, merge, audit.

Three modes: `hybrid` (the default: semantic and BM25 keyword candidates fused by reciprocal rank
inside one Qdrant query), `semantic` (cosine similarity of the embeddings) and `keyword` (BM25).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from qdrant_client import models

from search.embedding import EmbeddingService, embedding_service
from search.errors import (
    EmbeddingModelMismatch,
    EmptyQuery,
    InvalidFilter,
    InvalidKnowledgeBaseIds,
    InvalidLimit,
    InvalidSearchMode,
    InvalidSearchRequest,
    KnowledgeBaseNotFound,
    QueryTooLong,
)
from search.keywords import KeywordEncoder, KeywordSettings, keyword_encoder
from search.pages import page_label
from search.services.chunks import ChunkService, StoredChunk

MAX_LIMIT = 100
MAX_QUERY_CHARS = 2000
MAX_KNOWLEDGE_BASES = 50
MAX_DOCUMENT_FILTER = 100


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    SEMANTIC = "semantic"
    KEYWORD = "keyword"


class SearchableKnowledgeBase(Protocol):
    id: UUID
    name: str
    embedding_model: str
    #: BM25 settings; None for a KB whose collection predates hybrid search (dense vectors only).
    keyword_settings: dict[str, Any] | None


class KnowledgeBaseAccess(Protocol):
    """Answers which KBs a user may read; raises UnknownUser for a user that is not there."""

    async def readable_knowledge_bases(
        self, *, user_id: int, kb_ids: Sequence[UUID]
    ) -> Sequence[SearchableKnowledgeBase]: ...

    async def all_readable_knowledge_bases(self, *, user_id: int, most: int) -> Sequence[SearchableKnowledgeBase]:
        """Up to `most` of the KBs the user may read, by name."""
        ...


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
    #: (start, end) in `content` of each word that matches a query word as BM25 sees it.
    highlights: tuple[tuple[int, int], ...] = ()
    page_start: int | None = None
    page_end: int | None = None

    @property
    def pages(self) -> str:
        """"p. 3" or "pp. 3–4", empty for a document without pages."""
        return page_label(self.page_start, self.page_end)

    @classmethod
    def from_chunk(cls, chunk: StoredChunk, highlights: Sequence[tuple[int, int]] = ()) -> SearchResult:
        return cls(
            highlights=tuple(highlights),
            kb_id=chunk.kb_id,
            document_id=chunk.document_id,
            title=chunk.title,
            chunk_index=chunk.chunk_index,
            content=chunk.content,
            score=float(chunk.score or 0.0),
            char_start=chunk.char_start,
            char_end=chunk.char_end,
            page_start=chunk.page_start,
            page_end=chunk.page_end,
        )


@dataclass(frozen=True)
class SearchResponse:
    results: list[SearchResult]
    #: The mode that ran: the one asked for, or semantic where no KB searched has keyword vectors.
    mode: SearchMode
    #: What the caller should know about how the search ran, e.g. a KB that needs a rebuild for hybrid.
    notices: list[str] = field(default_factory=list)


def _parse_mode(mode: object) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        allowed = ", ".join(m.value for m in SearchMode)
        raise InvalidSearchMode(f"mode must be one of {allowed}, not {mode!r}.", detail={"mode": str(mode)}) from None


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
        """The best `limit` chunks for `query` by meaning across `kb_ids`, best first; the search is audited.

        Every KB must be readable by the user, or nothing is searched.
        """
        response = await self.search(
            query=query,
            kb_ids=kb_ids,
            user_id=user_id,
            mode=SearchMode.SEMANTIC,
            limit=limit,
            include_archived=include_archived,
            score_threshold=score_threshold,
            document_ids=document_ids,
        )
        return response.results

    async def search(
        self,
        *,
        query: str,
        kb_ids: Sequence[UUID | str] | None,
        user_id: int,
        mode: SearchMode | str = SearchMode.HYBRID,
        limit: int = 10,
        include_archived: bool = False,
        score_threshold: float | None = None,
        document_ids: Sequence[UUID | str] | None = None,
    ) -> SearchResponse:
        """The best `limit` chunks for `query` across `kb_ids` in `mode`, best first; the search is audited.

        Every KB must be readable by the user, or nothing is searched. `kb_ids=None` searches every
        KB the user may read, up to MAX_KNOWLEDGE_BASES by name (a notice says when that cuts, and
        leaves out, with a notice, KBs that need a rebuild for the current model). A KB whose
        collection predates hybrid search is searched semantically, and a notice says how to upgrade it.
        `score_threshold` is a cosine similarity: it filters semantic results, and the semantic
        candidates of a hybrid search; keyword scores are BM25, so it has no meaning there.
        """
        started = time.perf_counter()
        query = self._clean_query(query)
        mode = _parse_mode(mode)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidLimit(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}.")
        every_readable = kb_ids is None
        if not every_readable:
            wanted = _parse_uuids(kb_ids, what="kb_ids", error=InvalidKnowledgeBaseIds, most=MAX_KNOWLEDGE_BASES)
            if not wanted:
                raise InvalidKnowledgeBaseIds("kb_ids must name at least one knowledge base, or be left out for all.")
        documents = None
        if document_ids is not None:
            documents = _parse_uuids(document_ids, what="document_ids", error=InvalidFilter, most=MAX_DOCUMENT_FILTER)
        if score_threshold is not None:
            if mode == SearchMode.KEYWORD:
                raise InvalidFilter(
                    "score_threshold is a cosine similarity and keyword scores are BM25: leave it out in keyword mode."
                )
            if not -1.0 <= score_threshold <= 1.0:
                raise InvalidFilter(f"score_threshold is a cosine similarity from -1 to 1, not {score_threshold}.")

        # Authorise while the query is embedded; a refusal cancels the embedding and searches nothing.
        embedding = asyncio.ensure_future(self.embeddings.embed_query(query)) if mode != SearchMode.KEYWORD else None
        notices: list[str] = []
        try:
            if every_readable:
                found = await self._every_readable(user_id, notices)
                wanted = list(found)
            else:
                readable = await self.permission_service.readable_knowledge_bases(user_id=user_id, kb_ids=wanted)
                found = self._check_readable(readable, wanted)
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        legacy = [found[kb_id] for kb_id in wanted if found[kb_id].keyword_settings is None]
        if embedding is None and legacy:
            embedding = asyncio.ensure_future(self.embeddings.embed_query(query))
        vector = await embedding if embedding is not None else None

        hits_per_kb = await asyncio.gather(
            *(
                self.chunk_service.search_chunks(
                    kb_id=kb_id,
                    named_vectors=found[kb_id].keyword_settings is not None,
                    limit=limit,
                    include_archived=include_archived,
                    score_threshold=score_threshold,
                    document_ids=documents,
                    **self._query_vectors(mode, found[kb_id], query, vector),
                )
                for kb_id in wanted
            )
        )
        hits = sorted((hit for hits in hits_per_kb for hit in hits), key=lambda hit: hit.score or 0.0, reverse=True)
        results = [
            SearchResult.from_chunk(hit, self._encoder_for(found[hit.kb_id]).highlights(query, hit.content))
            for hit in hits[:limit]
        ]
        await self.audit_service.record_search(
            user_id=user_id,
            query=query,
            kb_ids=wanted,
            result_count=len(results),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        ran = SearchMode.SEMANTIC if mode != SearchMode.SEMANTIC and wanted and len(legacy) == len(wanted) else mode
        return SearchResponse(results=results, mode=ran, notices=notices + self._notices(mode, legacy))

    async def _every_readable(self, user_id: int, notices: list[str]) -> dict[UUID, SearchableKnowledgeBase]:
        readable = list(
            await self.permission_service.all_readable_knowledge_bases(user_id=user_id, most=MAX_KNOWLEDGE_BASES + 1)
        )
        if not readable:
            notices.append("You may read no knowledge base yet: ask an owner to add you as a member.")
        if len(readable) > MAX_KNOWLEDGE_BASES:
            readable = readable[:MAX_KNOWLEDGE_BASES]
            notices.append(
                f"You may read more than {MAX_KNOWLEDGE_BASES} knowledge bases; this searched the first "
                f"{MAX_KNOWLEDGE_BASES} by name. Name the ones you want in kb_ids to search others."
            )
        stale = [kb for kb in readable if kb.embedding_model != self.embeddings.model_id]
        if stale:
            notices.append(
                f"Not searched, indexed with another embedding model: {', '.join(repr(kb.name) for kb in stale)}. "
                "Run `manage.py reindex --recreate` for them."
            )
        return {kb.id: kb for kb in readable if kb not in stale}

    @staticmethod
    def _encoder_for(kb: SearchableKnowledgeBase) -> KeywordEncoder:
        settings = kb.keyword_settings
        return keyword_encoder(KeywordSettings.from_dict(settings) if settings is not None else KeywordSettings())

    def _query_vectors(
        self, mode: SearchMode, kb: SearchableKnowledgeBase, query: str, vector: Sequence[float] | None
    ) -> dict[str, Sequence[float] | models.SparseVector | None]:
        if mode == SearchMode.SEMANTIC or kb.keyword_settings is None:
            return {"query_embedding": vector}
        keywords = self._encoder_for(kb).encode_query(query)
        if not keywords.indices:
            # Only stopwords: nothing for BM25 to match, so a hybrid search is a semantic one.
            return {"query_embedding": vector} if mode == SearchMode.HYBRID else {"query_keywords": keywords}
        if mode == SearchMode.KEYWORD:
            return {"query_keywords": keywords}
        return {"query_embedding": vector, "query_keywords": keywords}

    @staticmethod
    def _notices(mode: SearchMode, legacy: list[SearchableKnowledgeBase]) -> list[str]:
        if mode == SearchMode.SEMANTIC or not legacy:
            return []
        names = ", ".join(repr(kb.name) for kb in legacy)
        return [
            f"{names} {'was' if len(legacy) == 1 else 'were'} searched by meaning only: "
            f"{'its' if len(legacy) == 1 else 'their'} index predates keyword search. "
            "`manage.py reindex --recreate` rebuilds it with keyword vectors, without downtime."
        ]

    def _check_readable(
        self, readable: Sequence[SearchableKnowledgeBase], wanted: list[UUID]
    ) -> dict[UUID, SearchableKnowledgeBase]:
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
        return found

    @staticmethod
    def _clean_query(query: object) -> str:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQuery("The query is empty: send some words to search for.")
        query = query.strip()
        if len(query) > MAX_QUERY_CHARS:
            raise QueryTooLong(f"The query has {len(query)} characters; the most is {MAX_QUERY_CHARS}.")
        # PostgreSQL cannot store it in the audit log, which is written after the search has run.
        if "\x00" in query:
            raise InvalidSearchRequest(
                "The query contains a NUL character (\\0), which kbsite cannot store: remove it and search again.",
                detail={"field": "query"},
            )
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

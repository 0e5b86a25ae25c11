"""Search across the knowledge bases a user may read: validate, authorise, embed once per model, query, audit.

Three modes: `hybrid` (the default: semantic and BM25 keyword candidates fused by reciprocal rank
inside one Qdrant query), `semantic` (cosine similarity of the embeddings) and `keyword` (BM25).
Results may be grouped one entry per document, and may carry the passage around each chunk.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils.module_loading import import_string
from qdrant_client import models

from search.embedding import EmbeddingService, embedding_service
from search.embedding.registry import embedders
from search.errors import (
    EmbedderResponseInvalid,
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
from search.filters import SearchedFields, compile_filter
from search.keywords import KeywordEncoder, KeywordSettings, keyword_encoder
from search.pages import page_label
from search.services.chunks import ChunkSearch, ChunkService, StoredChunk
from search.services.collections import KbIndex, kb_index

MAX_LIMIT = 100
MAX_QUERY_CHARS = 2000
MAX_KNOWLEDGE_BASES = 50
MAX_DOCUMENT_FILTER = 100
DEFAULT_GROUP_SIZE = 3
MAX_GROUP_SIZE = 10
MAX_CONTEXT_CHUNKS = 5
#: Reciprocal rank fusion's constant: how little the very top ranks of one model's list outweigh the rest.
RRF_K = 60


def fuse_by_rank(ranked_lists: Sequence[Sequence[Any]], *, key: Any = id) -> list[Any]:
    """Merge lists ranked by scores that cannot be compared (two models' cosines) by reciprocal rank fusion.

    Each item scores the sum of 1 / (RRF_K + rank) over the lists it is in (rank from 1); ties keep the
    order of the lists given. Items are told apart by `key`.
    """
    fused: dict[Any, float] = {}
    items: dict[Any, Any] = {}
    for ranked in ranked_lists:
        for rank, item in enumerate(ranked, start=1):
            identity = key(item)
            items.setdefault(identity, item)
            fused[identity] = fused.get(identity, 0.0) + 1.0 / (RRF_K + rank)
    order = sorted(fused, key=lambda identity: fused[identity], reverse=True)
    return [items[identity] for identity in order]


def _searched_fields(kbs: Iterable[SearchableKnowledgeBase]) -> SearchedFields:
    """The KBs' declared fields by name (a name two KBs share is told apart by id)."""
    kbs = list(kbs)
    names = [kb.name for kb in kbs]
    return SearchedFields(
        {(kb.name if names.count(kb.name) == 1 else f"{kb.name} ({kb.id})"): kb.metadata_fields or {} for kb in kbs}
    )


@functools.lru_cache(maxsize=256)
def _encoder_for_settings(settings: tuple[tuple[str, Any], ...]) -> KeywordEncoder:
    """A KB's encoder from its stored settings' items: checking them is done once, not per KB a search reads."""
    return keyword_encoder(KeywordSettings.from_dict(dict(settings)))


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    SEMANTIC = "semantic"
    KEYWORD = "keyword"


class SearchableKnowledgeBase(Protocol):
    id: UUID
    name: str
    embedding_model: str
    vector_size: int
    #: The generation of the KB's points that searches read.
    index_generation: int
    #: BM25 settings; None for a KB made before hybrid search, which `upgrade_store` gave the defaults.
    keyword_settings: dict[str, Any] | None
    #: The metadata fields its filters may name, with their types (search.fields).
    metadata_fields: dict[str, str]


class KnowledgeBaseAccess(Protocol):
    """Answers which KBs a user may read; raises UnknownUser for a user that is not there."""

    async def readable_knowledge_bases(
        self, *, user_id: int, kb_ids: Sequence[UUID]
    ) -> Sequence[SearchableKnowledgeBase]: ...

    async def all_readable_knowledge_bases(self, *, user_id: int, most: int) -> Sequence[SearchableKnowledgeBase]:
        """Up to `most` of the KBs the user may read, by name."""
        ...


class DocumentTexts(Protocol):
    """Reads slices of documents' stored text (the text chunk offsets point into)."""

    async def text_slices(self, *, spans: Sequence[tuple[UUID, int, int]]) -> list[str | None]:
        """text[start:end] of each (document, start, end), or None where the document is gone."""
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
    #: With context_chunks: the document's text from the first neighbouring chunk taken to the last,
    #: and where that passage starts and ends in the document's text.
    context: str | None = None
    context_start: int | None = None
    context_end: int | None = None
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
class DocumentHits:
    """One document's best chunks for a grouped search; it ranks by the first."""

    kb_id: UUID
    document_id: UUID
    title: str
    hits: list[SearchResult]

    @property
    def score(self) -> float:
        return self.hits[0].score


@dataclass(frozen=True)
class SearchResponse:
    #: Best first; grouped by document, the best chunk of each document.
    results: list[SearchResult]
    #: The mode that ran: the one asked for, or semantic where no KB searched has keyword vectors.
    mode: SearchMode
    #: What the caller should know about how the search ran, e.g. a KB that needs a rebuild for hybrid.
    notices: list[str] = field(default_factory=list)
    #: Grouped by document: each document's best chunks, in the order of `results`; else None.
    documents: list[DocumentHits] | None = None


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


def _check_whole_number(name: str, value: object, least: int, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise InvalidSearchRequest(
            f"{name} must be a whole number from {least} to {most}, not {value!r}.", detail={"field": name}
        )


class SearchService:
    def __init__(
        self,
        permission_service: KnowledgeBaseAccess,
        audit_service: SearchRecorder,
        *,
        chunk_service: ChunkService | None = None,
        embeddings: EmbeddingService | None = None,
        document_texts: DocumentTexts | None = None,
    ) -> None:
        self.permission_service = permission_service
        self.audit_service = audit_service
        self.chunk_service = chunk_service or ChunkService()
        self.embeddings = embeddings or embedding_service
        # The knowledge app keeps the texts; a setting names its reader so imports stay one-way.
        self.document_texts = document_texts or import_string(settings.SEARCH["DOCUMENT_TEXTS"])()

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
        response = await self.asearch(
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

    async def asearch(
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
        filter: Any = None,
        group_by_document: bool = False,
        group_size: int = DEFAULT_GROUP_SIZE,
        context_chunks: int = 0,
    ) -> SearchResponse:
        """The best `limit` chunks for `query` across `kb_ids` in `mode`, best first; the search is audited.

        Every KB must be readable by the user, or nothing is searched. `kb_ids=None` searches every
        KB the user may read, up to MAX_KNOWLEDGE_BASES by name (a notice says when that cuts, and
        leaves out, with a notice, KBs whose model no configured embedder makes). The KBs of one model
        are searched by one engine query, their tenant keys matched together; KBs of several models have
        the query embedded once per model and their rankings fused by rank (`fuse_by_rank`).
        `score_threshold` is a cosine similarity: it filters semantic results, and the semantic
        candidates of a hybrid search; keyword scores are BM25, so it has no meaning there.
        `filter` is a metadata filter as search.filters reads it, checked against the fields every KB
        searched declares once they are known (InvalidFilter names a bad part and lists the fields).

        `group_by_document` makes `limit` count documents: each comes with its best `group_size`
        chunks (in `documents`), and `results` holds the best chunk of each. `context_chunks` adds to
        each chunk the passage from up to that many chunks before it to as many after it in its
        document (fewer at the document's start and end), overlaps merged.
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
        _check_whole_number("group_size", group_size, 1, MAX_GROUP_SIZE)
        _check_whole_number("context_chunks", context_chunks, 0, MAX_CONTEXT_CHUNKS)

        # With one model, authorise while the query is embedded; a refusal cancels the embedding and searches
        # nothing. With endpoints configured, the models are known once the KBs are: the query is embedded
        # then, once per model in use, so no model embeds a query nobody needs (and takes CPU from one who does).
        speculate = mode != SearchMode.KEYWORD and not embedders.has_endpoints()
        embedding = asyncio.ensure_future(self.embeddings.embed_query(query)) if speculate else None
        notices: list[str] = []
        try:
            if every_readable:
                found = await self._every_readable(user_id, notices)
                wanted = list(found)
            else:
                readable = await self.permission_service.readable_knowledge_bases(user_id=user_id, kb_ids=wanted)
                found = self._check_readable(readable, wanted)
            # Declared fields only: a search reads the index, it never decides what is in it.
            metadata_filter = (
                compile_filter(filter, fields=_searched_fields(found.values())) if filter is not None
                else None
            )
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        by_model: dict[str, list[SearchableKnowledgeBase]] = {}
        for kb_id in wanted:
            by_model.setdefault(found[kb_id].embedding_model, []).append(found[kb_id])
        vectors = (
            await self._query_vectors_by_model(query, embedding, list(by_model)) if mode != SearchMode.KEYWORD else {}
        )
        for model, vector in vectors.items():
            wrong = {kb.vector_size for kb in by_model[model]} - {len(vector)}
            if wrong:
                raise EmbedderResponseInvalid(
                    f"The embedder {model!r} sent a query vector of {len(vector)} dimensions, not "
                    f"{', '.join(map(str, sorted(wrong)))}: check the model its endpoint serves.",
                    detail={"embedder": model},
                )

        documents_found = None
        requests_by_model = [
            self._chunk_searches(
                kbs,
                mode=mode,
                query=query,
                vector=vectors.get(model),
                limit=limit,
                include_archived=include_archived,
                score_threshold=score_threshold,
                document_ids=tuple(str(document) for document in documents or ()),
                metadata_filter=metadata_filter,
                group_size=group_size if group_by_document else None,
            )
            for model, kbs in by_model.items()
        ]
        # Within one model scores compare, so its answers merge by score; across models (cosines of two
        # vector spaces) they do not, so the models' rankings are fused by rank.
        if group_by_document:
            ranked = await asyncio.gather(
                *(self._best_first(self.chunk_service.search_chunk_groups, requests) for requests in requests_by_model)
            )
            groups = fuse_by_rank(ranked, key=lambda group: (group[0].kb_id, group[0].document_id))[:limit]
            hits = [hit for group in groups for hit in group]
        else:
            ranked = await asyncio.gather(
                *(self._best_first(self.chunk_service.search_chunks, requests) for requests in requests_by_model)
            )
            hits = fuse_by_rank(ranked, key=lambda hit: (hit.kb_id, hit.document_id, hit.chunk_index))[:limit]
        # One encoder per KB, not per hit: reading a KB's settings costs more than marking a hit.
        encoders = {kb_id: self._encoder_for(found[kb_id]) for kb_id in {hit.kb_id for hit in hits}}
        found_hits = [
            SearchResult.from_chunk(hit, encoders[hit.kb_id].highlights(query, hit.content))
            for hit in hits
        ]
        if context_chunks:
            found_hits = await self._with_context(found_hits, context_chunks, found)
        if group_by_document:
            chosen = iter(found_hits)
            documents_found = [
                DocumentHits(
                    kb_id=group[0].kb_id,
                    document_id=group[0].document_id,
                    title=group[0].title,
                    hits=[next(chosen) for _ in group],
                )
                for group in groups
            ]
            results = [document.hits[0] for document in documents_found]
        else:
            results = found_hits
        await self.audit_service.record_search(
            user_id=user_id,
            query=query,
            kb_ids=wanted,
            result_count=len(results),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        return SearchResponse(results=results, mode=mode, notices=notices, documents=documents_found)

    #: For sync callers (the admin's search box): one event loop per call, so not for a loop of searches.
    search = async_to_sync(asearch)

    @staticmethod
    async def _best_first(search, requests: Sequence[ChunkSearch]) -> list[Any]:
        """Run one model's engine queries and merge their answers (chunks or groups of them) by score."""
        answers = await asyncio.gather(*map(search, requests))

        def score(answer: Any) -> float:
            first = answer[0] if isinstance(answer, (list, tuple)) else answer
            return first.score or 0.0

        return sorted((item for answer in answers for item in answer), key=score, reverse=True)

    async def _query_vectors_by_model(
        self, query: str, embedding: asyncio.Future | None, models_used: list[str]
    ) -> dict[str, list[float]]:
        """The query embedded once per model in use; the default model's embedding may have been started early."""
        default = self.embeddings.model_id
        if embedding is not None and default not in models_used:
            embedding.cancel()
            embedding = None
        others = [model for model in models_used if model != default or embedding is None]
        try:
            embedded = await asyncio.gather(
                *(embedders.service(model, default=self.embeddings).embed_query(query) for model in others)
            )
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        vectors = dict(zip(others, embedded))
        if embedding is not None:
            vectors[default] = await embedding
        return vectors

    def _chunk_searches(
        self,
        kbs: Sequence[SearchableKnowledgeBase],
        *,
        mode: SearchMode,
        query: str,
        vector: Sequence[float] | None,
        **request: Any,
    ) -> list[ChunkSearch]:
        """One chunk search per collection and query vectors: for KBs of one model and keyword settings, one.

        KBs whose keyword settings differ (another language, say) make different keyword queries,
        so each such set is its own engine query and their answers are merged by score. The KBs are
        sorted by collection and encoder first and the query's vectors made per such set, not per KB:
        a search covers up to 50 knowledge bases, which mostly share both.
        """
        by_encoder: dict[tuple[str, KeywordEncoder | None], list[KbIndex]] = {}
        for kb in kbs:
            index = kb_index(kb.id, kb.embedding_model, kb.vector_size, kb.index_generation)
            encoder = None if mode == SearchMode.SEMANTIC else self._encoder_for(kb)
            by_encoder.setdefault((index.collection, encoder), []).append(index)
        together: dict[tuple[str, Any], tuple[list[KbIndex], dict[str, Any]]] = {}
        keywords_by_encoder: dict[KeywordEncoder, models.SparseVector] = {}  # once per encoder, whatever the model
        for (collection, encoder), indexes in by_encoder.items():
            vectors = self._query_vectors(mode, encoder, query, vector, keywords_by_encoder)
            keywords = vectors.get("query_keywords")
            # Settings that make the same keyword query (two spellings of the defaults) search together.
            key = (collection, (tuple(keywords.indices), tuple(keywords.values)) if keywords else None)
            together.setdefault(key, ([], vectors))[0].extend(indexes)
        return [
            ChunkSearch(
                indexes=tuple(indexes),
                query_embedding=tuple(vectors["query_embedding"]) if vectors.get("query_embedding") is not None else None,
                query_keywords=vectors.get("query_keywords"),
                **request,
            )
            for indexes, vectors in together.values()
        ]

    async def _with_context(
        self, results: list[SearchResult], around: int, kbs: dict[UUID, SearchableKnowledgeBase]
    ) -> list[SearchResult]:
        """The results with the passage from `around` chunks before each to `around` after it.

        The neighbours' offsets come from Qdrant (one retrieve per KB), the passage from the stored
        text (one read for all), so text between chunks that do not overlap is there too. A chunk
        whose stored text no longer matches it (its document is being indexed again) keeps itself
        as its context.
        """
        kb_ids = list(dict.fromkeys(result.kb_id for result in results))
        neighbours_per_kb = await asyncio.gather(
            *(
                self.chunk_service.get_chunks(
                    kb_id=kb_id,
                    index=KbIndex(
                        kb_id=kb_id,
                        model=kbs[kb_id].embedding_model,
                        vector_size=kbs[kb_id].vector_size,
                        generation=kbs[kb_id].index_generation,
                    ),
                    positions=[
                        (result.document_id, result.chunk_index + step)
                        for result in results
                        if result.kb_id == kb_id
                        for step in range(-around, around + 1)
                        if step
                    ],
                )
                for kb_id in kb_ids
            )
        )
        offsets = {
            (chunk.document_id, chunk.chunk_index): (chunk.char_start, chunk.char_end)
            for chunks in neighbours_per_kb
            for chunk in chunks
        }
        spans = []
        for result in results:
            if result.char_start is None or result.char_end is None:
                spans.append((result.document_id, None, None))  # indexed before chunks kept their offsets
                continue
            offsets[(result.document_id, result.chunk_index)] = (result.char_start, result.char_end)
            first = last = result.chunk_index
            # Only an unbroken run of neighbours: a missing chunk ends the passage on that side.
            while first > result.chunk_index - around and offsets.get((result.document_id, first - 1)):
                first -= 1
            while last < result.chunk_index + around and offsets.get((result.document_id, last + 1)):
                last += 1
            start, end = offsets[(result.document_id, first)][0], offsets[(result.document_id, last)][1]
            spans.append((result.document_id, start, end))
        complete = [span for span in spans if None not in span]
        texts = dict(zip(complete, await self.document_texts.text_slices(spans=complete))) if complete else {}
        with_context = []
        for result, span in zip(results, spans):
            text = texts.get(span)
            _, start, end = span
            inside = slice(result.char_start - start, result.char_end - start) if text is not None else None
            if text is None or text[inside] != result.content:
                text, start, end = result.content, result.char_start, result.char_end
            with_context.append(replace(result, context=text, context_start=start, context_end=end))
        return with_context

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
        stale = [kb for kb in readable if not self._embeds_for(kb.embedding_model)]
        if stale:
            notices.append(
                f"Not searched, indexed with another embedding model: {', '.join(repr(kb.name) for kb in stale)}. "
                "Run `manage.py reindex --recreate` for them."
            )
        return {kb.id: kb for kb in readable if kb not in stale}

    @staticmethod
    def _encoder_for(kb: SearchableKnowledgeBase) -> KeywordEncoder:
        settings = kb.keyword_settings
        if not settings:
            return _encoder_for_settings(())
        try:
            return _encoder_for_settings(tuple(sorted(settings.items())))
        except TypeError:  # a value that cannot be a cache key: from_dict says what is wrong with it
            return keyword_encoder(KeywordSettings.from_dict(settings))

    @staticmethod
    def _query_vectors(
        mode: SearchMode,
        encoder: KeywordEncoder | None,
        query: str,
        vector: Sequence[float] | None,
        keywords_by_encoder: dict[KeywordEncoder, models.SparseVector],
    ) -> dict[str, Sequence[float] | models.SparseVector | None]:
        if mode == SearchMode.SEMANTIC or encoder is None:
            return {"query_embedding": vector}
        keywords = keywords_by_encoder.get(encoder)
        if keywords is None:
            keywords = keywords_by_encoder[encoder] = encoder.encode_query(query)
        if not keywords.indices:
            # Only stopwords: nothing for BM25 to match, so a hybrid search is a semantic one.
            return {"query_embedding": vector} if mode == SearchMode.HYBRID else {"query_keywords": keywords}
        if mode == SearchMode.KEYWORD:
            return {"query_keywords": keywords}
        return {"query_embedding": vector, "query_keywords": keywords}

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
        stale = [kb for kb in found.values() if not self._embeds_for(kb.embedding_model)]
        if stale:
            raise EmbeddingModelMismatch(
                f"Knowledge base {stale[0].name!r} was indexed with {stale[0].embedding_model}, which no configured "
                f"embedder makes (the site has {', '.join(self._embedder_names())}). Run `manage.py reindex "
                "--kb <slug> --recreate` for it, or configure that embedder in EMBEDDERS_JSON.",
                detail={"kb_ids": [str(kb.id) for kb in stale]},
            )
        return found

    def _embeds_for(self, model: str) -> bool:
        return model == self.embeddings.model_id or embedders.is_configured(model)

    def _embedder_names(self) -> list[str]:
        return list(dict.fromkeys([self.embeddings.model_id, *embedders.names()]))

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

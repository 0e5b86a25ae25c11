"""A knowledge base's chunks in Qdrant: written, listed, counted, searched and archived through AsyncQdrantClient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from qdrant_client import models

from search.chunking import TextChunk
from search.filters import METADATA_FIELD, TAGS_FIELD, CompiledFilter
from search.pages import page_label, page_range
from search.qdrant import collection_alias, is_missing_collection, qdrant_service, translate_unreachable
from search.query_batching import QueryBatcher
from search.services.collections import DENSE_VECTOR, KEYWORD_VECTOR, CollectionService

# Point ids are derived from (document, chunk index), so writing a chunk again replaces it.
POINT_NAMESPACE = UUID("8f9c1d52-6a3e-4c1b-9a57-2f4e7b0c9d11")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
UPSERT_BATCH_SIZE = 128

# Reciprocal rank fusion of the semantic and keyword candidates: score = sum of weight / (k + rank),
# rank from 0. Chosen on SciFact's train split (see README, "Search modes"): over k 1-60, weights and
# 50 or 100 candidates, k 5 with the keyword side weighted 0.7 gave the best nDCG@10 (0.835 offline,
# against 0.820 for k 2 with equal weights). Unequal weights also end the exact ties equal ones make
# (ranks (a, b) and (b, a) score alike), which left the order of a third of the results to chance.
RRF_K = 5
RRF_WEIGHTS: list[float] | None = [1.0, 0.7]  # dense, keyword: the order of the prefetches
# Candidates each side brings to the fusion, at least; a larger `limit` brings more.
FUSION_CANDIDATES = 100


def chunk_point_id(document_id: UUID | str, chunk_index: int) -> str:
    return str(uuid5(POINT_NAMESPACE, f"{document_id}/{chunk_index}"))


@dataclass(frozen=True)
class StoredChunk:
    """One chunk as Qdrant holds it; `score` is set on search hits."""

    kb_id: UUID
    document_id: UUID
    chunk_index: int
    content: str
    title: str
    char_start: int | None
    char_end: int | None
    archived_at: datetime | None
    score: float | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The pages (from 1) the chunk spans, for documents with pages (PDF, DOCX with page breaks).
    page_start: int | None = None
    page_end: int | None = None

    @property
    def pages(self) -> str:
        return page_label(self.page_start, self.page_end)

    @classmethod
    def from_point(cls, point: Any) -> StoredChunk:
        payload = point.payload or {}
        archived_at = payload.get("archived_at")
        return cls(
            kb_id=UUID(payload["kb_id"]),
            document_id=UUID(payload["document_id"]),
            chunk_index=int(payload["chunk_index"]),
            content=payload.get("content", ""),
            title=payload.get("title", ""),
            char_start=payload.get("char_start"),
            char_end=payload.get("char_end"),
            archived_at=datetime.fromisoformat(archived_at) if archived_at else None,
            score=getattr(point, "score", None),
            tags=tuple(payload.get(TAGS_FIELD) or ()),
            metadata=dict(payload.get(METADATA_FIELD) or {}),
            page_start=payload.get("page_start"),
            page_end=payload.get("page_end"),
        )


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk whole, as a backup keeps it: its payload (less the ids it is filed under) and its dense vector."""

    document_id: UUID
    chunk_index: int
    payload: dict[str, Any]
    dense: Sequence[float]


def _archive_payload(archived_at: datetime | None) -> dict[str, Any]:
    """`archived` is what searches filter on (indexed); `archived_at` is what people are shown."""
    return {"archived": archived_at is not None, "archived_at": archived_at.isoformat() if archived_at else None}


def _labels_payload(tags: Sequence[str], metadata: dict[str, Any]) -> dict[str, Any]:
    """A document's tags and metadata as every one of its chunks carries them, for filters to read."""
    return {TAGS_FIELD: list(tags), METADATA_FIELD: dict(metadata)}


def _page_payload(page_starts: Sequence[int] | None, chunk: TextChunk) -> dict[str, int | None]:
    first, last = page_range(page_starts, char_start=chunk.char_start, char_end=chunk.char_end)
    return {"page_start": first, "page_end": last}


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _document_filter(document_id: UUID | str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[_match("document_id", str(document_id)), *extra])


class ChunkService:
    """Every read and write of chunks; each KB has one collection, reached through the alias `kb_{id}`."""

    def __init__(self, *, collections: CollectionService | None = None) -> None:
        self.collections = collections or CollectionService()
        # Searches of one collection that start together go to Qdrant as one batch.
        self._queries = QueryBatcher(lambda: qdrant_service.client)

    @translate_unreachable
    async def get_chunks_by_document(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        offset: int | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> tuple[list[StoredChunk], int | None]:
        """One page of a document's chunks in chunk order, and the offset of the next page (or None)."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        try:
            points, _ = await qdrant_service.client.scroll(
                collection_name=collection_alias(kb_id),
                scroll_filter=_document_filter(document_id),
                order_by=models.OrderBy(key="chunk_index", start_from=offset or 0),
                limit=limit + 1,
                with_payload=True,
                with_vectors=False,
            )
        except Exception as exc:
            if is_missing_collection(exc):
                return [], None
            raise
        chunks = [StoredChunk.from_point(point) for point in points]
        if len(chunks) > limit:
            return chunks[:limit], chunks[limit].chunk_index
        return chunks, None

    @translate_unreachable
    async def search_chunks(
        self,
        *,
        kb_id: UUID | str,
        query_embedding: Sequence[float] | None = None,
        query_keywords: models.SparseVector | None = None,
        limit: int = 10,
        include_archived: bool = False,
        score_threshold: float | None = None,
        document_ids: Sequence[UUID | str] | None = None,
        metadata_filter: CompiledFilter | None = None,
        named_vectors: bool = True,
    ) -> list[StoredChunk]:
        """The KB's best chunks for the query, best first, in one Qdrant query.

        With an embedding only: nearest by cosine (`score_threshold` is a cosine similarity).
        With keywords only: BM25 with Qdrant's IDF. With both: the two candidate lists fused by
        reciprocal rank (the threshold then applies to the semantic candidates). Every stage
        applies the same filter. `named_vectors=False` searches a collection made before hybrid
        search, which holds one unnamed dense vector and no keyword vector.
        """
        await self._index_filtered_keys(kb_id, metadata_filter)
        request = self._query_request(
            kb_id=kb_id,
            query_embedding=query_embedding,
            query_keywords=query_keywords,
            limit=limit,
            candidates=max(limit, FUSION_CANDIDATES),
            include_archived=include_archived,
            score_threshold=score_threshold,
            document_ids=document_ids,
            metadata_filter=metadata_filter,
            named_vectors=named_vectors,
        )
        try:
            points = await self._queries.query(collection_name=collection_alias(kb_id), request=request)
        except Exception as exc:
            if is_missing_collection(exc):
                return []
            raise
        return [StoredChunk.from_point(point) for point in points]

    @translate_unreachable
    async def search_chunk_groups(
        self,
        *,
        kb_id: UUID | str,
        query_embedding: Sequence[float] | None = None,
        query_keywords: models.SparseVector | None = None,
        limit: int = 10,
        group_size: int = 3,
        include_archived: bool = False,
        score_threshold: float | None = None,
        document_ids: Sequence[UUID | str] | None = None,
        metadata_filter: CompiledFilter | None = None,
        named_vectors: bool = True,
    ) -> list[list[StoredChunk]]:
        """The KB's best `limit` documents for the query, each as its best `group_size` chunks, best first.

        The same query as search_chunks, grouped by Qdrant on `document_id`: a document ranks by its
        best chunk. Grouped queries have no batch form, so each goes to Qdrant on its own.
        """
        await self._index_filtered_keys(kb_id, metadata_filter)
        # Qdrant (and the Edge store) multiply prefetch limits by the number of groups asked for.
        request = self._query_request(
            kb_id=kb_id,
            query_embedding=query_embedding,
            query_keywords=query_keywords,
            limit=limit,
            candidates=FUSION_CANDIDATES,
            include_archived=include_archived,
            score_threshold=score_threshold,
            document_ids=document_ids,
            metadata_filter=metadata_filter,
            named_vectors=named_vectors,
        )
        try:
            result = await qdrant_service.client.query_points_groups(
                collection_name=collection_alias(kb_id),
                group_by="document_id",
                query=request.query,
                using=request.using,
                prefetch=request.prefetch,
                query_filter=request.filter,
                score_threshold=request.score_threshold,
                limit=limit,
                group_size=group_size,
                with_payload=True,
                with_vectors=False,
            )
        except Exception as exc:
            if is_missing_collection(exc):
                return []
            raise
        return [[StoredChunk.from_point(point) for point in group.hits] for group in result.groups]

    @translate_unreachable
    async def get_chunks(
        self, *, kb_id: UUID | str, positions: Sequence[tuple[UUID | str, int]]
    ) -> list[StoredChunk]:
        """The chunks at these (document, chunk index) positions that exist, in one Qdrant call."""
        if not positions:
            return []
        ids = list(
            dict.fromkeys(chunk_point_id(document, index) for document, index in positions if index >= 0)
        )
        try:
            points = await qdrant_service.client.retrieve(
                collection_name=collection_alias(kb_id), ids=ids, with_payload=True, with_vectors=False
            )
        except Exception as exc:
            if is_missing_collection(exc):
                return []
            raise
        return [StoredChunk.from_point(point) for point in points]

    async def _index_filtered_keys(self, kb_id: UUID | str, metadata_filter: CompiledFilter | None) -> None:
        if metadata_filter is not None and metadata_filter.index_hints:
            await self.collections.ensure_filter_indexes(kb_id=kb_id, fields=metadata_filter.index_hints)

    def _query_request(
        self,
        *,
        kb_id: UUID | str,
        query_embedding: Sequence[float] | None,
        query_keywords: models.SparseVector | None,
        limit: int,
        candidates: int,
        include_archived: bool,
        score_threshold: float | None,
        document_ids: Sequence[UUID | str] | None,
        metadata_filter: CompiledFilter | None,
        named_vectors: bool,
    ) -> models.QueryRequest:
        if query_embedding is None and query_keywords is None:
            raise ValueError("a chunk search needs a query embedding, query keywords or both")
        if query_keywords is not None and not named_vectors:
            raise ValueError("a collection made before hybrid search has no keyword vector")
        query_filter = self._search_filter(kb_id, include_archived, document_ids, metadata_filter)
        dense = DENSE_VECTOR if named_vectors else None
        if query_embedding is not None and query_keywords is not None:
            request = models.QueryRequest(
                prefetch=[
                    models.Prefetch(
                        query=models.NearestQuery(nearest=list(query_embedding)),
                        using=dense,
                        filter=query_filter,
                        limit=candidates,
                        score_threshold=score_threshold,
                    ),
                    models.Prefetch(
                        query=models.NearestQuery(nearest=query_keywords),
                        using=KEYWORD_VECTOR,
                        filter=query_filter,
                        limit=candidates,
                    ),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=RRF_WEIGHTS)),
                filter=query_filter,
                limit=limit,
            )
        elif query_embedding is not None:
            request = models.QueryRequest(
                query=models.NearestQuery(nearest=list(query_embedding)),
                using=dense,
                filter=query_filter,
                limit=limit,
                score_threshold=score_threshold,
            )
        else:
            request = models.QueryRequest(
                query=models.NearestQuery(nearest=query_keywords), using=KEYWORD_VECTOR, filter=query_filter, limit=limit
            )
        request.with_payload, request.with_vector = True, False
        return request

    @staticmethod
    def _search_filter(
        kb_id: UUID | str,
        include_archived: bool,
        document_ids: Sequence[UUID | str] | None,
        metadata_filter: CompiledFilter | None = None,
    ) -> models.Filter:
        # The tenant guard stands should an alias ever point at a wrong collection.
        must: list[models.Condition] = [_match("kb_id", str(kb_id))]
        if document_ids:
            must.append(
                models.FieldCondition(
                    key="document_id", match=models.MatchAny(any=[str(d) for d in document_ids])
                )
            )
        if metadata_filter is not None:
            must.append(metadata_filter.filter)
        # must_not on the indexed flag, not must archived == false: the engine answers it from the
        # bool index's small "true" set instead of checking every other point (10x at 100k points).
        must_not = [] if include_archived else [_match("archived", True)]
        return models.Filter(must=must, must_not=must_not or None)

    @translate_unreachable
    async def count_chunks(self, *, kb_id: UUID | str, document_id: UUID | str | None = None) -> int:
        """How many chunks the KB (or one of its documents) has in Qdrant, counted exactly."""
        try:
            result = await qdrant_service.client.count(
                collection_name=collection_alias(kb_id),
                count_filter=_document_filter(document_id) if document_id is not None else None,
                exact=True,
            )
        except Exception as exc:
            if is_missing_collection(exc):
                return 0
            raise
        return int(result.count)

    @translate_unreachable
    async def upsert_chunks(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        title: str,
        chunks: Sequence[TextChunk],
        vectors: Sequence[Sequence[float]],
        keyword_vectors: Sequence[models.SparseVector] | None = None,
        archived_at: datetime | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        collection_name: str | None = None,
        page_starts: Sequence[int] | None = None,
    ) -> int:
        """Write chunks with their vectors; the KB's collection is created on first write.

        `keyword_vectors` (BM25, one per chunk) go with the dense ones into a collection of named
        vectors; without them the chunks go to a collection made before hybrid search, as one
        unnamed vector. Each chunk carries the document's `tags` and `metadata`, which filters read, and,
        from `page_starts` (the document's, see `search.pages`), its page range. `collection_name` writes
        into a given collection version instead (a rebuild in progress).
        """
        if len(chunks) != len(vectors) or (keyword_vectors is not None and len(keyword_vectors) != len(chunks)):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return 0
        if collection_name is None:
            await self.collections.ensure_collection(kb_id=kb_id, vector_size=len(vectors[0]))
        points = [
            models.PointStruct(
                id=chunk_point_id(document_id, chunk.index),
                vector=(
                    {DENSE_VECTOR: list(vector), KEYWORD_VECTOR: keyword_vectors[position]}
                    if keyword_vectors is not None
                    else list(vector)
                ),
                payload={
                    "kb_id": str(kb_id),
                    "document_id": str(document_id),
                    "chunk_index": chunk.index,
                    "content": chunk.content,
                    "title": title,
                    "char_start": chunk.char_start,
                    "char_end": chunk.char_end,
                    **_page_payload(page_starts, chunk),
                    **_archive_payload(archived_at),
                    **_labels_payload(tags, metadata or {}),
                },
            )
            for position, (chunk, vector) in enumerate(zip(chunks, vectors))
        ]
        client = qdrant_service.client
        for start in range(0, len(points), UPSERT_BATCH_SIZE):
            await client.upsert(
                collection_name=collection_name or collection_alias(kb_id),
                points=points[start : start + UPSERT_BATCH_SIZE],
                wait=True,
            )
        return len(points)

    @translate_unreachable
    async def delete_document_chunks(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        from_index: int = 0,
        collection_name: str | None = None,
    ) -> None:
        """Delete a document's chunks, or only those from `from_index` on (left over from a longer version)."""
        extra = [models.FieldCondition(key="chunk_index", range=models.Range(gte=from_index))] if from_index else []
        try:
            await qdrant_service.client.delete(
                collection_name=collection_name or collection_alias(kb_id),
                points_selector=models.FilterSelector(filter=_document_filter(document_id, *extra)),
                wait=True,
            )
        except Exception as exc:
            if not is_missing_collection(exc):
                raise

    @translate_unreachable
    async def set_archived(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        archived_at: datetime | None,
        collection_name: str | None = None,
    ) -> None:
        """Mark a document's chunks archived (or not): a payload update, nothing is re-embedded."""
        await self._set_document_payload(kb_id, document_id, _archive_payload(archived_at), collection_name)

    @translate_unreachable
    async def set_title(
        self, *, kb_id: UUID | str, document_id: UUID | str, title: str, collection_name: str | None = None
    ) -> None:
        """Give a document's chunks its new title, which search results show."""
        await self._set_document_payload(kb_id, document_id, {"title": title}, collection_name)

    @translate_unreachable
    async def set_labels(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        tags: Sequence[str],
        metadata: dict[str, Any],
        collection_name: str | None = None,
    ) -> None:
        """Give a document's chunks its new tags and metadata: a payload update, nothing is re-embedded.

        Both are replaced whole, so a key removed from the metadata is gone from every chunk.
        """
        await self._set_document_payload(kb_id, document_id, _labels_payload(tags, metadata), collection_name)

    async def _set_document_payload(
        self, kb_id: UUID | str, document_id: UUID | str, payload: dict[str, Any], collection_name: str | None
    ) -> None:
        try:
            await qdrant_service.client.set_payload(
                collection_name=collection_name or collection_alias(kb_id),
                payload=payload,
                points=models.FilterSelector(filter=_document_filter(document_id)),
                wait=True,
            )
        except Exception as exc:
            if not is_missing_collection(exc):
                raise

    # Backups: every chunk read out whole with its dense vector, and written back whole.

    @translate_unreachable
    async def get_document_chunk_records(
        self, *, kb_id: UUID | str, document_id: UUID | str, named_vectors: bool = True
    ) -> list[ChunkRecord]:
        """All of a document's chunks in chunk order, each with its payload and dense vector."""
        records: list[ChunkRecord] = []
        while True:
            try:
                points, _ = await qdrant_service.client.scroll(
                    collection_name=collection_alias(kb_id),
                    scroll_filter=_document_filter(document_id),
                    order_by=models.OrderBy(
                        key="chunk_index", start_from=records[-1].chunk_index + 1 if records else 0
                    ),
                    limit=MAX_PAGE_SIZE,
                    with_payload=True,
                    with_vectors=[DENSE_VECTOR] if named_vectors else True,
                )
            except Exception as exc:
                if is_missing_collection(exc):
                    return []
                raise
            for point in points:
                payload = dict(point.payload or {})
                vector = point.vector[DENSE_VECTOR] if isinstance(point.vector, dict) else point.vector
                records.append(
                    ChunkRecord(
                        document_id=UUID(payload.pop("document_id")),
                        chunk_index=int(payload.pop("chunk_index")),
                        payload={key: value for key, value in payload.items() if key != "kb_id"},
                        dense=vector,
                    )
                )
            if len(points) < MAX_PAGE_SIZE:
                return records

    @translate_unreachable
    async def write_chunk_records(
        self,
        *,
        kb_id: UUID | str,
        collection_name: str,
        records: Sequence[ChunkRecord],
        keyword_vectors: Sequence[models.SparseVector],
    ) -> int:
        """Write chunks read by `get_document_chunk_records` (perhaps on another site) into a KB's collection."""
        if len(keyword_vectors) != len(records):
            raise ValueError(f"{len(records)} chunks but {len(keyword_vectors)} keyword vectors")
        points = [
            models.PointStruct(
                id=chunk_point_id(record.document_id, record.chunk_index),
                vector={DENSE_VECTOR: list(record.dense), KEYWORD_VECTOR: keywords},
                payload={
                    **record.payload,
                    "kb_id": str(kb_id),
                    "document_id": str(record.document_id),
                    "chunk_index": record.chunk_index,
                },
            )
            for record, keywords in zip(records, keyword_vectors)
        ]
        for start in range(0, len(points), UPSERT_BATCH_SIZE):
            await qdrant_service.client.upsert(
                collection_name=collection_name, points=points[start : start + UPSERT_BATCH_SIZE], wait=True
            )
        return len(points)

"""Knowledge bases' chunks in Qdrant: written, listed, counted, searched and archived through AsyncQdrantClient."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID, uuid5

from django.conf import settings
from django.utils.module_loading import import_string
from qdrant_client import models

from search.chunking import TextChunk
from search.errors import KnowledgeBaseNotFound
from search.fields import FIELD_TYPES, METADATA_FIELD, Fields, typed_object, typed_payload
from search.filters import TAGS_FIELD, CompiledFilter
from search.pages import page_label, page_range
from search.qdrant import qdrant_service, translate_unreachable, unless_missing
from search.query_batching import QueryBatcher
from search.services.collections import (
    DENSE_VECTOR,
    KEYWORD_VECTOR,
    SEARCH_KEY_FIELD,
    TENANT_FIELD,
    CollectionService,
    KbIndex,
    search_key_filter,
    tenant_filter,
)

# Point ids are derived from (tenant key, document, chunk index), so writing a chunk again replaces it
# and a rebuild's next generation lands beside the active one.
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
# Candidates each side brings to the fusion, at least; a larger `limit` brings more. Keep it at the
# search's MAX_LIMIT or above: fewer (30 measured 0.13 ms of engine time against 0.25 ms for a hybrid
# search of 50 knowledge bases, with SciFact nDCG@10 within 0.003) make a search's first results depend
# on the limit asked, since a larger limit fuses more candidates.
FUSION_CANDIDATES = 100


def chunk_point_id(tenant: str, document_id: UUID | str, chunk_index: int) -> str:
    return str(uuid5(POINT_NAMESPACE, f"{tenant}/{document_id}/{chunk_index}"))


class KbIndexes(Protocol):
    """Answers where a KB's searched points are: the knowledge app keeps each KB's model and active generation."""

    async def active_index(self, *, kb_id: UUID | str) -> KbIndex | None:
        """The KB's active index, or None for a KB that is not there."""
        ...

    async def active_indexes(self, *, kb_ids: Sequence[UUID | str]) -> dict[UUID, KbIndex]:
        """The active index of each of these KBs that is there, read at once."""
        ...


@dataclass(frozen=True)
class ChunkSearch:
    """One chunk search, built once by SearchService and run by ChunkService with or without grouping.

    `indexes` are the KB generations searched, all in one collection: one engine query covers them.
    With an embedding only: nearest by cosine (`score_threshold` is a cosine similarity). With
    keywords only: BM25 with Qdrant's IDF. With both: the two candidate lists fused by reciprocal
    rank (the threshold then applies to the semantic candidates). Every stage applies the same filter.
    `group_size` asks for `limit` documents, each with its best `group_size` chunks.
    """

    indexes: tuple[KbIndex, ...]
    query_embedding: tuple[float, ...] | None = None
    query_keywords: models.SparseVector | None = None
    limit: int = 10
    include_archived: bool = False
    score_threshold: float | None = None
    document_ids: tuple[str, ...] = ()
    metadata_filter: CompiledFilter | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        if not self.indexes:
            raise ValueError("a chunk search needs at least one knowledge base index")
        first = self.indexes[0]
        if any(index.model != first.model or index.vector_size != first.vector_size for index in self.indexes):
            raise ValueError("a chunk search reads one collection; split it by embedding model")
        if self.query_embedding is None and self.query_keywords is None:
            raise ValueError("a chunk search needs a query embedding, query keywords or both")

    @property
    def collection(self) -> str:
        return self.indexes[0].collection

    @functools.cached_property
    def tenants(self) -> frozenset[str]:
        """The tenant keys searched: every hit must carry one of them (see `search_key`)."""
        return frozenset(index.tenant for index in self.indexes)

    def query_request(self, *, by_search_key: bool = True) -> models.QueryRequest:
        """The request as Qdrant takes it; grouped, Qdrant multiplies prefetch limits by the groups asked for.

        `by_search_key` filters on the search keys alone; without it, on the tenant keys and the archived
        flag (a collection holding points an earlier kbsite wrote, before search keys).
        """
        candidates = FUSION_CANDIDATES if self.group_size is not None else max(self.limit, FUSION_CANDIDATES)
        query_filter = self._filter(by_search_key)
        # Built with model_construct: every value here already has the type the model declares, and
        # validating the 384 floats of the vector against every form a query accepts took a third of
        # the time (34 µs a hybrid request against 21 µs, on the event loop).
        construct = models.QueryRequest.model_construct
        dense = keywords = None
        if self.query_embedding is not None:
            dense = models.NearestQuery.model_construct(nearest=list(self.query_embedding))
        if self.query_keywords is not None:
            keywords = models.NearestQuery.model_construct(nearest=self.query_keywords)
        if dense is not None and keywords is not None:
            request = construct(
                prefetch=[
                    models.Prefetch.model_construct(
                        query=dense,
                        using=DENSE_VECTOR,
                        filter=query_filter,
                        limit=candidates,
                        score_threshold=self.score_threshold,
                    ),
                    models.Prefetch.model_construct(
                        query=keywords, using=KEYWORD_VECTOR, filter=query_filter, limit=candidates
                    ),
                ],
                query=models.RrfQuery.model_construct(rrf=models.Rrf.model_construct(k=RRF_K, weights=RRF_WEIGHTS)),
                # No filter on the fusion itself: every candidate passed its prefetch's. Edge evaluated it
                # once more per query, and a tenant filter of 50 knowledge bases is not cheap: 3.6 ms of
                # engine time per search against 1.3 ms without (1,000 knowledge bases, README).
                limit=self.limit,
            )
        elif dense is not None:
            request = construct(
                query=dense, using=DENSE_VECTOR, filter=query_filter, limit=self.limit, score_threshold=self.score_threshold
            )
        else:
            request = construct(query=keywords, using=KEYWORD_VECTOR, filter=query_filter, limit=self.limit)
        request.with_payload, request.with_vector = True, False
        return request

    def _filter(self, by_search_key: bool) -> models.Filter:
        # The KBs' keys are the one condition every query carries: no KB reads another's points.
        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        if by_search_key:
            keys = [index.live_key for index in self.indexes]
            if self.include_archived:
                keys += [index.archived_key for index in self.indexes]
            must.append(search_key_filter(*keys))
        else:
            must.append(tenant_filter(*(index.tenant for index in self.indexes)))
            # must_not on the indexed flag, not must archived == false: the engine answers it from the
            # bool index's small "true" set instead of checking every other point (10x at 100k points).
            if not self.include_archived:
                must_not.append(_match("archived", True))
        if self.document_ids:
            must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(self.document_ids))))
        if self.metadata_filter is not None:
            must.append(self.metadata_filter.filter)
        return models.Filter(must=must, must_not=must_not or None)

    def found(self, point: Any) -> bool:
        """Whether a point the engine returned is the searched KBs' (a search key shared by chance is not)."""
        return (point.payload or {}).get(TENANT_FIELD) in self.tenants


# Ids parsed once per process: the same knowledge bases and documents come back search after search.
_uuid = functools.lru_cache(maxsize=1 << 16)(UUID)


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
            kb_id=_uuid(payload["kb_id"]),
            document_id=_uuid(payload["document_id"]),
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


def _archive_payload(index: KbIndex, archived_at: datetime | None) -> dict[str, Any]:
    """What searches filter on (the search key, and `archived`, both indexed) and `archived_at`, which people are shown."""
    archived = archived_at is not None
    return {
        "archived": archived,
        "archived_at": archived_at.isoformat() if archived_at else None,
        SEARCH_KEY_FIELD: index.search_key(archived=archived),
    }


def _labels_payload(tags: Sequence[str], metadata: dict[str, Any], fields: Fields) -> dict[str, Any]:
    """A document's tags and metadata as every one of its chunks carries them, with the typed copies filters read."""
    return {TAGS_FIELD: list(tags), METADATA_FIELD: dict(metadata), **typed_payload(metadata, fields)}


def _written_fields(metadata: dict[str, Any], fields: Fields) -> dict[str, str]:
    """The declared fields this metadata carries: the ones a write makes sure are indexed."""
    return {key: fields[key] for key in metadata if key in fields}


def _page_payload(page_starts: Sequence[int] | None, chunk: TextChunk) -> dict[str, int | None]:
    first, last = page_range(page_starts, char_start=chunk.char_start, char_end=chunk.char_end)
    return {"page_start": first, "page_end": last}


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _document_filter(index: KbIndex, document_id: UUID | str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[tenant_filter(index.tenant), _match("document_id", str(document_id)), *extra])


class ChunkService:
    """Every read and write of chunks. Each KB's points are one tenant of its model's collection.

    A method given `kb_id` alone works on the KB's active generation, which the knowledge app
    names (`KbIndexes`); `index` names a generation instead (a rebuild or an import in progress).
    """

    def __init__(self, *, collections: CollectionService | None = None, indexes: KbIndexes | None = None) -> None:
        self.collections = collections or CollectionService()
        # The knowledge app keeps which generation is active; a setting names its reader so imports stay one-way.
        self.indexes = indexes or import_string(settings.SEARCH["KB_INDEXES"])()
        # Searches of one collection that start together go to Qdrant as one batch.
        self._queries = QueryBatcher(lambda: qdrant_service.client)

    async def _index(self, kb_id: UUID | str, index: KbIndex | None) -> KbIndex | None:
        return index if index is not None else await self.indexes.active_index(kb_id=kb_id)

    async def _index_to_write(self, kb_id: UUID | str, index: KbIndex | None) -> KbIndex:
        found = await self._index(kb_id, index)
        if found is None:
            raise KnowledgeBaseNotFound(f"Knowledge base {kb_id} is not there (deleted?): nothing was written.")
        return found

    @translate_unreachable
    async def get_chunks_by_document(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        offset: int | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        index: KbIndex | None = None,
    ) -> tuple[list[StoredChunk], int | None]:
        """One page of a document's chunks in chunk order, and the offset of the next page (or None)."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        found = await self._index(kb_id, index)
        if found is None:
            return [], None
        points, _ = await unless_missing(
            qdrant_service.client.scroll(
                collection_name=found.collection,
                scroll_filter=_document_filter(found, document_id),
                order_by=models.OrderBy(key="chunk_index", start_from=offset or 0),
                limit=limit + 1,
                with_payload=True,
                with_vectors=False,
            ),
            ([], None),
        )
        chunks = [StoredChunk.from_point(point) for point in points]
        if len(chunks) > limit:
            return chunks[:limit], chunks[limit].chunk_index
        return chunks, None

    @translate_unreachable
    async def search_chunks(self, request: ChunkSearch) -> list[StoredChunk]:
        """The best chunks for the request across its KBs, best first, in one Qdrant query."""
        query = request.query_request(by_search_key=await self.collections.searches_by_key(collection=request.collection))
        points = await unless_missing(self._queries.query(collection_name=request.collection, request=query), [])
        return [StoredChunk.from_point(point) for point in points if request.found(point)]

    @translate_unreachable
    async def search_chunk_groups(self, request: ChunkSearch) -> list[list[StoredChunk]]:
        """The best `limit` documents for the request, each as its best `group_size` chunks, best first.

        The same query as search_chunks, grouped by Qdrant on `document_id`: a document ranks by its
        best chunk. Grouped queries have no batch form, so each goes to Qdrant on its own.
        """
        if request.group_size is None:
            raise ValueError("a grouped chunk search needs a group_size")
        query = request.query_request(by_search_key=await self.collections.searches_by_key(collection=request.collection))
        result = await unless_missing(
            qdrant_service.client.query_points_groups(
                collection_name=request.collection,
                group_by="document_id",
                query=query.query,
                using=query.using,
                prefetch=query.prefetch,
                query_filter=query.filter,
                score_threshold=query.score_threshold,
                limit=request.limit,
                group_size=request.group_size,
                with_payload=True,
                with_vectors=False,
            ),
            None,
        )
        if result is None:
            return []
        groups = ([StoredChunk.from_point(point) for point in group.hits if request.found(point)] for group in result.groups)
        return [group for group in groups if group]

    @translate_unreachable
    async def get_chunks(
        self, *, kb_id: UUID | str, positions: Sequence[tuple[UUID | str, int]], index: KbIndex | None = None
    ) -> list[StoredChunk]:
        """The chunks at these (document, chunk index) positions that exist, in one Qdrant call."""
        if not positions:
            return []
        found = await self._index(kb_id, index)
        if found is None:
            return []
        ids = list(
            dict.fromkeys(
                chunk_point_id(found.tenant, document, position) for document, position in positions if position >= 0
            )
        )
        points = await unless_missing(
            qdrant_service.client.retrieve(
                collection_name=found.collection, ids=ids, with_payload=True, with_vectors=False
            ),
            [],
        )
        return [StoredChunk.from_point(point) for point in points if (point.payload or {}).get(TENANT_FIELD) == found.tenant]

    @translate_unreachable
    async def count_chunks(
        self, *, kb_id: UUID | str, document_id: UUID | str | None = None, index: KbIndex | None = None
    ) -> int:
        """How many chunks the KB (or one of its documents) has in Qdrant, counted exactly."""
        found = await self._index(kb_id, index)
        if found is None:
            return 0
        count_filter = (
            _document_filter(found, document_id)
            if document_id is not None
            else models.Filter(must=[tenant_filter(found.tenant)])
        )
        result = await unless_missing(
            qdrant_service.client.count(collection_name=found.collection, count_filter=count_filter, exact=True), None
        )
        return int(result.count) if result is not None else 0

    async def count_chunks_per_kb(self, *, kb_ids: Sequence[UUID | str]) -> dict[UUID, int]:
        """How many chunks each KB has, its generation read for all of them at once (a KB not there: 0)."""
        found = await self.indexes.active_indexes(kb_ids=kb_ids)
        ids = [UUID(str(kb_id)) for kb_id in kb_ids]
        counts = await asyncio.gather(
            *(self.count_chunks(kb_id=kb_id, index=found[kb_id]) for kb_id in ids if kb_id in found)
        )
        return {kb_id: 0 for kb_id in ids} | dict(zip([kb_id for kb_id in ids if kb_id in found], counts))

    @translate_unreachable
    async def upsert_chunks(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        title: str,
        chunks: Sequence[TextChunk],
        vectors: Sequence[Sequence[float]],
        keyword_vectors: Sequence[models.SparseVector],
        archived_at: datetime | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        fields: Fields | None = None,
        index: KbIndex | None = None,
        page_starts: Sequence[int] | None = None,
    ) -> int:
        """Write chunks with their dense and keyword (BM25) vectors; the model's collection is created on first write.

        Each chunk carries the document's `tags` and `metadata`, with the typed copies of the
        metadata the KB's declared `fields` name (which filters read; their indexes are made here), and, from
        `page_starts` (the document's, see `search.pages`), its page range. `index` writes into a
        given generation instead of the active one (a rebuild in progress).
        """
        if len(chunks) != len(vectors) or len(keyword_vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors and {len(keyword_vectors)} keyword vectors")
        if metadata and fields is None:
            raise ValueError("metadata is written with the KB's declared fields, which filters read")
        fields = fields or {}
        if not chunks:
            return 0
        target = await self._index_to_write(kb_id, index)
        current = await self.collections.ensure_collection(index=target)
        await self.collections.ensure_field_indexes(
            index=target, fields=_written_fields(metadata or {}, fields), collection=current
        )
        points = [
            models.PointStruct(
                id=chunk_point_id(target.tenant, document_id, chunk.index),
                vector={DENSE_VECTOR: list(vector), KEYWORD_VECTOR: keyword_vectors[position]},
                payload={
                    TENANT_FIELD: target.tenant,
                    "kb_id": str(target.kb_id),
                    "document_id": str(document_id),
                    "chunk_index": chunk.index,
                    "content": chunk.content,
                    "title": title,
                    "char_start": chunk.char_start,
                    "char_end": chunk.char_end,
                    **_page_payload(page_starts, chunk),
                    **_archive_payload(target, archived_at),
                    **_labels_payload(tags, metadata or {}, fields),
                },
            )
            for position, (chunk, vector) in enumerate(zip(chunks, vectors))
        ]
        await self._upsert(target, points)
        return len(points)

    @staticmethod
    async def _upsert(target: KbIndex, points: list[models.PointStruct]) -> None:
        client = qdrant_service.client
        for start in range(0, len(points), UPSERT_BATCH_SIZE):
            await client.upsert(
                collection_name=target.collection, points=points[start : start + UPSERT_BATCH_SIZE], wait=True
            )

    @translate_unreachable
    async def delete_document_chunks(
        self, *, kb_id: UUID | str, document_id: UUID | str, from_index: int = 0, index: KbIndex | None = None
    ) -> None:
        """Delete a document's chunks, or only those from `from_index` on (left over from a longer version)."""
        found = await self._index(kb_id, index)
        if found is None:
            return
        extra = [models.FieldCondition(key="chunk_index", range=models.Range(gte=from_index))] if from_index else []
        await unless_missing(
            qdrant_service.client.delete(
                collection_name=found.collection,
                points_selector=models.FilterSelector(filter=_document_filter(found, document_id, *extra)),
                wait=True,
            ),
            None,
        )

    @translate_unreachable
    async def set_archived(
        self, *, kb_id: UUID | str, document_id: UUID | str, archived_at: datetime | None, index: KbIndex | None = None
    ) -> None:
        """Mark a document's chunks archived (or not): a payload update, nothing is re-embedded."""
        found = await self._index(kb_id, index)
        if found is not None:
            await self._set_document_payload(kb_id, document_id, _archive_payload(found, archived_at), found)

    @translate_unreachable
    async def set_title(
        self, *, kb_id: UUID | str, document_id: UUID | str, title: str, index: KbIndex | None = None
    ) -> None:
        """Give a document's chunks its new title, which search results show."""
        await self._set_document_payload(kb_id, document_id, {"title": title}, index)

    @translate_unreachable
    async def set_labels(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        tags: Sequence[str],
        metadata: dict[str, Any],
        fields: Fields,
        index: KbIndex | None = None,
    ) -> None:
        """Give a document's chunks its new tags and metadata: a payload update, nothing is re-embedded.

        Both are replaced whole, so a key removed from the metadata is gone from every chunk; the
        typed copies follow the declared `fields` (a retyped field's copies move to their new type).
        """
        found = await self._index(kb_id, index)
        if found is not None:
            await self.collections.ensure_field_indexes(index=found, fields=_written_fields(metadata, fields))
        await self._set_document_payload(kb_id, document_id, _labels_payload(tags, metadata, fields), found)

    async def _set_document_payload(
        self, kb_id: UUID | str, document_id: UUID | str, payload: dict[str, Any], index: KbIndex | None
    ) -> None:
        found = await self._index(kb_id, index)
        if found is None:
            return
        await unless_missing(
            qdrant_service.client.set_payload(
                collection_name=found.collection,
                payload=payload,
                points=models.FilterSelector(filter=_document_filter(found, document_id)),
                wait=True,
            ),
            None,
        )

    # Backups and moves: every chunk read out whole with its dense vector, and written back whole.

    @translate_unreachable
    async def get_document_chunk_records(
        self, *, kb_id: UUID | str, document_id: UUID | str, index: KbIndex | None = None
    ) -> list[ChunkRecord]:
        """All of a document's chunks in chunk order, each with its payload and dense vector."""
        found = await self._index(kb_id, index)
        if found is None:
            return []
        records: list[ChunkRecord] = []
        while True:
            points, _ = await unless_missing(
                qdrant_service.client.scroll(
                    collection_name=found.collection,
                    scroll_filter=_document_filter(found, document_id),
                    order_by=models.OrderBy(
                        key="chunk_index", start_from=records[-1].chunk_index + 1 if records else 0
                    ),
                    limit=MAX_PAGE_SIZE,
                    with_payload=True,
                    with_vectors=[DENSE_VECTOR],
                ),
                ([], None),
            )
            records.extend(chunk_record(point) for point in points)
            if len(points) < MAX_PAGE_SIZE:
                return records

    @translate_unreachable
    async def write_chunk_records(
        self,
        *,
        index: KbIndex,
        records: Sequence[ChunkRecord],
        keyword_vectors: Sequence[models.SparseVector],
        fields: Fields,
    ) -> int:
        """Write chunks read by `get_document_chunk_records` (perhaps on another site) into a KB generation.

        The typed copies of the metadata are made again from `meta` and the KB's declared `fields`,
        whatever the record holds (an archive's, or an older kbsite's without them).
        """
        if len(keyword_vectors) != len(records):
            raise ValueError(f"{len(records)} chunks but {len(keyword_vectors)} keyword vectors")
        if not records:
            return 0
        current = await self.collections.ensure_collection(index=index)
        await self.collections.ensure_field_indexes(index=index, fields=fields, collection=current)
        points = [
            models.PointStruct(
                id=chunk_point_id(index.tenant, record.document_id, record.chunk_index),
                vector={DENSE_VECTOR: list(record.dense), KEYWORD_VECTOR: keywords},
                # The ids it is filed under are this site's, whatever the record's payload says.
                payload={
                    **_without_typed_copies(record.payload),
                    **typed_payload(record.payload.get(METADATA_FIELD) or {}, fields),
                    TENANT_FIELD: index.tenant,
                    SEARCH_KEY_FIELD: index.search_key(archived=record.payload.get("archived") is True),
                    "kb_id": str(index.kb_id),
                    "document_id": str(record.document_id),
                    "chunk_index": record.chunk_index,
                },
            )
            for record, keywords in zip(records, keyword_vectors)
        ]
        await self._upsert(index, points)
        return len(points)


def _without_typed_copies(payload: dict[str, Any]) -> dict[str, Any]:
    typed = {typed_object(field_type) for field_type in FIELD_TYPES}
    return {key: value for key, value in payload.items() if key not in typed}


def chunk_record(point: Any) -> ChunkRecord:
    """A point as a backup keeps it: its payload less the ids it is filed under, and its dense vector.

    A collection made before hybrid search holds one unnamed vector, which is the dense one.
    """
    payload = dict(point.payload or {})
    vector = point.vector[DENSE_VECTOR] if isinstance(point.vector, dict) else point.vector
    return ChunkRecord(
        document_id=UUID(payload.pop("document_id")),
        chunk_index=int(payload.pop("chunk_index")),
        payload={key: value for key, value in payload.items() if key not in ("kb_id", TENANT_FIELD, SEARCH_KEY_FIELD)},
        dense=vector,
    )

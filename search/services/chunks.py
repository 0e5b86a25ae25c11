"""A knowledge base's chunks in Qdrant: written, listed, counted, searched and archived through AsyncQdrantClient."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from uuid import UUID, uuid5

from qdrant_client import models

from search.chunking import TextChunk
from search.errors import SearchError
from search.qdrant import as_unavailable, collection_alias, is_missing_collection, qdrant_service

# Point ids are derived from (document, chunk index), so writing a chunk again replaces it.
POINT_NAMESPACE = UUID("8f9c1d52-6a3e-4c1b-9a57-2f4e7b0c9d11")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
UPSERT_BATCH_SIZE = 128

P = ParamSpec("P")
R = TypeVar("R")


def chunk_point_id(document_id: UUID | str, chunk_index: int) -> str:
    return str(uuid5(POINT_NAMESPACE, f"{document_id}/{chunk_index}"))


def _translate_unreachable(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn "Qdrant did not answer" into VectorStoreUnavailable, which says what to check."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except SearchError:
            raise
        except Exception as exc:
            unavailable = as_unavailable(exc, qdrant_service.config)
            if unavailable is None:
                raise
            raise unavailable from exc

    return wrapper


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
        )


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _document_filter(document_id: UUID | str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[_match("document_id", str(document_id)), *extra])


class ChunkService:
    """Every read and write of chunks; each KB has one collection, reached through the alias `kb_{id}`."""

    @_translate_unreachable
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

    @_translate_unreachable
    async def search_chunks(
        self,
        *,
        kb_id: UUID | str,
        query_embedding: Sequence[float],
        limit: int = 10,
        include_archived: bool = False,
        score_threshold: float | None = None,
        document_ids: Sequence[UUID | str] | None = None,
    ) -> list[StoredChunk]:
        """The KB's chunks nearest to the query vector, best first."""
        try:
            response = await qdrant_service.client.query_points(
                collection_name=collection_alias(kb_id),
                query=list(query_embedding),
                query_filter=self._search_filter(kb_id, include_archived, document_ids),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
            )
        except Exception as exc:
            if is_missing_collection(exc):
                return []
            raise
        return [StoredChunk.from_point(point) for point in response.points]

    @staticmethod
    def _search_filter(
        kb_id: UUID | str, include_archived: bool, document_ids: Sequence[UUID | str] | None
    ) -> models.Filter:
        must: list[models.Condition] = []
        if not include_archived:
            must.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="archived_at")))
        if document_ids:
            must.append(
                models.FieldCondition(
                    key="document_id", match=models.MatchAny(any=[str(d) for d in document_ids])
                )
            )
        if not must or not qdrant_service.config.is_local:
            # Guards tenancy should an alias ever point at a wrong collection. The embedded store
            # checks every condition on every point in Python, so there it is added only when
            # the filter would otherwise be empty.
            must.append(_match("kb_id", str(kb_id)))
        return models.Filter(must=must)

    @_translate_unreachable
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

    @_translate_unreachable
    async def upsert_chunks(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        title: str,
        chunks: Sequence[TextChunk],
        vectors: Sequence[Sequence[float]],
        archived_at: datetime | None = None,
        collection_name: str | None = None,
    ) -> int:
        """Write chunks with their vectors; the KB's collection is created on first write.

        `collection_name` writes into a given collection version instead (a rebuild in progress).
        """
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return 0
        if collection_name is None:
            await self.ensure_collection(kb_id=kb_id, vector_size=len(vectors[0]))
        points = [
            models.PointStruct(
                id=chunk_point_id(document_id, chunk.index),
                vector=list(vector),
                payload={
                    "kb_id": str(kb_id),
                    "document_id": str(document_id),
                    "chunk_index": chunk.index,
                    "content": chunk.content,
                    "title": title,
                    "char_start": chunk.char_start,
                    "char_end": chunk.char_end,
                    "archived_at": archived_at.isoformat() if archived_at else None,
                },
            )
            for chunk, vector in zip(chunks, vectors)
        ]
        client = qdrant_service.client
        for start in range(0, len(points), UPSERT_BATCH_SIZE):
            await client.upsert(
                collection_name=collection_name or collection_alias(kb_id),
                points=points[start : start + UPSERT_BATCH_SIZE],
                wait=True,
            )
        return len(points)

    @_translate_unreachable
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

    @_translate_unreachable
    async def set_archived(
        self,
        *,
        kb_id: UUID | str,
        document_id: UUID | str,
        archived_at: datetime | None,
        collection_name: str | None = None,
    ) -> None:
        """Mark a document's chunks archived (or not): a payload update, nothing is re-embedded."""
        await self._set_document_payload(
            kb_id, document_id, {"archived_at": archived_at.isoformat() if archived_at else None}, collection_name
        )

    @_translate_unreachable
    async def set_title(
        self, *, kb_id: UUID | str, document_id: UUID | str, title: str, collection_name: str | None = None
    ) -> None:
        """Give a document's chunks its new title, which search results show."""
        await self._set_document_payload(kb_id, document_id, {"title": title}, collection_name)

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

    @_translate_unreachable
    async def current_collection(self, *, kb_id: UUID | str) -> str | None:
        """The physical collection the KB's alias points at, or None before the first write."""
        alias = collection_alias(kb_id)
        response = await qdrant_service.client.get_aliases()
        return next((a.collection_name for a in response.aliases if a.alias_name == alias), None)

    @_translate_unreachable
    async def ensure_collection(self, *, kb_id: UUID | str, vector_size: int) -> str:
        """The KB's current physical collection, created (with its alias) if there is none yet.

        Several writers may do this at once for a new KB: all of them create the same first
        version and alias, each treating "already exists" as done, so they all land in it.
        """
        current = await self.current_collection(kb_id=kb_id)
        if current is not None:
            return current
        first = f"{collection_alias(kb_id)}_v1"
        client = qdrant_service.client
        try:
            await self._create_collection(first, vector_size)
        except Exception:
            if not await client.collection_exists(collection_name=first):
                raise
        try:
            await client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=first, alias_name=collection_alias(kb_id))
                    )
                ]
            )
        except Exception:
            current = await self.current_collection(kb_id=kb_id)
            if current is None:
                raise
            return current
        return first

    @_translate_unreachable
    async def create_collection_version(self, *, kb_id: UUID | str, vector_size: int) -> str:
        """Create the KB's next physical collection, empty and not yet searched, and return its name."""
        versions = [
            int(match.group(1))
            for collection in (await qdrant_service.client.get_collections()).collections
            if (match := re.fullmatch(rf"{re.escape(collection_alias(kb_id))}_v(\d+)", collection.name))
        ]
        name = f"{collection_alias(kb_id)}_v{max(versions, default=0) + 1}"
        await self._create_collection(name, vector_size)
        return name

    async def _create_collection(self, name: str, vector_size: int) -> None:
        client = qdrant_service.client
        await client.create_collection(
            collection_name=name,
            vectors_config=models.VectorParams(size=vector_size, distance=models.Distance.COSINE),
        )
        if not qdrant_service.config.is_local:
            # The embedded store ignores payload indexes (and warns); a server needs them to filter fast.
            for field, schema in (
                ("kb_id", models.PayloadSchemaType.KEYWORD),
                ("document_id", models.PayloadSchemaType.KEYWORD),
                ("chunk_index", models.PayloadSchemaType.INTEGER),
            ):
                await client.create_payload_index(
                    collection_name=name, field_name=field, field_schema=schema, wait=True
                )

    @_translate_unreachable
    async def activate_collection_version(self, *, kb_id: UUID | str, collection_name: str) -> str | None:
        """Point the KB's alias at `collection_name` in one atomic step; return the collection it left."""
        alias = collection_alias(kb_id)
        previous = await self.current_collection(kb_id=kb_id)
        operations: list[Any] = []
        if previous is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection_name, alias_name=alias)
            )
        )
        await qdrant_service.client.update_collection_aliases(change_aliases_operations=operations)
        return previous

    @_translate_unreachable
    async def drop_collection_version(self, *, collection_name: str) -> None:
        await qdrant_service.client.delete_collection(collection_name=collection_name)

    @_translate_unreachable
    async def delete_knowledge_base(self, *, kb_id: UUID | str) -> None:
        """Remove the KB's alias and every collection version it ever had."""
        client = qdrant_service.client
        alias = collection_alias(kb_id)
        if await self.current_collection(kb_id=kb_id) is not None:
            await client.update_collection_aliases(
                change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
            )
        for collection in (await client.get_collections()).collections:
            if re.fullmatch(rf"{re.escape(alias)}_v\d+", collection.name):
                await client.delete_collection(collection_name=collection.name)

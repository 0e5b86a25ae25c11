"""What tests read of the shared store: a knowledge base's points in its model's collection, in its active generation."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from qdrant_client import models

from knowledge.services.knowledge_bases import KnowledgeBaseIndexes
from search.qdrant import qdrant_service
from search.services import collections
from search.services.collections import SEARCH_KEY_FIELD, CollectionService, tenant_filter


async def kb_points(kb_id: UUID | str, *, with_vectors: bool = False) -> list[Any]:
    """Every point of the KB's active generation, straight from Qdrant."""
    index = await KnowledgeBaseIndexes().active_index(kb_id=kb_id)
    assert index is not None, f"no knowledge base {kb_id}"
    points, _ = await qdrant_service.client.scroll(
        collection_name=index.collection,
        scroll_filter=models.Filter(must=[tenant_filter(index.tenant)]),
        limit=100_000,
        with_payload=True,
        with_vectors=with_vectors,
    )
    return points


async def holds_points(kb_id: UUID | str) -> bool:
    """Whether the store holds any point of the KB, of any generation, in any model's collection."""
    return await CollectionService().holds_points(kb_id=kb_id)


async def as_written_before_search_keys(collection: str, points: list[Any]) -> None:
    """Write these points (read with payload and vectors) again as kbsite before search keys did: less the key.

    And forget what this process learnt of the collection, as a restarted server would.
    """
    await qdrant_service.client.upsert(
        collection_name=collection,
        points=[
            models.PointStruct(
                id=p.id, vector=p.vector, payload={k: v for k, v in p.payload.items() if k != SEARCH_KEY_FIELD}
            )
            for p in points
        ],
        wait=True,
    )
    collections._keyed_collections.clear()

"""A knowledge base's collections in Qdrant: created, versioned, switched in by alias, dropped."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from qdrant_client import models

from search.cluster import create_collection_arguments
from search.filters import METADATA_FIELD, TAGS_FIELD
from search.qdrant import (
    LOCAL_MODE_ENGINE,
    collection_alias,
    is_missing_collection,
    qdrant_service,
    translate_unreachable,
)

logger = logging.getLogger(__name__)

# Every collection holds these two named vectors. Collections made before hybrid search hold one
# unnamed dense vector; the KB's `keyword_settings` is empty for those until `reindex --recreate`.
DENSE_VECTOR = "dense"
KEYWORD_VECTOR = "bm25"

# Filters always name these fields, so each gets a payload index: keyword lookups for the tenant guard
# and documents, a range index for chunk order, a bool index that makes the archive filter cheap.
PAYLOAD_INDEXES = (
    ("kb_id", models.PayloadSchemaType.KEYWORD),
    ("document_id", models.PayloadSchemaType.KEYWORD),
    ("chunk_index", models.PayloadSchemaType.INTEGER),
    ("archived", models.PayloadSchemaType.BOOL),
)



def _has_payload_indexes() -> bool:
    # Local mode has no payload indexes (it warns on each); it scans every point anyway.
    return not (qdrant_service.config.is_local and qdrant_service.config.engine == LOCAL_MODE_ENGINE)


def _is_filter_field(name: str) -> bool:
    return name == TAGS_FIELD or name.startswith(f"{METADATA_FIELD}.")


class CollectionService:
    """Each KB has physical collections `kb_{id}_vN`; reads and writes go through the alias `kb_{id}`.

    Tags and metadata keys get a payload index the first time a search filters on them (the type
    the filter implies: keyword, float, datetime or bool), so a KB pays only for the keys it uses;
    a field already indexed keeps its index, and a rebuilt collection inherits them.
    """

    def __init__(self) -> None:
        # (alias, payload key) pairs known to be indexed, so a search asks Qdrant about each at most once.
        self._filter_indexes: set[tuple[str, str]] = set()

    @translate_unreachable
    async def current_collection(self, *, kb_id: UUID | str) -> str | None:
        """The physical collection the KB's alias points at, or None before the first write."""
        alias = collection_alias(kb_id)
        response = await qdrant_service.client.get_aliases()
        return next((a.collection_name for a in response.aliases if a.alias_name == alias), None)

    @translate_unreachable
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

    @translate_unreachable
    async def create_collection_version(self, *, kb_id: UUID | str, vector_size: int) -> str:
        """Create the KB's next physical collection, empty and not yet searched, and return its name."""
        versions = [
            int(match.group(1))
            for collection in (await qdrant_service.client.get_collections()).collections
            if (match := re.fullmatch(rf"{re.escape(collection_alias(kb_id))}_v(\d+)", collection.name))
        ]
        name = f"{collection_alias(kb_id)}_v{max(versions, default=0) + 1}"
        await self._create_collection(name, vector_size)
        await self._copy_filter_indexes(kb_id, name)
        return name

    async def _copy_filter_indexes(self, kb_id: UUID | str, name: str) -> None:
        current = await self.current_collection(kb_id=kb_id) if _has_payload_indexes() else None
        if current is None:
            return
        schema = (await qdrant_service.client.get_collection(collection_name=current)).payload_schema
        for key, info in schema.items():
            if _is_filter_field(key):
                await qdrant_service.client.create_payload_index(
                    collection_name=name, field_name=key, field_schema=info.data_type, wait=True
                )

    async def ensure_filter_indexes(
        self, *, kb_id: UUID | str, fields: Mapping[str, models.PayloadSchemaType]
    ) -> None:
        """Index the tag and metadata fields a search filters on, where not indexed yet.

        An index only speeds filtering up: a failure to make one is logged and the search goes on.
        """
        alias = collection_alias(kb_id)
        wanted = {key: schema for key, schema in fields.items() if (alias, key) not in self._filter_indexes}
        if not wanted or not _has_payload_indexes():
            return
        client = qdrant_service.client
        try:
            # Indexes belong to the physical collection; the alias may not be accepted for them everywhere.
            current = await self.current_collection(kb_id=kb_id)
            if current is None:
                return
            indexed = (await client.get_collection(collection_name=current)).payload_schema
            for key, schema in wanted.items():
                if key not in indexed:
                    await client.create_payload_index(
                        collection_name=current, field_name=key, field_schema=schema, wait=True
                    )
                self._filter_indexes.add((alias, key))
        except Exception as exc:
            if not is_missing_collection(exc):
                logger.warning("Could not index %s of %s for filters: %s", ", ".join(wanted), alias, exc)

    async def _create_collection(self, name: str, vector_size: int) -> None:
        client = qdrant_service.client
        await client.create_collection(
            collection_name=name,
            **create_collection_arguments(
                qdrant_service.config,
                vectors_config={DENSE_VECTOR: models.VectorParams(size=vector_size, distance=models.Distance.COSINE)},
            ),
            sparse_vectors_config={KEYWORD_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        if not _has_payload_indexes():
            return
        for field, schema in PAYLOAD_INDEXES:
            await client.create_payload_index(collection_name=name, field_name=field, field_schema=schema, wait=True)

    @translate_unreachable
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

    @translate_unreachable
    async def drop_collection_version(self, *, collection_name: str) -> None:
        await qdrant_service.client.delete_collection(collection_name=collection_name)

    @translate_unreachable
    async def delete_knowledge_base(self, *, kb_id: UUID | str) -> None:
        """Remove the KB's alias and every collection version it ever had."""
        client = qdrant_service.client
        alias = collection_alias(kb_id)
        self._filter_indexes = {(a, key) for a, key in self._filter_indexes if a != alias}
        if await self.current_collection(kb_id=kb_id) is not None:
            await client.update_collection_aliases(
                change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
            )
        for collection in (await client.get_collections()).collections:
            if re.fullmatch(rf"{re.escape(alias)}_v\d+", collection.name):
                await client.delete_collection(collection_name=collection.name)

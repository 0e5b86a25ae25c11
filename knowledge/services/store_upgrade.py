"""Upgrading a store made by an earlier kbsite: a local-mode folder moved aside, per-KB collections moved into shared ones."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from qdrant_client import models

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.services.knowledge_bases import active_index
from search.keywords import KeywordSettings, keyword_encoder
from search.qdrant import QdrantConfig, is_local_mode_store, qdrant_service, unless_missing
from search.services.chunks import ChunkService, chunk_record
from search.services.collections import tenant_filter

# kbsite before tenants: each KB's alias `kb_<id>` onto its collection `kb_<id>_vN`.
LEGACY_ALIAS = re.compile(r"kb_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
MOVE_BATCH = 256
#: Called with the number of points just moved and the KB's slug.
LayoutProgress = Callable[[int, str], None]


class StoreUpgradeService:
    """The old store is never deleted: it is renamed, and every KB is rebuilt from the documents' stored text."""

    def needs_upgrade(self, config: QdrantConfig | None = None) -> bool:
        config = config or qdrant_service.config
        return config.is_local and is_local_mode_store(config.path)

    def move_aside(self, config: QdrantConfig | None = None) -> Path:
        """Rename the local-mode folder to `<path>.local-mode-<time>` and return where it went."""
        config = config or qdrant_service.config
        if not self.needs_upgrade(config):
            raise InvalidInput(f"{config.describe()} holds no store written by local mode: nothing to move.")
        folder = Path(config.path)
        kept = folder.with_name(f"{folder.name}.local-mode-{time.strftime('%Y%m%d-%H%M%S')}")
        # The lock file only means something to a process that has the folder open; local mode
        # leaves it behind, and renaming the folder cannot race one that did (it would hold the store).
        folder.rename(kept)
        qdrant_service.close()
        return kept


@dataclass
class LayoutUpgradeReport:
    """What moving per-KB collections into the shared ones did."""

    moved: list[str] = field(default_factory=list)
    points: int = 0
    #: Per-KB collections of knowledge bases the database no longer has: left where they are.
    orphans: list[str] = field(default_factory=list)
    seconds: float = 0.0


class LayoutUpgradeService:
    """Moves each KB's own collection (`kb_<id>`, kbsite before tenants) into its model's shared collection.

    A KB is moved as its next generation, switched in by one database update, and only then is its
    old collection dropped: a run stopped part-way leaves every KB either moved or still whole in its
    old collection, and running it again moves the rest. No embedding is done: dense vectors are
    copied, keyword vectors made from each chunk's text (a KB from before hybrid search gets them).
    """

    def __init__(self, *, chunk_service: ChunkService | None = None) -> None:
        self.chunks = chunk_service or ChunkService()

    async def legacy_collections(self) -> dict[UUID, str]:
        """Each KB id that still has a per-KB alias, with that alias."""
        aliases = (await qdrant_service.client.get_aliases()).aliases
        return {
            UUID(match.group(1)): alias.alias_name
            for alias in aliases
            if (match := LEGACY_ALIAS.fullmatch(alias.alias_name))
        }

    async def count_legacy_points(self, legacy: dict[UUID, str]) -> int:
        client = qdrant_service.client
        return sum([(await client.count(collection_name=alias, exact=True)).count for alias in legacy.values()])

    async def move_all(self, *, on_progress: LayoutProgress | None = None) -> LayoutUpgradeReport:
        report, started = LayoutUpgradeReport(), time.monotonic()
        legacy = await self.legacy_collections()
        kbs = {kb.id: kb async for kb in KnowledgeBase.objects.filter(pk__in=list(legacy)).order_by("slug")}
        report.orphans = sorted(alias for kb_id, alias in legacy.items() if kb_id not in kbs)
        for kb in kbs.values():
            report.points += await self.move(kb=kb, alias=legacy[kb.id], on_progress=on_progress)
            report.moved.append(kb.slug)
        report.seconds = time.monotonic() - started
        return report

    async def move(self, *, kb: KnowledgeBase, alias: str, on_progress: LayoutProgress | None = None) -> int:
        """Copy the KB's old collection into its next generation, switch to it, drop the old collection."""
        collections, client = self.chunks.collections, qdrant_service.client
        settings = kb.keyword_settings or KeywordSettings().as_dict()
        encoder = keyword_encoder(KeywordSettings.from_dict(settings))
        active = active_index(kb)
        target = active.next_generation(model=kb.embedding_model, vector_size=kb.vector_size)
        # A run stopped part-way through this KB left some of this generation: it starts again from none.
        await collections.delete_generation(index=target)
        moved, offset = 0, None
        while True:
            points, offset = await client.scroll(
                collection_name=alias, limit=MOVE_BATCH, offset=offset, with_payload=True, with_vectors=True
            )
            records = [chunk_record(point) for point in points]
            moved += await self.chunks.write_chunk_records(
                index=target,
                records=records,
                keyword_vectors=encoder.encode_documents(r.payload.get("content", "") for r in records),
                fields=kb.metadata_fields,
            )
            if on_progress is not None:
                on_progress(len(points), kb.slug)
            if offset is None:
                break
        # Documents indexed into the shared collection since this release was installed are newer there.
        for document_id in await self._documents_in(active):
            records = await self.chunks.get_document_chunk_records(kb_id=kb.id, document_id=document_id, index=active)
            await self.chunks.delete_document_chunks(kb_id=kb.id, document_id=document_id, index=target)
            await self.chunks.write_chunk_records(
                index=target,
                records=records,
                keyword_vectors=encoder.encode_documents(r.payload.get("content", "") for r in records),
                fields=kb.metadata_fields,
            )
        switched = await KnowledgeBase.objects.filter(pk=kb.pk, index_generation=active.generation).aupdate(
            index_generation=target.generation, keyword_settings=settings
        )
        if not switched:
            await collections.delete_generation(index=target)
            raise InvalidInput(f"{kb.slug} changed while it was moved (rebuilt or deleted): run upgrade_layout again.")
        await collections.delete_generation(index=active)
        await self._drop(alias)
        kb.index_generation, kb.keyword_settings = target.generation, settings
        return moved

    async def _documents_in(self, index) -> set[str]:
        points, _ = await unless_missing(
            qdrant_service.client.scroll(
                collection_name=index.collection,
                scroll_filter=models.Filter(must=[tenant_filter(index.tenant)]),
                limit=1_000_000,
                with_payload=["document_id"],
                with_vectors=False,
            ),
            ([], None),
        )
        return {point.payload["document_id"] for point in points}

    @staticmethod
    async def _drop(alias: str) -> None:
        client = qdrant_service.client
        await client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )
        for collection in (await client.get_collections()).collections:
            if re.fullmatch(rf"{re.escape(alias)}_v\d+", collection.name):
                await client.delete_collection(collection_name=collection.name)

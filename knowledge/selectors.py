"""Reads for the admin and the API: knowledge bases with their counts, chunk counts from Qdrant."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet

from knowledge.models import Document, DocumentStatus, KnowledgeBase, Role
from knowledge.services.permissions import PermissionService
from search.services.chunks import ChunkService


def knowledge_bases_with_counts(user: AbstractBaseUser, *, least: Role = Role.READER) -> QuerySet[KnowledgeBase]:
    """The KBs the user may see, each annotated with its documents counted by status, in one query."""
    counts = {
        "document_count": Count("documents", distinct=True),
        **{
            f"{status}_count": Count("documents", filter=Q(documents__status=status), distinct=True)
            for status in DocumentStatus.values
        },
        "archived_count": Count("documents", filter=Q(documents__archived_at__isnull=False), distinct=True),
    }
    return PermissionService().knowledge_bases_for(user, least=least).select_related("owner").annotate(**counts)


async def chunk_counts(kb_ids: Iterable[UUID]) -> dict[UUID, int]:
    """Chunks in Qdrant per KB, asked for all at once."""
    ids = list(kb_ids)
    service = ChunkService()
    counts = await asyncio.gather(*(service.count_chunks(kb_id=kb_id) for kb_id in ids))
    return dict(zip(ids, counts))


async def knowledge_base_stats(kb: KnowledgeBase) -> dict:
    """Documents by status, archived documents, and the chunks Qdrant holds for the KB."""
    by_status = dict.fromkeys(DocumentStatus.values, 0)
    rows = Document.objects.filter(knowledge_base=kb).values("status").annotate(count=Count("pk")).order_by()
    async for row in rows:
        by_status[row["status"]] = row["count"]
    archived = await Document.objects.filter(knowledge_base=kb, archived_at__isnull=False).acount()
    return {"documents": by_status, "archived": archived, "chunks": await ChunkService().count_chunks(kb_id=kb.pk)}

"""Reads for the admin, the API and the members' pages: knowledge bases with their counts, documents, chunk counts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from asgiref.sync import async_to_sync
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import BooleanField, Count, Max, Q, QuerySet
from django.db.models.expressions import RawSQL

from knowledge.errors import DocumentNotFound
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.permissions import PermissionService
from search.services.chunks import ChunkService, StoredChunk


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


async def achunk_counts(kb_ids: Iterable[UUID]) -> dict[UUID, int]:
    """Chunks in Qdrant per KB, asked for all at once."""
    return await ChunkService().count_chunks_per_kb(kb_ids=list(kb_ids))


async def adocument_chunks(document: Document, *, offset: int | None, limit: int) -> tuple[list[StoredChunk], int | None]:
    """A page of the document's chunks as Qdrant holds them, in order, and the offset of the next page."""
    return await ChunkService().get_chunks_by_document(
        kb_id=document.knowledge_base_id, document_id=document.pk, offset=offset, limit=limit
    )


# The sync forms, for the admin (see README, "How it is built").
chunk_counts = async_to_sync(achunk_counts)
document_chunks = async_to_sync(adocument_chunks)


async def knowledge_base_stats(kb: KnowledgeBase) -> dict:
    """Documents by status, archived documents, and the chunks Qdrant holds for the KB."""
    by_status = dict.fromkeys(DocumentStatus.values, 0)
    rows = Document.objects.filter(knowledge_base=kb).values("status").annotate(count=Count("pk")).order_by()
    async for row in rows:
        by_status[row["status"]] = row["count"]
    archived = await Document.objects.filter(knowledge_base=kb, archived_at__isnull=False).acount()
    return {"documents": by_status, "archived": archived, "chunks": await ChunkService().count_chunks(kb_id=kb.pk)}


async def readable_knowledge_bases(user: AbstractBaseUser) -> list[KnowledgeBase]:
    """The KBs the user may read, by name: the choices of the search page."""
    return [kb async for kb in PermissionService().knowledge_bases_for(user).only("id", "name").order_by("name", "id")]


async def knowledge_bases_with_roles(user: AbstractBaseUser) -> list[tuple[KnowledgeBase, Role]]:
    """(KB with its counts, the user's role on it) for each KB the user may read, by name.

    The role is PermissionService.role_for's, worked out for all of them in two queries.
    """
    roles = {
        kb_id: Role(role)
        async for kb_id, role in Membership.objects.filter(user_id=user.pk).values_list("knowledge_base_id", "role")
    }
    return [
        (kb, Role.OWNER if user.is_superuser or kb.owner_id == user.pk else roles[kb.pk])
        async for kb in knowledge_bases_with_counts(user).order_by("name", "id")
    ]


async def recent_documents(user: AbstractBaseUser, *, limit: int) -> list[Document]:
    """The newest documents of the KBs the user may read, without their text."""
    readable = PermissionService().knowledge_bases_for(user)
    documents = (
        Document.objects.filter(knowledge_base__in=readable)
        .select_related("knowledge_base")
        .defer("text")
        .order_by("-created_at", "id")[:limit]
    )
    return [document async for document in documents]


async def readable_document(user: AbstractBaseUser, *, document_id: UUID, least: Role = Role.READER) -> Document:
    """The document if the user holds at least `least` on its KB; DocumentNotFound or KnowledgeBaseNotFound if not.

    A document of a KB the user may not read is answered like one that does not exist.
    """
    document = await Document.objects.filter(pk=document_id).only("id", "knowledge_base_id").afirst()
    if document is None:
        raise DocumentNotFound(f"There is no document {document_id} you may read.")
    kb = await PermissionService().aget_knowledge_base(user=user, kb_id=document.knowledge_base_id, least=least)
    document = await Document.objects.aget(pk=document_id)
    document.knowledge_base = kb
    return document


def login_lockout_ends(*, username: str | None, ip_address: str | None) -> datetime | None:
    """When django-axes lets this user name sign in from this address again; None if nothing holds it back."""
    last_failure = AccessAttempt.objects.filter(username=username, ip_address=ip_address).aggregate(
        last=Max("attempt_time")
    )["last"]
    cool_off = get_cool_off()
    return last_failure + cool_off if last_failure and cool_off else None


def kb_documents(kb: KnowledgeBase, *, status: str = "", tag: str = "") -> QuerySet[Document]:
    """A KB's documents without their text, newest first, of one status and/or carrying one tag."""
    rows = Document.objects.filter(knowledge_base=kb).defer("text").order_by("-created_at", "pk")
    if status == "archived":
        rows = rows.filter(archived_at__isnull=False)
    elif status:
        rows = rows.filter(status=status)
    if tag:
        rows = rows.filter(_has_tag(tag))
    return rows


def _has_tag(tag: str) -> RawSQL:
    """True for a document whose tags hold `tag`: JSONField's `contains` is not there on SQLite."""
    column = f"{connection.ops.quote_name(Document._meta.db_table)}.{connection.ops.quote_name('tags')}"
    if connection.vendor == "postgresql":
        return RawSQL(f"{column} @> jsonb_build_array(%s::text)", [tag], output_field=BooleanField())
    return RawSQL(
        f"EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.value = %s)", [tag], output_field=BooleanField()
    )


async def kb_indexing_progress(kb: KnowledgeBase) -> dict[str, int]:
    """How many of the KB's documents are settled (ready or failed) and how many are still waiting or in work."""
    by_status = dict.fromkeys(DocumentStatus.values, 0)
    rows = Document.objects.filter(knowledge_base=kb).values("status").annotate(count=Count("pk")).order_by()
    async for row in rows:
        by_status[row["status"]] = row["count"]
    waiting = by_status[DocumentStatus.PENDING] + by_status[DocumentStatus.PROCESSING]
    return {**by_status, "waiting": waiting, "total": sum(by_status.values()), "settled": sum(by_status.values()) - waiting}

"""A knowledge base restored from an archive as a new one, with its vectors or re-embedded: all or nothing."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from knowledge.errors import ArchiveModelMismatch, DuplicateSlug, InvalidInput
from knowledge.ingestion.events import notify_new_work
from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.worker import new_worker_id
from knowledge.models import Document, DocumentSource, DocumentStatus, KnowledgeBase, Membership
from knowledge.services.knowledge_bases import KnowledgeBaseService, active_index
from knowledge.transfer.archive import ArchiveReader
from knowledge.transfer.export import TransferProgress
from search.embedding import EmbeddingService
from search.errors import UnknownEmbedder
from search.keywords import KeywordSettings, keyword_encoder

logger = logging.getLogger(__name__)

BATCH_SIZE = 256


@dataclass
class ImportPlan:
    """Where the archive goes, settled before anything is written."""

    kb: KnowledgeBase
    #: Archive document id -> id here: kept unless another knowledge base holds it already.
    document_ids: dict[UUID, UUID]
    members: list[tuple[Any, str]]
    #: User names of the archive (members, owner) who have no account here: reported, not created.
    unknown_users: list[str]
    #: Whether the KB and every document keep the archive's ids (not when this site has them already).
    kept_ids: bool = True


@dataclass
class ImportReport:
    kb: KnowledgeBase
    #: Documents ready with the archive's chunks (or, with re_embed, indexed here).
    ready: int = 0
    chunks: int = 0
    #: Documents left to the workers: those not ready when exported (with re_embed: any another worker took).
    queued: int = 0
    failed: list[Document] = field(default_factory=list)
    members: int = 0
    unknown_users: list[str] = field(default_factory=list)
    #: False when the archive's ids were taken here, so the knowledge base or some documents got new ones.
    kept_ids: bool = True
    seconds: float = 0.0


class ImportService:
    def __init__(self, *, ingestion: IngestionService | None = None, batch_size: int = BATCH_SIZE) -> None:
        self.ingestion = ingestion or IngestionService()
        self.chunk_service = self.ingestion.chunk_service
        self.batch_size = batch_size

    async def import_knowledge_base(
        self,
        *,
        path: Path,
        slug: str | None = None,
        re_embed: bool = False,
        on_progress: TransferProgress | None = None,
    ) -> ImportReport:
        """Restore the archive at `path` as a new knowledge base (the archive's slug, or `slug`).

        The whole archive is checked first (DamagedArchive): nothing is written from a damaged one.
        Its vectors are used as they are, which needs one of the site's embedders to make them (the built-in
        model or an endpoint of EMBEDDERS_JSON, of the same name and vector size; ArchiveModelMismatch
        otherwise); with `re_embed`, chunks are made again from the stored text through the ingestion
        pipeline instead, with the archive's model if the site has it, else the built-in one.
        """
        started = time.monotonic()
        archive = await sync_to_async(ArchiveReader.open, thread_sensitive=False)(path)
        try:
            plan = await self._plan(archive, slug=slug, re_embed=re_embed)
            if re_embed:
                report = await self._import_embedding_again(archive, plan, on_progress)
            else:
                report = await self._import_with_vectors(archive, plan, on_progress)
        finally:
            archive.close()
        report.seconds = time.monotonic() - started
        return report

    def _embeddings_for_archive(self, manifest) -> EmbeddingService | None:
        """The site's service for the archive's model, None when no configured embedder makes it."""
        try:
            return self.ingestion.embeddings_for(manifest.embedding_model)
        except UnknownEmbedder:
            return None

    async def _plan(self, archive: ArchiveReader, *, slug: str | None, re_embed: bool) -> ImportPlan:
        manifest = archive.manifest
        # Its vectors are kept only if one of the site's embedders makes them; re-embedded, it keeps its model
        # if the site has it, else takes the built-in one.
        embeddings = self._embeddings_for_archive(manifest)
        dimensions = await embeddings.adimensions() if embeddings is not None else None
        if not re_embed and dimensions != manifest.vector_size:
            site = self.ingestion.embeddings
            raise ArchiveModelMismatch(
                f"The archive holds vectors of {manifest.embedding_model} ({manifest.vector_size} "
                f"dimensions), but no embedder of this site makes those (it embeds with {site.model_id}, "
                f"{site.dimensions}, or the endpoints in EMBEDDERS_JSON): import it with --re-embed to make its "
                "chunks again from the stored text."
            )
        embeddings = embeddings or self.ingestion.embeddings
        plan = await self._plan_rows(archive, slug, re_embed, embeddings)
        # Points left by an import that died before its rows were written must not be taken for this one's.
        if await self.chunk_service.collections.holds_points(kb_id=plan.kb.id):
            plan.kb.id, plan.kept_ids = uuid.uuid4(), False
        return plan

    @sync_to_async
    def _plan_rows(
        self, archive: ArchiveReader, slug: str | None, re_embed: bool, embeddings: EmbeddingService
    ) -> ImportPlan:
        manifest = archive.manifest
        target = slugify(slug or manifest.knowledge_base["slug"])
        if not target:
            raise InvalidInput(
                f"Cannot make a slug from {slug!r}: give one made of letters, digits and hyphens."
            )
        if KnowledgeBase.objects.filter(slug=target).exists():
            raise DuplicateSlug(
                f"There is a knowledge base {target!r} already: give the import another slug with --slug."
            )
        users = {
            user.get_username(): user
            for user in get_user_model().objects.filter(
                username__in=[m["username"] for m in archive.memberships] + [manifest.knowledge_base["owner"]]
            )
        }
        owner = manifest.knowledge_base["owner"]
        kb_id = UUID(manifest.knowledge_base["id"])
        kb = KnowledgeBase(
            id=uuid.uuid4() if KnowledgeBase.objects.filter(pk=kb_id).exists() else kb_id,
            name=manifest.knowledge_base["name"],
            slug=target,
            description=manifest.knowledge_base["description"],
            owner=users.get(owner),
            embedding_model=embeddings.model_id if re_embed else manifest.embedding_model,
            vector_size=embeddings.dimensions if re_embed else manifest.vector_size,
            # A KB from before hybrid search gets keyword vectors (made with the defaults) here.
            keyword_settings=manifest.keyword_settings or KeywordSettings().as_dict(),
            chunk_size=manifest.chunk_size,
            chunk_overlap=manifest.chunk_overlap,
            metadata_fields=archive.metadata_fields,
        )
        KnowledgeBaseService.validate_chunking(kb)
        ids = [document["id"] for document in archive.documents]
        taken = set(Document.objects.filter(pk__in=ids).values_list("pk", flat=True))
        return ImportPlan(
            kept_ids=kb.id == kb_id and not taken,
            kb=kb,
            document_ids={d: uuid.uuid4() if d in taken else d for d in ids},
            members=[
                (users[m["username"]], m["role"]) for m in archive.memberships if m["username"] in users
            ],
            unknown_users=sorted(
                {m["username"] for m in archive.memberships if m["username"] not in users}
                | ({owner} if owner and owner not in users else set())
            ),
        )

    async def _import_with_vectors(
        self, archive: ArchiveReader, plan: ImportPlan, on_progress: TransferProgress | None
    ) -> ImportReport:
        """Points into the KB's first generation, then every row in one transaction, which makes them searched.

        Should any step fail, the points go again: a KB is either restored whole or not there.
        """
        kb = plan.kb
        encoder = keyword_encoder(KeywordSettings.from_dict(kb.keyword_settings))
        report = self._report(plan)
        total = archive.manifest.chunks
        target = active_index(kb)
        try:
            for batch in archive.chunk_batches(self.batch_size):
                records = [replace(r, document_id=plan.document_ids[r.document_id]) for r in batch]
                report.chunks += await self.chunk_service.write_chunk_records(
                    index=target,
                    records=records,
                    keyword_vectors=encoder.encode_documents(r.payload["content"] for r in records),
                    fields=kb.metadata_fields,
                )
                if on_progress is not None:
                    on_progress(report.chunks, total)
            await self._create_rows(archive, plan, report, re_embed=False)
        except BaseException:
            await self._discard(kb, rows=False)
            raise
        return report

    async def _import_embedding_again(
        self, archive: ArchiveReader, plan: ImportPlan, on_progress: TransferProgress | None
    ) -> ImportReport:
        """Rows first, every document pending, then each indexed here through the ingestion pipeline.

        Should the import itself stop (not a document failing, which is reported), the KB goes again.
        """
        report = self._report(plan)
        await self._create_rows(archive, plan, report, re_embed=True)
        worker_id, total = new_worker_id(), len(archive.documents)
        try:
            for done, document_id in enumerate(plan.document_ids.values(), start=1):
                document = await self.ingestion.ingest_until_settled(
                    document_id=document_id, worker_id=worker_id
                )
                if document is not None and document.status == DocumentStatus.READY:
                    report.ready += 1
                    report.chunks += document.chunk_count
                elif document is not None:
                    report.failed.append(document)
                else:
                    report.queued += 1  # another worker has it and will finish it
                if on_progress is not None:
                    on_progress(done, total)
        except BaseException:
            await self._discard(plan.kb, rows=True)
            raise
        return report

    @staticmethod
    def _report(plan: ImportPlan) -> ImportReport:
        return ImportReport(
            kb=plan.kb,
            members=len(plan.members),
            unknown_users=plan.unknown_users,
            kept_ids=plan.kept_ids,
        )

    @sync_to_async
    def _create_rows(
        self, archive: ArchiveReader, plan: ImportPlan, report: ImportReport, *, re_embed: bool
    ) -> None:
        kb = plan.kb
        documents = []
        for line in archive.documents:
            ready = line["status"] == DocumentStatus.READY and not re_embed
            documents.append(
                Document(
                    id=plan.document_ids[line["id"]],
                    knowledge_base=kb,
                    title=line["title"],
                    source_name=line["source_name"],
                    source_format=line["source_format"],
                    source_size=line["source_size"],
                    content_hash=line["content_hash"],
                    text=line["text"],
                    status=DocumentStatus.READY if ready else DocumentStatus.PENDING,
                    chunk_count=line["chunk_count"] if ready else 0,
                    chunks_done=line["chunk_count"] if ready else 0,
                    chunks_total=line["chunk_count"] if ready else 0,
                    tags=line["tags"],
                    metadata=line["metadata"],
                    page_starts=line["page_starts"],
                    archived_at=line["archived_at"],
                )
            )
        try:
            with transaction.atomic():
                kb.save(force_insert=True)
                Membership.objects.bulk_create(
                    Membership(knowledge_base=kb, user=user, role=role) for user, role in plan.members
                )
                Document.objects.bulk_create(documents, batch_size=500)
                # created_at is set on insert; the list of documents keeps its order with the archive's.
                for document, line in zip(documents, archive.documents):
                    document.created_at = line["created_at"]
                Document.objects.bulk_update(documents, ["created_at"], batch_size=500)
                DocumentSource.objects.bulk_create(
                    DocumentSource(
                        document_id=plan.document_ids[document_id], data=archive.source(document_id)
                    )
                    for document_id in archive.source_ids
                )
                if any(d.status == DocumentStatus.PENDING for d in documents):
                    transaction.on_commit(notify_new_work)
        except IntegrityError:
            if KnowledgeBase.objects.filter(slug=kb.slug).exists():
                raise DuplicateSlug(
                    f"A knowledge base {kb.slug!r} was made meanwhile: give the import another slug "
                    "with --slug."
                ) from None
            raise
        if not re_embed:
            report.ready = sum(d.status == DocumentStatus.READY for d in documents)
            report.queued = len(documents) - report.ready

    async def _discard(self, kb: KnowledgeBase, *, rows: bool) -> None:
        """Remove what a failed import wrote; a failure here is logged: the import's own error is raised."""
        try:
            if rows:
                await KnowledgeBaseService(chunk_service=self.chunk_service).adelete_knowledge_base(kb=kb)
            else:
                await self.chunk_service.collections.delete_knowledge_base(kb_id=kb.id)
        except Exception:
            logger.exception(
                "Could not remove what the failed import of %s wrote; delete that knowledge base", kb.slug
            )

"""A knowledge base written to one archive: its settings, members, documents, and chunks with vectors."""

from __future__ import annotations

import importlib.metadata
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.utils import timezone

from knowledge.models import Document, DocumentSource, DocumentStatus, KnowledgeBase, Membership
from knowledge.services.knowledge_bases import active_index
from knowledge.transfer.archive import (
    CHUNKS,
    DENSE_DTYPE,
    DOCUMENTS,
    FORMAT,
    FORMAT_VERSION,
    MEMBERSHIPS,
    SOURCES,
    ArchiveWriter,
    json_line,
)
from search.services.chunks import ChunkService

#: Chunks written so far, and how many there are.
TransferProgress = Callable[[int, int], None]


@dataclass
class ExportReport:
    path: Path
    documents: int = 0
    #: Documents exported with their chunks; the others go with their text, to be indexed on import.
    ready: int = 0
    chunks: int = 0
    memberships: int = 0
    #: Ready documents that changed while they were read: exported without chunks, to be indexed on import.
    changed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def kbsite_version() -> str:
    try:
        return importlib.metadata.version("kbsite")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ExportService:
    def __init__(self, *, chunk_service: ChunkService | None = None) -> None:
        self.chunk_service = chunk_service or ChunkService()

    async def export_knowledge_base(
        self, *, kb: KnowledgeBase, path: Path, on_progress: TransferProgress | None = None
    ) -> ExportReport:
        """Write the KB to `path` (replacing what is there only once the archive is whole).

        Ready documents go with their chunks and dense vectors, read from Qdrant, so an import
        embeds nothing; the others go with their text (and their file, if it is not read yet).
        """
        started = time.monotonic()
        documents = [d async for d in Document.objects.filter(knowledge_base=kb).order_by("created_at", "pk")]
        memberships = [
            {"username": m.user.get_username(), "role": m.role}
            async for m in Membership.objects.filter(knowledge_base=kb).select_related("user").order_by("pk")
        ]
        owner = await KnowledgeBase.objects.filter(pk=kb.pk).values_list("owner__username", flat=True).aget()
        report = ExportReport(path=path, documents=len(documents), memberships=len(memberships))
        total = sum(d.chunk_count for d in documents if d.status == DocumentStatus.READY)
        writer = ArchiveWriter(path)
        try:
            with tempfile.TemporaryFile() as dense:
                exported = await self._write_chunks(kb, documents, writer, dense, report, total, on_progress)
                with writer.member(DOCUMENTS) as lines:
                    for document in documents:
                        lines.write(json_line(self._document_line(document, exported)))
                writer.write_member(MEMBERSHIPS, json_line(memberships))
                async for source in DocumentSource.objects.filter(document__knowledge_base=kb):
                    writer.write_member(f"{SOURCES}{source.document_id}", bytes(source.data))
                writer.write_dense(dense, rows=report.chunks, vector_size=kb.vector_size)
            writer.finish(self._manifest(kb, owner, report))
        except BaseException:
            writer.abandon()
            raise
        report.seconds = time.monotonic() - started
        return report

    async def _write_chunks(self, kb, documents, writer, dense, report, total, on_progress) -> set:
        """Each ready document's chunks, one document at a time; returns the ids of those exported whole."""
        exported = set()
        with writer.member(CHUNKS) as lines:
            for document in documents:
                if document.status != DocumentStatus.READY:
                    continue
                records = await self.chunk_service.get_document_chunk_records(
                    kb_id=kb.id, document_id=document.id, index=active_index(kb)
                )
                # Indexed again (or deleted) since the list was read: its chunks may mix two versions.
                now = await Document.objects.filter(pk=document.pk).values("status", "updated_at").afirst()
                if len(records) != document.chunk_count or now != {
                    "status": document.status,
                    "updated_at": document.updated_at,
                }:
                    report.changed.append(document.title)
                    continue
                for record in records:
                    lines.write(
                        json_line(
                            {
                                "document_id": str(record.document_id),
                                "chunk_index": record.chunk_index,
                                "payload": record.payload,
                            }
                        )
                    )
                dense.write(np.asarray([record.dense for record in records], dtype=DENSE_DTYPE).tobytes())
                exported.add(document.pk)
                report.ready += 1
                report.chunks += len(records)
                if on_progress is not None:
                    on_progress(report.chunks, total)
        return exported

    @staticmethod
    def _document_line(document: Document, exported: set) -> dict:
        return {
            "id": str(document.id),
            "title": document.title,
            "source_name": document.source_name,
            "source_format": document.source_format,
            "source_size": document.source_size,
            "content_hash": document.content_hash,
            "text": document.text,
            "status": DocumentStatus.READY if document.pk in exported else DocumentStatus.PENDING,
            "tags": document.tags,
            "metadata": document.metadata,
            "page_starts": document.page_starts,
            "archived_at": document.archived_at.isoformat() if document.archived_at else None,
            "created_at": document.created_at.isoformat(),
            "chunk_count": document.chunk_count if document.pk in exported else 0,
        }

    @staticmethod
    def _manifest(kb: KnowledgeBase, owner: str | None, report: ExportReport) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kbsite_version": kbsite_version(),
            "exported_at": timezone.now().isoformat(),
            "knowledge_base": {
                "id": str(kb.id),
                "name": kb.name,
                "slug": kb.slug,
                "description": kb.description,
                "owner": owner,
            },
            "embedding_model": kb.embedding_model,
            "vector_size": kb.vector_size,
            "keyword_settings": kb.keyword_settings,
            "keyword_vectors": "not stored: made on import from each chunk's content with keyword_settings",
            "chunking": {"size": kb.chunk_size, "overlap": kb.chunk_overlap},
            "metadata_fields": kb.metadata_fields,
            "counts": {
                "documents": report.documents,
                "ready_documents": report.ready,
                "chunks": report.chunks,
                "memberships": report.memberships,
            },
        }

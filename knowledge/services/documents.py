"""Adding, archiving and deleting a knowledge base's documents."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from knowledge.errors import (
    DuplicateDocument,
    InvalidInput,
    KnowledgeError,
    UnsupportedFormat,
    UploadTooLarge,
)
from knowledge.ingestion.events import notify_new_work
from knowledge.ingestion.extraction import SUPPORTED_FORMATS, describe_program, format_for, program_message
from knowledge.models import Document, DocumentSource, DocumentStatus, KnowledgeBase
from knowledge.services.document_metadata import clean_metadata, clean_tags
from knowledge.services.metadata_fields import MetadataFieldService
from knowledge.services.text_fields import refuse_unstorable_characters
from search.services.chunks import ChunkService

TEXT_FORMAT = "text"

# A document sent (back) to the queue: any worker holding it loses its claim, so an older run
# cannot mark the new content ready.
REQUEUED = {
    "status": DocumentStatus.PENDING,
    "error": "",
    "attempts": 0,
    "next_attempt_at": None,
    "claimed_by": "",
    "lease_expires_at": None,
    "chunks_done": 0,
    "chunks_total": 0,
}


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AddedDocument:
    document: Document
    #: False when the upload replaced an earlier version of the same file (same name, other content).
    created: bool


@dataclass
class UploadBatch:
    """What became of several files uploaded at once."""

    added: list[AddedDocument]
    #: One message per file that was refused (a duplicate, too large, an unknown format), saying why.
    refused: list[str]

    @property
    def replaced(self) -> list[AddedDocument]:
        return [added for added in self.added if not added.created]


class DocumentService:
    def __init__(self, *, chunk_service: ChunkService | None = None) -> None:
        self.chunk_service = chunk_service or ChunkService()

    def add_uploads(
        self,
        *,
        kb: KnowledgeBase,
        files: Iterable[Any],
        tags: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> UploadBatch:
        """Queue several uploaded files (each with `.name` and `.read()`), all with the labels given.

        One refused leaves the others queued.
        """
        batch = UploadBatch(added=[], refused=[])
        for upload in files:
            try:
                added = self.add_upload(
                    kb=kb, filename=upload.name, data=upload.read(), tags=tags, metadata=metadata
                )
                batch.added.append(added)
            except KnowledgeError as exc:
                batch.refused.append(exc.message)
        return batch

    def add_upload(
        self,
        *,
        kb: KnowledgeBase,
        filename: str,
        data: bytes,
        title: str = "",
        source_name: str = "",
        tags: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddedDocument:
        """Queue an uploaded file for ingestion.

        The same content twice in one KB is refused (DuplicateDocument); a file of the same source
        name (the file name, or its path within an imported folder) with other content replaces
        that document's text, and only it is indexed again. `tags` and `metadata` (left out: a
        replaced document keeps its own) go with every chunk, for search filters; a metadata key
        the KB does not declare yet is declared with its value's type, and a value of another type
        than its key's is refused (InvalidMetadataField).
        """
        refuse_unstorable_characters(file_name=filename, title=title, source_name=source_name)
        name, source_format = self.check_upload(filename, data)
        return self._add(
            kb=kb,
            source_name=source_name or name,
            title=title.strip(),
            digest=content_hash(data),
            source_format=source_format,
            size=len(data),
            text="",
            source=data,
            labels=self._clean_labels(tags, metadata),
        )

    def add_text_document(
        self,
        *,
        kb: KnowledgeBase,
        title: str,
        text: str,
        source_name: str = "",
        tags: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddedDocument:
        """Queue a document given as plain text; duplicates, new versions and labels go as for files."""
        refuse_unstorable_characters(title=title, text=text, source_name=source_name)
        title = (title or "").strip()
        if not title:
            raise InvalidInput("A text document needs a title.")
        if not text or not text.strip():
            raise InvalidInput(f"{title!r} has no text to index.")
        encoded = text.encode("utf-8")
        self.check_upload_size(title, len(encoded))
        return self._add(
            kb=kb,
            source_name=PurePath(source_name).name,
            title=title,
            digest=content_hash(encoded),
            source_format=TEXT_FORMAT,
            size=len(encoded),
            text=text,
            source=None,
            labels=self._clean_labels(tags, metadata),
        )

    @staticmethod
    def _clean_labels(tags: Iterable[str] | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """The tags and metadata given, checked, as the fields they set (those not given keep their value)."""
        labels: dict[str, Any] = {}
        if tags is not None:
            labels["tags"] = clean_tags(tags)
        if metadata is not None:
            labels["metadata"] = clean_metadata(metadata)
        return labels

    @staticmethod
    def default_title(source_name: str) -> str:
        """The title a document gets from its file name until its own title is found in the text."""
        return PurePath(source_name).stem or "Untitled"

    @classmethod
    def check_upload(cls, filename: str, data: bytes) -> tuple[str, str]:
        """The upload's file name (without its path) and format; a KnowledgeError says why it is refused."""
        refuse_unstorable_characters(file_name=filename)
        name = PurePath(filename or "").name
        if not name:
            raise InvalidInput("The upload has no file name.")
        cls.check_upload_size(name, len(data))
        source_format = format_for(name)
        if source_format is None:
            readable = ", ".join(sorted(set(SUPPORTED_FORMATS)))
            raise UnsupportedFormat(f"{name} is not a file kbsite can read; it reads {readable}.")
        if not data:
            raise InvalidInput(f"{name} is empty.")
        if program := describe_program(data):
            raise UnsupportedFormat(program_message(name, source_format, program))
        return name, source_format

    @staticmethod
    def check_upload_size(name: str, size: int) -> None:
        limit = int(settings.INGESTION["MAX_UPLOAD_BYTES"])
        if size > limit:
            raise UploadTooLarge(
                f"{name} is {filesizeformat(size)}; the most is {filesizeformat(limit)} "
                "(KBSITE_MAX_UPLOAD_MB). Split it, or ask an operator to raise the limit."
            )

    def _add(
        self,
        *,
        kb: KnowledgeBase,
        source_name: str,
        title: str,
        digest: str,
        source_format: str,
        size: int,
        text: str,
        source: bytes | None,
        labels: dict[str, Any],
    ) -> AddedDocument:
        with transaction.atomic():
            if "metadata" in labels:
                MetadataFieldService(chunk_service=self.chunk_service).declare_for_write(
                    kb=kb, metadata=labels["metadata"]
                )
            same = Document.objects.filter(knowledge_base=kb, content_hash=digest).only("id", "title").first()
            if same is not None:
                raise DuplicateDocument(
                    f"{source_name or title} is already in {kb.name!r} as {same.title!r}; it was not added again.",
                    detail={"document_id": str(same.id)},
                )
            earlier = (
                Document.objects.select_for_update().filter(knowledge_base=kb, source_name=source_name).first()
                if source_name
                else None
            )
            document = earlier or Document(knowledge_base=kb, source_name=source_name)
            document.title = (title or document.title or self.default_title(source_name))[:500]
            document.source_format = source_format
            document.source_size = size
            document.content_hash = digest
            document.text = text
            # A file's pages are known once its text is extracted; typed text has none.
            document.page_starts = None
            for field, value in {**REQUEUED, **labels}.items():
                setattr(document, field, value)
            try:
                document.save()
            except IntegrityError:
                raise DuplicateDocument(f"{source_name or title} is already in {kb.name!r}.") from None
            DocumentSource.objects.filter(document=document).delete()
            if source is not None:
                DocumentSource.objects.create(document=document, data=source)
            transaction.on_commit(notify_new_work)
        return AddedDocument(document=document, created=earlier is None)

    async def aset_archived(self, *, document: Document, archived: bool) -> Document:
        """Archive or restore a document: its chunks' payload changes in Qdrant, nothing is re-embedded.

        Qdrant changes first: should the database then fail, no archived text stays searchable.
        """
        archived_at = timezone.now() if archived else None
        if (document.archived_at is None) == (archived_at is None):
            return document
        await self.chunk_service.set_archived(
            kb_id=document.knowledge_base_id, document_id=document.id, archived_at=archived_at
        )
        document.archived_at = archived_at
        await document.asave(update_fields=["archived_at", "updated_at"])
        return document

    async def arename(self, *, document: Document, title: str) -> Document:
        """Give a document a new title, in its row and in its chunks (which search results show)."""
        refuse_unstorable_characters(title=title)
        title = (title or "").strip()[:500]
        if not title:
            raise InvalidInput("A document needs a title.")
        await self.chunk_service.set_title(kb_id=document.knowledge_base_id, document_id=document.id, title=title)
        document.title = title
        await document.asave(update_fields=["title", "updated_at"])
        return document

    async def aset_labels(
        self, *, document: Document, tags: Iterable[str] | None = None, metadata: dict[str, Any] | None = None
    ) -> Document:
        """Replace a document's tags and/or metadata, in its row and in its chunks' payload.

        Nothing is re-embedded, and the next search filters by the new values. Qdrant changes first,
        like a rename; a document being indexed meanwhile gets them when its indexing finishes. New
        metadata keys are declared, and values of another type than their key's refused, as on upload.
        """
        labels = self._clean_labels(tags, metadata)
        if not labels:
            return document
        new_tags, new_metadata = labels.get("tags", document.tags), labels.get("metadata", document.metadata)
        kb = await KnowledgeBase.objects.only("id", "name").aget(pk=document.knowledge_base_id)
        fields = await MetadataFieldService(chunk_service=self.chunk_service).adeclare_for_write(
            kb=kb, metadata=new_metadata
        )
        await self.chunk_service.set_labels(
            kb_id=document.knowledge_base_id,
            document_id=document.id,
            tags=new_tags,
            metadata=new_metadata,
            fields=fields,
        )
        document.tags, document.metadata = new_tags, new_metadata
        await document.asave(update_fields=["tags", "metadata", "updated_at"])
        return document

    async def adelete_document(self, *, document: Document) -> None:
        """Remove a document's points from Qdrant, then its row, then what a worker stored in between.

        The points go first, so a store that fails leaves the document there to delete again. A worker
        indexing it may store a batch after that first sweep and record it while the row is still there;
        every batch stored after the row is gone ends in LostClaim, and that worker drops what it wrote.
        The second sweep takes the batches in between.
        """
        kb_id, document_id = document.knowledge_base_id, document.id  # delete() clears the instance's id
        await self.chunk_service.delete_document_chunks(kb_id=kb_id, document_id=document_id)
        await document.adelete()
        await self.chunk_service.delete_document_chunks(kb_id=kb_id, document_id=document_id)

    def queue_for_reindex(self, *, documents: Iterable[Document]) -> int:
        """Send documents back to the workers to be chunked and embedded again; returns how many.

        A worker busy with one of them loses its claim, so it cannot mark the old run ready.
        """
        return Document.objects.filter(pk__in=[d.pk for d in documents]).update(
            **REQUEUED, updated_at=timezone.now()
        )

    # The other form of each method, for callers of the other kind (see README, "How it is built").
    aadd_upload = sync_to_async(add_upload)
    aadd_text_document = sync_to_async(add_text_document)
    aqueue_for_reindex = sync_to_async(queue_for_reindex)
    set_archived = async_to_sync(aset_archived)
    rename = async_to_sync(arename)
    set_labels = async_to_sync(aset_labels)
    delete_document = async_to_sync(adelete_document)

"""The ingestion queue: the Document rows' claims, leases and outcomes, each one named conditional UPDATE.

A worker claims a document with a lease it keeps renewing; a worker that dies stops renewing, and
once the lease runs out any worker may claim the document again. Every transition after the claim
is conditional on the claim still being this worker's, so a worker that lost its document (deleted,
queued again, reclaimed after a lapse) changes nothing and learns so from `LostClaim`.
Each transition is one short transaction in sync code, wrapped once (`a` prefix) for async callers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone

from knowledge.models import Document, DocumentSource, DocumentStatus


class LostClaim(Exception):
    """The document is no longer this worker's: deleted, queued again, or reclaimed after a lapse."""


class DocumentQueue:
    def __init__(self, *, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds

    def _lease_end(self):
        return timezone.now() + timedelta(seconds=self.lease_seconds)

    def claim_next(
        self,
        *,
        worker_id: str,
        knowledge_base_ids: Sequence[UUID] | None = None,
        busy_knowledge_base_ids: Collection[UUID] = (),
    ) -> Document | None:
        """Claim the oldest document that is due: pending, or processing under a lapsed lease.

        Documents of knowledge bases not in `busy_knowledge_base_ids` (those the worker has in
        work) come first, so one KB's big upload does not hold up the others.
        """
        now = timezone.now()
        due = Q(status=DocumentStatus.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        lapsed = Q(status=DocumentStatus.PROCESSING, lease_expires_at__lt=now)
        candidates = Document.objects.filter(due | lapsed)
        if knowledge_base_ids is not None:
            candidates = candidates.filter(knowledge_base_id__in=list(knowledge_base_ids))
        with transaction.atomic():
            if connection.features.has_select_for_update_skip_locked:
                # Workers pass over rows another worker is claiming instead of queueing behind it.
                candidates = candidates.select_for_update(skip_locked=True)
            order = ["created_at"]
            if busy_knowledge_base_ids:
                busy = Case(When(knowledge_base_id__in=list(busy_knowledge_base_ids), then=1), default=0)
                candidates, order = candidates.annotate(busy=busy), ["busy", "created_at"]
            for document_id in candidates.order_by(*order).values_list("id", flat=True)[:5]:
                if self._take(document_id, worker_id, due | lapsed):
                    return self._claimed(document_id)
        return None

    def claim(self, *, document_id: UUID, worker_id: str) -> Document | None:
        """Claim one given document unless another worker holds it under a live lease."""
        free = ~Q(status=DocumentStatus.PROCESSING) | Q(lease_expires_at__lt=timezone.now())
        with transaction.atomic():
            if self._take(document_id, worker_id, free):
                return self._claimed(document_id)
        return None

    def _take(self, document_id: UUID, worker_id: str, condition: Q) -> bool:
        # The conditional UPDATE is what makes a claim exclusive, on SQLite as on PostgreSQL.
        taken = Document.objects.filter(condition, pk=document_id).update(
            status=DocumentStatus.PROCESSING,
            claimed_by=worker_id,
            lease_expires_at=self._lease_end(),
            attempts=F("attempts") + 1,
            chunks_done=0,
            chunks_total=0,
            updated_at=timezone.now(),
        )
        return taken == 1

    @staticmethod
    def _claimed(document_id: UUID) -> Document:
        return Document.objects.select_related("knowledge_base").get(pk=document_id)

    def release(self, *, document_id: UUID, worker_id: str) -> None:
        """Give a claimed document back to the queue untouched (a worker shutting down)."""
        Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
            status=DocumentStatus.PENDING, claimed_by="", lease_expires_at=None, attempts=0, updated_at=timezone.now()
        )

    def release_stale_claims(self, *, keep_worker_id: str) -> int:
        """Give every document claimed by another worker back to the queue at once, whatever its lease says.

        Only for a process that alone may work on the queue: the holder of the embedded store's
        folder lock, whose predecessor was killed before it could give its documents back. Where
        several workers share the queue (a Qdrant server), a live lease belongs to a live worker:
        there, only lapsed leases may be taken, which `claim_next` does. The interrupted attempt
        still counts, as it does when a lease lapses. Returns how many documents were released.
        """
        return (
            Document.objects.filter(status=DocumentStatus.PROCESSING)
            .exclude(claimed_by=keep_worker_id)
            .update(
                status=DocumentStatus.PENDING,
                claimed_by="",
                lease_expires_at=None,
                next_attempt_at=None,
                chunks_done=0,
                chunks_total=0,
                updated_at=timezone.now(),
            )
        )

    def renew(self, *, document_id: UUID, worker_id: str) -> None:
        """Push the lease's end back, while long steps (extraction, chunking) run between progress records."""
        Document.objects.filter(pk=document_id, claimed_by=worker_id).update(lease_expires_at=self._lease_end())

    def record_progress(self, *, document_id: UUID, worker_id: str, done: int, total: int) -> None:
        """Record chunks done of total, renewing the lease; LostClaim if the document is no longer ours."""
        updated = Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
            chunks_done=done, chunks_total=total, lease_expires_at=self._lease_end()
        )
        if not updated:
            raise LostClaim(document_id)

    def store_text(self, *, document: Document, worker_id: str) -> None:
        """Keep the extracted text, title and pages and drop the file they came from, in one transaction."""
        with transaction.atomic():
            stored = Document.objects.filter(pk=document.pk, claimed_by=worker_id).update(
                text=document.text,
                title=document.title,
                page_starts=document.page_starts,
                updated_at=timezone.now(),
            )
            if not stored:
                raise LostClaim(document.pk)
            DocumentSource.objects.filter(document_id=document.pk).delete()

    def mark_ready(self, *, document_id: UUID, worker_id: str, chunk_count: int) -> tuple:
        """Mark the document ready; returns its (archived_at, title, tags, metadata) as they are now.

        Those may have changed while it was indexed: the caller corrects the chunks it wrote.
        """
        with transaction.atomic():
            finished = Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
                status=DocumentStatus.READY,
                chunk_count=chunk_count,
                chunks_done=chunk_count,
                chunks_total=chunk_count,
                error="",
                attempts=0,
                next_attempt_at=None,
                claimed_by="",
                lease_expires_at=None,
                updated_at=timezone.now(),
            )
            if not finished:
                raise LostClaim(document_id)
            fields = ("archived_at", "title", "tags", "metadata")
            return Document.objects.filter(pk=document_id).values_list(*fields).get()

    def fail(self, *, document_id: UUID, worker_id: str, error: str, chunks_removed: bool) -> None:
        """Mark the document failed with `error`; its chunk count drops to 0 when its chunks were removed."""
        Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
            **({"chunk_count": 0} if chunks_removed else {}),
            status=DocumentStatus.FAILED,
            error=error,
            claimed_by="",
            lease_expires_at=None,
            next_attempt_at=None,
            updated_at=timezone.now(),
        )

    def retry_later(
        self, *, document_id: UUID, worker_id: str, error: str, delay_seconds: float, count_attempt: bool
    ) -> None:
        """Put the document back in the queue, due in `delay_seconds`; an uncounted try gives its attempt back."""
        Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
            status=DocumentStatus.PENDING,
            error=error,
            attempts=F("attempts") if count_attempt else F("attempts") - 1,
            next_attempt_at=timezone.now() + timedelta(seconds=delay_seconds),
            claimed_by="",
            lease_expires_at=None,
            updated_at=timezone.now(),
        )

    aclaim_next = sync_to_async(claim_next)
    aclaim = sync_to_async(claim)
    arelease = sync_to_async(release)
    arelease_stale_claims = sync_to_async(release_stale_claims)
    arenew = sync_to_async(renew)
    arecord_progress = sync_to_async(record_progress)
    astore_text = sync_to_async(store_text)
    amark_ready = sync_to_async(mark_ready)
    afail = sync_to_async(fail)
    aretry_later = sync_to_async(retry_later)

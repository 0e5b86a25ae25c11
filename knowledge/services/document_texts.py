"""Slices of documents' stored text for the search app, which shows the passage around a chunk."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db.models import Case, TextField, Value, When
from django.db.models.functions import Substr

from knowledge.models import Document

# Slices read by one query; each is a column of its own.
SLICES_PER_QUERY = 100


class DocumentTextService:
    """Reads only the characters asked for: a document's text may run to millions of them."""

    async def text_slices(self, *, spans: Sequence[tuple[UUID, int, int]]) -> list[str | None]:
        """text[start:end] of each (document, start, end), or None where the document is gone."""
        return await self._text_slices(list(spans))

    @sync_to_async
    def _text_slices(self, spans: list[tuple[UUID, int, int]]) -> list[str | None]:
        slices: list[str | None] = []
        for first in range(0, len(spans), SLICES_PER_QUERY):
            batch = spans[first : first + SLICES_PER_QUERY]
            columns = {
                # SQL counts characters from 1; a row computes only the slices of its own document.
                f"slice_{i}": Case(
                    When(pk=document_id, then=Substr("text", start + 1, max(end - start, 0))),
                    default=Value(None),
                    output_field=TextField(),
                )
                for i, (document_id, start, end) in enumerate(batch)
            }
            rows = {
                row["pk"]: row
                for row in Document.objects.filter(pk__in={span[0] for span in batch}).values("pk", **columns)
            }
            slices.extend(
                rows[document_id][f"slice_{i}"] if document_id in rows else None
                for i, (document_id, _, _) in enumerate(batch)
            )
        return slices

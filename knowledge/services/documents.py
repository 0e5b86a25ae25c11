"""Adding documents to a knowledge base."""

from __future__ import annotations

import hashlib

from knowledge.errors import DuplicateDocument, InvalidInput
from knowledge.models import Document, KnowledgeBase


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DocumentService:
    def add_text_document(self, *, kb: KnowledgeBase, title: str, text: str, source_name: str = "") -> Document:
        """Record a document from plain text, pending indexing; the same text twice in one KB is refused."""
        title = (title or "").strip() or source_name or "Untitled"
        if not text or not text.strip():
            raise InvalidInput(f"{title!r} has no text to index.")
        digest = content_hash(text)
        existing = Document.objects.filter(knowledge_base=kb, content_hash=digest).only("id", "title").first()
        if existing is not None:
            raise DuplicateDocument(
                f"This text is already in {kb.name!r} as {existing.title!r}.", detail={"document_id": str(existing.id)}
            )
        return Document.objects.create(
            knowledge_base=kb, title=title[:500], source_name=source_name[:500], text=text, content_hash=digest
        )

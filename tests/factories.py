"""Builders of test data that go through the same services production uses."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

from django.contrib.auth import get_user_model

from knowledge.models import Document, KnowledgeBase, Membership, Role
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
_numbers = itertools.count(1)


def corpus() -> list[tuple[str, str]]:
    """(title, text) of each test corpus document, titles taken from their first heading."""
    documents = []
    for path in sorted(CORPUS_DIR.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        documents.append((text.splitlines()[0].lstrip("# ").strip(), text))
    return documents


def corpus_pages(*subjects: str) -> list[str]:
    """One printed page per subject: the first two paragraphs of the corpus document whose title has the
    word, in lines of 90 characters (as a PDF holds them)."""
    pages = []
    for subject in subjects:
        text = next(text for title, text in corpus() if subject in title)
        paragraphs = [part for part in text.split("\n\n") if not part.startswith("#")][:2]
        pages.append("\n".join(textwrap.wrap(" ".join(paragraphs), 90)))
    return pages


def make_user(*, username: str | None = None, superuser: bool = False, **fields):
    username = username or f"user{next(_numbers)}"
    model = get_user_model()
    if superuser:
        return model.objects.create_superuser(username=username, password="pw-" + username, **fields)
    return model.objects.create_user(username=username, password="pw-" + username, **fields)


def make_kb(*, owner=None, name: str | None = None, **options) -> KnowledgeBase:
    name = name or f"Knowledge base {next(_numbers)}"
    return KnowledgeBaseService().create_knowledge_base(name=name, owner=owner, **options)


def add_member(kb: KnowledgeBase, user, role: Role = Role.READER) -> Membership:
    return Membership.objects.create(knowledge_base=kb, user=user, role=role)


def make_document(
    *, kb: KnowledgeBase, title: str | None = None, text: str | None = None, **labels
) -> Document:
    """A pending document given as text; `labels` are `tags` and `metadata`."""
    number = next(_numbers)
    return DocumentService().add_text_document(
        kb=kb,
        title=title or f"Document {number}",
        text=text or f"Document number {number} talks about nothing in particular.",
        source_name=f"document-{number}.txt",
        **labels,
    ).document

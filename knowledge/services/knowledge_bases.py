"""Creating, changing and deleting knowledge bases, and where each one's searched points are."""

from __future__ import annotations

from uuid import UUID

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from knowledge.errors import DuplicateSlug, InvalidInput
from knowledge.models import KnowledgeBase, Membership, Role
from knowledge.services.text_fields import refuse_unstorable_characters
from search.embedding.registry import embedders
from search.errors import UnknownEmbedder
from search.services.chunks import ChunkService
from search.services.collections import KbIndex

#: The fewest tokens a chunk may be set to: a shorter passage is a few words, too little for the model
#: to place by meaning (its vectors of such fragments crowd the results), and a document of a few pages
#: would need thousands of chunks embedded.
MIN_CHUNK_TOKENS = 16


def max_chunks_per_document() -> int:
    return int(settings.CHUNKING["MAX_CHUNKS_PER_DOCUMENT"])


def too_many_chunks(name: str, count: int, chunk_size: int) -> InvalidInput:
    """The refusal of a document over the chunk cap, the same for its preview and its indexing."""
    return InvalidInput(
        f"{name} makes {count} chunks of {chunk_size} tokens, more than the {max_chunks_per_document()} one "
        "document may have (KBSITE_MAX_CHUNKS_PER_DOCUMENT): split it into smaller files, or use larger chunks."
    )


EDITABLE_KB_FIELDS = ("name", "description", "owner", "chunk_size", "chunk_overlap")


def active_index(kb: KnowledgeBase) -> KbIndex:
    """The generation of the KB's points that searches read, in its model's collection."""
    return KbIndex(
        kb_id=kb.id, model=kb.embedding_model, vector_size=kb.vector_size, generation=kb.index_generation
    )


class KnowledgeBaseIndexes:
    """Tells the search app where a KB's searched points are (settings.SEARCH["KB_INDEXES"])."""

    async def active_indexes(self, *, kb_ids) -> dict[UUID, KbIndex]:
        rows = KnowledgeBase.objects.filter(pk__in=list(kb_ids)).values_list(
            "id", "embedding_model", "vector_size", "index_generation"
        )
        return {
            kb_id: KbIndex(kb_id=kb_id, model=model, vector_size=size, generation=generation)
            async for kb_id, model, size, generation in rows
        }

    async def active_index(self, *, kb_id) -> KbIndex | None:
        row = (
            await KnowledgeBase.objects.filter(pk=kb_id)
            .values_list("embedding_model", "vector_size", "index_generation")
            .afirst()
        )
        if row is None:
            return None
        model, vector_size, generation = row
        return KbIndex(kb_id=UUID(str(kb_id)), model=model, vector_size=vector_size, generation=generation)


class KnowledgeBaseService:
    def __init__(self, *, chunk_service: ChunkService | None = None) -> None:
        self.chunk_service = chunk_service or ChunkService()

    def create_knowledge_base(
        self,
        *,
        name: str,
        owner: AbstractBaseUser | None,
        slug: str | None = None,
        description: str = "",
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        embedding_model: str | None = None,
    ) -> KnowledgeBase:
        """Create a KB for `embedding_model` (default: the built-in model); its owner becomes an owner member.

        An endpoint configured without its vector size is asked for it here, once per process.
        """
        refuse_unstorable_characters(name=name, slug=slug, description=description)
        name = (name or "").strip()
        if not name:
            raise InvalidInput("A knowledge base needs a name.")
        slug = slugify(slug or name)
        if not slug:
            raise InvalidInput(f"Cannot make a slug from {name!r}: give one made of letters, digits and hyphens.")
        try:
            embeddings = embedders.service(embedding_model or embedders.default.model_id)
        except UnknownEmbedder as exc:
            raise InvalidInput(exc.message, detail=exc.detail) from None
        kb = KnowledgeBase(
            name=name,
            slug=slug,
            description=description,
            owner=owner,
            embedding_model=embeddings.model_id,
            vector_size=embeddings.dimensions,
        )
        if chunk_size is not None:
            kb.chunk_size = chunk_size
            # A small chunk with the site's default overlap would overlap itself: share a fifth.
            kb.chunk_overlap = min(kb.chunk_overlap, chunk_size // 5)
        if chunk_overlap is not None:
            kb.chunk_overlap = chunk_overlap
        self.validate_chunking(kb)
        try:
            with transaction.atomic():
                kb.save()
                if owner is not None:
                    Membership.objects.create(knowledge_base=kb, user=owner, role=Role.OWNER)
        except IntegrityError:
            if KnowledgeBase.objects.filter(slug=slug).exists():
                raise DuplicateSlug(f"The slug {slug!r} is taken: choose another.") from None
            raise
        return kb

    def update_knowledge_base(self, *, kb: KnowledgeBase, **changes) -> KnowledgeBase:
        """Change a KB's name, description, owner or chunk settings (these apply to documents indexed from now on)."""
        unknown = set(changes) - set(EDITABLE_KB_FIELDS)
        if unknown:
            raise InvalidInput(f"These cannot be changed: {', '.join(sorted(unknown))}.")
        refuse_unstorable_characters(
            **{field: value for field, value in changes.items() if isinstance(value, str)}
        )
        for field, value in changes.items():
            # None leaves a field as it is, except the owner, whom it removes.
            if value is not None or field == "owner":
                setattr(kb, field, value.strip() if isinstance(value, str) else value)
        if not kb.name:
            raise InvalidInput("A knowledge base needs a name.")
        self.validate_chunking(kb)
        # Only what changed: a write declaring a metadata field meanwhile keeps its declaration.
        kb.save(update_fields=[*changes, "updated_at"])
        return kb

    @staticmethod
    def validate_chunking(kb: KnowledgeBase) -> None:
        try:
            embeddings = embedders.service(kb.embedding_model) if kb.embedding_model else embedders.default
        except UnknownEmbedder:
            embeddings = embedders.default  # a KB awaiting its rebuild onto the default
        most = embeddings.embedder.max_chunk_tokens
        if not MIN_CHUNK_TOKENS <= kb.chunk_size <= most:
            raise InvalidInput(
                f"Chunk size must be from {MIN_CHUNK_TOKENS} to {most} tokens, not {kb.chunk_size}: fewer carry "
                "too little meaning for the model, more do not fit its input."
            )
        if not 0 <= kb.chunk_overlap < kb.chunk_size:
            raise InvalidInput(
                f"Chunk overlap must be at least 0 and below the chunk size ({kb.chunk_size}), not {kb.chunk_overlap}."
            )

    async def adelete_knowledge_base(self, *, kb: KnowledgeBase) -> None:
        """Delete the KB's points in Qdrant (never another KB's), then its rows (documents and memberships go with it).

        Qdrant goes first: should it fail, the KB is still there to delete again, not a hidden orphan.
        """
        await self.chunk_service.collections.delete_knowledge_base(kb_id=kb.id)
        await kb.adelete()

    # The other form of each method, for callers of the other kind (see README, "How it is built").
    acreate_knowledge_base = sync_to_async(create_knowledge_base)
    aupdate_knowledge_base = sync_to_async(update_knowledge_base)
    delete_knowledge_base = async_to_sync(adelete_knowledge_base)

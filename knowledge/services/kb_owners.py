"""What a knowledge base's owners do from the members' pages: create one, change its settings, delete it.

Each step goes through KnowledgeBaseService (the API's service) and into the KB's history; a change of
chunk settings also sends the KB's indexed documents back to the workers, to be chunked again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from knowledge.errors import InvalidInput
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services import kb_history
from knowledge.services.documents import REQUEUED
from knowledge.services.knowledge_bases import KnowledgeBaseService
from knowledge.services.permissions import PermissionService

CHUNK_FIELDS = ("chunk_size", "chunk_overlap")
# Slugs are at most 100 characters: room for "-" and a number or eight hex digits.
MAX_SLUG_BASE = 90
SLUG_TRIES = 50
# A document pending is chunked with the new settings anyway; a failed one waits for its own retry.
RECHUNKED = (DocumentStatus.READY, DocumentStatus.PROCESSING)


@dataclass(frozen=True)
class SettingsChange:
    changed: list[str]
    #: Documents sent back to the workers because the chunk settings changed.
    requeued: int


class KnowledgeBaseOwnerService:
    def __init__(self, *, knowledge_bases: KnowledgeBaseService | None = None) -> None:
        self.knowledge_bases = knowledge_bases or KnowledgeBaseService()

    def create(
        self,
        *,
        actor: AbstractBaseUser,
        name: str,
        description: str = "",
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        embedding_model: str | None = None,
    ) -> KnowledgeBase:
        """A KB owned by `actor`, if the site lets them create one (KBSITE_KB_CREATORS); the built-in model's
        unless `embedding_model` names another configured one."""
        PermissionService().require_may_create_knowledge_bases(actor)
        with transaction.atomic():
            kb = self.knowledge_bases.create_knowledge_base(
                name=name,
                slug=self.free_slug(name),
                owner=actor,
                description=description,
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                embedding_model=embedding_model,
            )
            kb_history.record_kb_created(actor=actor, kb=kb)
        return kb

    @staticmethod
    def free_slug(name: str) -> str:
        """A slug for the name no KB has yet: the form asks for none, and another member's KB (which this
        one may not even see) may have taken the obvious one. Names without Latin letters get a random one."""
        base = slugify(name or "")[:MAX_SLUG_BASE]
        if not base:
            return f"kb-{uuid.uuid4().hex[:8]}"
        candidates = [base, *(f"{base}-{number}" for number in range(2, SLUG_TRIES + 1))]
        taken = set(KnowledgeBase.objects.filter(slug__in=candidates).values_list("slug", flat=True))
        return next((slug for slug in candidates if slug not in taken), f"{base}-{uuid.uuid4().hex[:8]}")

    def change_settings(self, *, actor: AbstractBaseUser, kb: KnowledgeBase, **values) -> SettingsChange:
        """Rename, describe or re-chunk the KB (the caller has checked `actor` is an owner).

        New chunk settings send every ready or processing document back to the queue: the workers
        chunk and embed them again, and the KB's page shows how far they are.
        """
        changed = [field for field, value in values.items() if getattr(kb, field) != value]
        if not changed:
            return SettingsChange(changed=[], requeued=0)
        with transaction.atomic():
            self.knowledge_bases.update_knowledge_base(kb=kb, **{field: values[field] for field in changed})
            requeued = 0
            if set(changed) & set(CHUNK_FIELDS):
                requeued = Document.objects.filter(knowledge_base=kb, status__in=RECHUNKED).update(
                    **REQUEUED, updated_at=timezone.now()
                )
            kb_history.record_kb_changed(actor=actor, kb=kb, fields=changed)
        return SettingsChange(changed=changed, requeued=requeued)

    async def adelete(self, *, actor: AbstractBaseUser, kb: KnowledgeBase, typed_name: str) -> None:
        """Delete the KB, its documents and its collections, if `typed_name` is its name (owners confirm so)."""
        if (typed_name or "").strip() != kb.name:
            raise InvalidInput(f"Type the knowledge base's name, {kb.name}, exactly to delete it.")
        # Deleting clears the instance's id, which the history's line names.
        gone = KnowledgeBase(pk=kb.pk, name=kb.name)
        await self.knowledge_bases.adelete_knowledge_base(kb=kb)
        await sync_to_async(kb_history.record_kb_deleted)(actor=actor, kb=gone)

    # The other form of each method, for callers of the other kind (see README, "How it is built").
    acreate = sync_to_async(create)
    achange_settings = sync_to_async(change_settings)
    delete = async_to_sync(adelete)

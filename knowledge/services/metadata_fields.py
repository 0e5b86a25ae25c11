"""A knowledge base's declared metadata fields: declared by its owners or by a write, checked on every write, retyped.

See search.fields for the payload layout that keeps knowledge bases sharing a collection apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from knowledge.errors import InvalidMetadataField
from knowledge.models import Document, KnowledgeBase
from knowledge.services import kb_history
from knowledge.services.knowledge_bases import active_index
from search.fields import FIELD_TYPES, TYPE_HINTS, FieldType, describe_fields, infer_type, typed_value
from search.filters import KEY_PATTERN
from search.services.chunks import ChunkService

#: Each declared field may get an index in its model's shared collection: the number is bounded.
MAX_FIELDS = 100
#: A refusal names this many documents at most.
SHOWN_DOCUMENTS = 3


def _refuse(message: str, **detail: Any) -> InvalidMetadataField:
    return InvalidMetadataField(message, detail=detail or None)


def clean_fields(fields: Any) -> dict[str, str]:
    """Declared fields as stored: `{key: type}`, keys as metadata keys are, types among text, number, date, bool."""
    if not isinstance(fields, Mapping):
        raise _refuse('metadata fields are an object of keys and types, e.g. {"year": "number"}.')
    if len(fields) > MAX_FIELDS:
        raise _refuse(f"a knowledge base declares at most {MAX_FIELDS} metadata fields, not {len(fields)}.")
    cleaned: dict[str, str] = {}
    for key, field_type in fields.items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise _refuse(
                f"{key!r}: a key is a letter or _, then up to 63 letters, digits or _.", field=str(key)
            )
        if field_type not in FIELD_TYPES:
            raise _refuse(
                f"{key}: the type is one of {', '.join(FIELD_TYPES)}, not {field_type!r}.", field=key
            )
        cleaned[key] = str(FieldType(field_type))
    return dict(sorted(cleaned.items()))


def parse_field_lines(text: str) -> dict[str, str]:
    """`key: type` lines (the admin's form) as declared fields."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, field_type = line.partition(":")
        if not sep:
            raise _refuse(f"{line.strip()!r} is not `key: type` (e.g. `year: number`).")
        fields[key.strip()] = field_type.strip().lower()
    return clean_fields(fields)


def format_field_lines(fields: Mapping[str, str]) -> str:
    return "\n".join(f"{key}: {fields[key]}" for key in sorted(fields))


def misfits(metadata: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """The keys of this metadata whose value is not of the key's declared type, each with the type declared."""
    return {
        key: fields[key]
        for key, value in metadata.items()
        if key in fields and typed_value(fields[key], value) is None
    }


def infer_fields(metadatas: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Fields for documents written before fields were declared: each key with the type its values have.

    Text and dates mixed are text; another mix takes the type most values have (the others are not
    filterable until their document is written again). Migration 0008 holds a frozen copy of this.
    """
    seen: dict[str, Counter] = {}
    for metadata in metadatas:
        for key, value in (metadata or {}).items():
            seen.setdefault(key, Counter())[str(infer_type(value))] += 1
    return {
        key: "text" if set(types) == {"text", "date"} else types.most_common(1)[0][0]
        for key, types in sorted(seen.items())
    }


@dataclass
class FieldChange:
    """What an owner's change to the declared fields did."""

    fields: dict[str, str]
    added: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Documents whose chunks' typed copies were written again (no embedding).
    documents_rewritten: int = 0


class MetadataFieldService:
    def __init__(self, *, chunk_service: ChunkService | None = None) -> None:
        self.chunk_service = chunk_service or ChunkService()

    # Writes: a document's metadata is checked against the fields, and declares the keys it adds.

    def declare_for_write(self, *, kb: KnowledgeBase, metadata: Mapping[str, Any]) -> dict[str, str]:
        """The KB's fields once this metadata is written: a new key is declared with its value's type.

        A value of a declared key with another type is refused (InvalidMetadataField), naming the
        KB's fields. Runs in the caller's transaction, if any; the KB row is locked only to declare.
        """
        current = (
            KnowledgeBase.objects.filter(pk=kb.pk).values_list("metadata_fields", flat=True).first() or {}
        )
        self._check_values(kb, metadata, current)
        if all(key in current for key in metadata):
            kb.metadata_fields = current
            return current
        with transaction.atomic():
            current = (
                KnowledgeBase.objects.select_for_update()
                .filter(pk=kb.pk)
                .values_list("metadata_fields", flat=True)
                .first()
                or {}
            )
            self._check_values(kb, metadata, current)
            declared = dict(current)
            for key, value in metadata.items():
                declared.setdefault(key, str(infer_type(value)))
            if len(declared) > MAX_FIELDS:
                raise _refuse(
                    f"{kb.name!r} would declare {len(declared)} metadata fields, more than {MAX_FIELDS}: "
                    f"use keys it declares already ({describe_fields(current)}), or ask an owner to remove some.",
                    fields=current,
                )
            declared = dict(sorted(declared.items()))
            KnowledgeBase.objects.filter(pk=kb.pk).update(metadata_fields=declared)
        kb.metadata_fields = declared
        return declared

    adeclare_for_write = sync_to_async(declare_for_write)

    @staticmethod
    def _check_values(kb: KnowledgeBase, metadata: Mapping[str, Any], fields: Mapping[str, str]) -> None:
        wrong = misfits(metadata, fields)
        if wrong:
            key, field_type = next(iter(wrong.items()))
            raise _refuse(
                f"metadata.{key}: {key!r} is a {field_type} field of {kb.name!r}, so give {TYPE_HINTS[FieldType(field_type)]}, "
                f"not {metadata[key]!r}. Its fields: {describe_fields(fields)}. An owner can change a field's type.",
                field=f"metadata.{key}",
                fields=dict(fields),
            )

    # Owners: declare, retype and remove fields.

    def check_change(self, *, kb: KnowledgeBase, fields: Any) -> FieldChange:
        """What setting the KB's fields to these would do, or InvalidMetadataField saying why it cannot be done.

        A field is removed only when no document carries it, and retyped only when every document's
        value is of the new type: either way no document's metadata is left unfilterable unawares.
        """
        new = clean_fields(fields)
        old = KnowledgeBase.objects.filter(pk=kb.pk).values_list("metadata_fields", flat=True).first() or {}
        change = FieldChange(
            fields=new,
            added=sorted(set(new) - set(old)),
            retyped=sorted(key for key in set(new) & set(old) if new[key] != old[key]),
            removed=sorted(set(old) - set(new)),
        )
        documents = Document.objects.filter(knowledge_base_id=kb.pk).only("title", "metadata")
        if change.removed:
            carrying = list(documents.filter(metadata__has_any_keys=change.removed)[: SHOWN_DOCUMENTS + 1])
            if carrying:
                raise _refuse(
                    f"{', '.join(change.removed)} cannot be removed: documents carry it "
                    f"({_shown(carrying)}). Remove it from their metadata first.",
                )
        checked = change.added + change.retyped
        if checked:
            wrong = [
                (document, key)
                for document in documents.filter(metadata__has_any_keys=checked).iterator()
                for key in misfits({k: document.metadata[k] for k in checked if k in document.metadata}, new)
            ]
            if wrong:
                document, key = wrong[0]
                raise _refuse(
                    f"{key} cannot be {new[key]}: {len(wrong)} document value(s) are not, e.g. "
                    f"{document.title!r} has {key}={document.metadata[key]!r}. Change those documents' metadata first.",
                    field=key,
                )
        return change

    async def aset_fields(
        self, *, kb: KnowledgeBase, fields: Any, actor: AbstractBaseUser | None = None
    ) -> FieldChange:
        """Declare, retype or remove the KB's fields; a retyped field's copies are rewritten in its chunks.

        The chunks change first (their payload, nothing is re-embedded) and the indexes of the new
        types are made, then the row: should Qdrant fail part-way, the old declaration stands and
        setting the fields again finishes the job. An `actor`'s change goes into the KB's history
        (the admin keeps its own).
        """
        change = await sync_to_async(self.check_change)(kb=kb, fields=fields)
        index = active_index(kb)
        await self.chunk_service.collections.ensure_field_indexes(index=index, fields=change.fields)
        rewrite = change.retyped + change.added
        if rewrite:
            change.documents_rewritten = await self.rewrite_typed_copies(
                kb=kb, fields=change.fields, keys=rewrite
            )
        await KnowledgeBase.objects.filter(pk=kb.pk).aupdate(metadata_fields=change.fields)
        kb.metadata_fields = change.fields
        if actor is not None and (change.added or change.retyped or change.removed):
            await sync_to_async(kb_history.record_kb_changed)(actor=actor, kb=kb, fields=["metadata_fields"])
        return change

    async def rewrite_typed_copies(
        self, *, kb: KnowledgeBase, fields: Mapping[str, str], keys: list[str] | None = None
    ) -> int:
        """Write the typed copies of the documents carrying these keys (all keys: None) into their chunks."""
        documents = Document.objects.filter(knowledge_base_id=kb.pk)
        documents = documents.filter(metadata__has_any_keys=keys) if keys else documents.exclude(metadata={})
        rewritten = 0
        async for document_id, tags, metadata in documents.values_list("id", "tags", "metadata").order_by(
            "pk"
        ):
            await self.chunk_service.set_labels(
                kb_id=kb.pk, document_id=document_id, tags=tags, metadata=metadata, fields=fields
            )
            rewritten += 1
        return rewritten

    async def upgrade_chunks(self, *, kb: KnowledgeBase) -> FieldUpgrade:
        """Bring a KB's chunks written by an earlier kbsite in step with its declared fields (migration 0008's).

        Writes each document's typed copies (payload only), makes the declared fields' indexes, and
        drops the `meta.<key>` indexes earlier searches made, which nothing reads any more. Running
        it again does no harm.
        """
        index = active_index(kb)
        await self.chunk_service.collections.ensure_field_indexes(index=index, fields=kb.metadata_fields)
        rewritten = await self.rewrite_typed_copies(kb=kb, fields=kb.metadata_fields)
        dropped = await self.chunk_service.collections.drop_search_made_indexes(index=index)
        return FieldUpgrade(documents=rewritten, dropped_indexes=dropped)

    set_fields = async_to_sync(aset_fields)


@dataclass
class FieldUpgrade:
    documents: int
    #: Indexes earlier searches had made on `meta.<key>`, dropped.
    dropped_indexes: list[str]


def _shown(documents: list[Document]) -> str:
    shown = ", ".join(repr(document.title) for document in documents[:SHOWN_DOCUMENTS])
    return shown + (", …" if len(documents) > SHOWN_DOCUMENTS else "")

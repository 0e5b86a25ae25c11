"""The shared collections in Qdrant: one per embedding model and vector size, every knowledge base a tenant of one."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from qdrant_client import models

from search.cluster import create_collection_arguments
from search.errors import KbsiteError
from search.fields import METADATA_FIELD, Fields, index_schemas
from search.qdrant import LOCAL_MODE_ENGINE, qdrant_service, translate_unreachable, unless_missing

logger = logging.getLogger(__name__)

# Every collection holds these two named vectors.
DENSE_VECTOR = "dense"
KEYWORD_VECTOR = "bm25"

# Collections this site made: `kbsite_<model>_<size>` is the alias, `..._vN` the physical collection.
COLLECTION_PREFIX = "kbsite_"
TENANT_FIELD = "tenant"
# What searches filter on: an integer made from the tenant key and the archived flag (see `search_key`).
SEARCH_KEY_FIELD = "search_key"

# Filters always name these fields, so each gets a payload index. The tenant key is the one every
# query must match: `is_tenant` makes Qdrant store each tenant's points together and plan per tenant.
TENANT_INDEX = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
PAYLOAD_INDEXES: tuple[tuple[str, models.PayloadSchemaType | models.KeywordIndexParams], ...] = (
    (TENANT_FIELD, TENANT_INDEX),
    (SEARCH_KEY_FIELD, models.PayloadSchemaType.INTEGER),
    ("kb_id", models.PayloadSchemaType.KEYWORD),
    ("document_id", models.PayloadSchemaType.KEYWORD),
    ("chunk_index", models.PayloadSchemaType.INTEGER),
    ("archived", models.PayloadSchemaType.BOOL),
    # Tags are always text, so their index is made with the collection, not by whoever filters first.
    ("tags", models.PayloadSchemaType.KEYWORD),
)


# Points a search-key upgrade reads at a time, to learn which tenants still lack their keys.
SEARCH_KEY_PAGE = 256

# Per client (a reconfigured store has a new one) and collection alias: whether every point carries its
# search key, so searches may filter on it alone. Asked once; only an earlier kbsite writes points without.
_keyed_collections: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


class SearchKeysUnwritable(KbsiteError):
    """Chunks without a tenant key, to which no search key can be given."""


@functools.cache
def model_collection_alias(model: str, vector_size: int) -> str:
    """The alias every read and write of a model's knowledge bases goes through.

    Cached: a search across 50 knowledge bases asks it for each of them (a site has a few models).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"{COLLECTION_PREFIX}{slug}_{vector_size}"


@dataclass(frozen=True)
class KbIndex:
    """Where one generation of a knowledge base's points lives: its model's collection and its tenant key.

    A KB's searches read the generation the database calls active; a rebuild writes the next one
    beside it, so the switch is one database update and a half-built index is never searched.
    The tenant key and the two search keys are worked out once, when the index is made: a search
    reads them for every knowledge base it covers (see `kb_index` for the instances searches share).
    """

    kb_id: UUID
    model: str
    vector_size: int
    generation: int = 1
    tenant: str = dataclasses.field(init=False, repr=False, compare=False)
    #: The search keys of the live and of the archived points (see `search_key`).
    live_key: int = dataclasses.field(init=False, repr=False, compare=False)
    archived_key: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tenant = _tenant_key(self.kb_id, self.generation)
        live = _tenant_hash(tenant) * 2
        object.__setattr__(self, "tenant", tenant)
        object.__setattr__(self, "live_key", live)
        object.__setattr__(self, "archived_key", live + 1)

    @property
    def collection(self) -> str:
        return model_collection_alias(self.model, self.vector_size)

    def search_key(self, *, archived: bool) -> int:
        return self.archived_key if archived else self.live_key

    def next_generation(self, *, model: str, vector_size: int) -> KbIndex:
        return KbIndex(kb_id=self.kb_id, model=model, vector_size=vector_size, generation=self.generation + 1)


@functools.lru_cache(maxsize=100_000)
def kb_index(kb_id: UUID, model: str, vector_size: int, generation: int) -> KbIndex:
    """The index of a KB generation, made once per process: a search across 50 KBs asks for 50 of them.

    Making 50 indexes and their keys again was a good part of what a search of 50 knowledge bases
    did more than one of one in Python (README, "Many knowledge bases"). An index never changes,
    so searches may share it.
    """
    return KbIndex(kb_id=kb_id, model=model, vector_size=vector_size, generation=generation)


@functools.lru_cache(maxsize=100_000)
def _tenant_key(kb_id: UUID, generation: int) -> str:
    # Cached: indexes of the same knowledge bases are made over and over (writes, counts, pages),
    # and a UUID's text is dear.
    return f"{kb_id}:{generation}"


def search_key(tenant: str, *, archived: bool) -> int:
    """The integer a search filters on for a tenant's live (or archived) points.

    Searches match it instead of the tenant key and the archived flag: Edge copies a `MatchAny` of
    strings (one allocation a key) each time it plans or checks a condition, and a search across 50
    knowledge bases spent most of its engine time there; a list of integers is one copy, and the
    archive bit makes the `must_not archived` condition unneeded (README, "Many knowledge bases").
    A 62-bit hash, so two tenants may in principle share it: searches keep only the points whose
    tenant key is one they asked for, so such a collision could cost a result, never show another's.
    """
    return _tenant_hash(tenant) * 2 + int(archived)


@functools.lru_cache(maxsize=100_000)
def _tenant_hash(tenant: str) -> int:
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big") >> 2


def search_key_filter(*keys: int) -> models.FieldCondition:
    match = models.MatchValue(value=keys[0]) if len(keys) == 1 else models.MatchAny(any=list(keys))
    return models.FieldCondition(key=SEARCH_KEY_FIELD, match=match)


def without_search_key() -> models.Filter:
    """Points an earlier kbsite wrote, before searches filtered on `search_key`."""
    return models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=SEARCH_KEY_FIELD))])


def tenant_filter(*tenants: str) -> models.FieldCondition:
    match = models.MatchValue(value=tenants[0]) if len(tenants) == 1 else models.MatchAny(any=list(tenants))
    return models.FieldCondition(key=TENANT_FIELD, match=match)


def _archived(value: bool) -> models.FieldCondition:
    return models.FieldCondition(key="archived", match=models.MatchValue(value=value))


def _kb_filter(kb_id: UUID | str) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="kb_id", match=models.MatchValue(value=str(kb_id)))])


def _has_payload_indexes() -> bool:
    # Local mode has no payload indexes (it warns on each); it scans every point anyway.
    return not (qdrant_service.config.is_local and qdrant_service.config.engine == LOCAL_MODE_ENGINE)


class CollectionService:
    """Creates a model's collection (alias onto `..._v1`) on first write, indexes declared fields, deletes tenants.

    A declared metadata field's index (search.fields: `meta_number.year` and the like) is made when a
    chunk carrying it is written or when an owner declares or retypes it, never by a search; the
    index of a typed path has one type in every knowledge base of the collection.
    """

    def __init__(self) -> None:
        # (collection, payload key) pairs known to be indexed, so a write asks Qdrant about each at most once.
        self._field_indexes: set[tuple[str, str]] = set()

    @translate_unreachable
    async def current_collection(self, *, index: KbIndex) -> str | None:
        """The physical collection the index's alias points at, or None before its model's first write."""
        response = await qdrant_service.client.get_aliases()
        return next((a.collection_name for a in response.aliases if a.alias_name == index.collection), None)

    @translate_unreachable
    async def ensure_collection(self, *, index: KbIndex) -> str:
        """The physical collection of the index's model, created (with its alias) if there is none yet.

        Several writers may do this at once: all of them create the same first version and alias,
        each treating "already exists" as done, so they all land in it.
        """
        current = await self.current_collection(index=index)
        if current is not None:
            return current
        first = f"{index.collection}_v1"
        client = qdrant_service.client
        try:
            await self._create_collection(first, index.vector_size)
        except Exception:
            if not await client.collection_exists(collection_name=first):
                raise
        try:
            await client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=first, alias_name=index.collection)
                    )
                ]
            )
        except Exception:
            current = await self.current_collection(index=index)
            if current is None:
                raise
            return current
        return first

    async def ensure_field_indexes(self, *, index: KbIndex, fields: Fields, collection: str | None = None) -> None:
        """Index these declared metadata fields (by their typed paths) where the collection does not yet.

        `collection` is the physical collection behind the index's alias, when the caller knows it.
        An index only speeds filtering up: a failure to make one is logged and the write goes on.
        """
        if not _has_payload_indexes():
            return
        # A collection made before tags were indexed with it gets their index with its next write.
        schemas = {"tags": models.PayloadSchemaType.KEYWORD, **index_schemas(fields)}
        client = qdrant_service.client
        try:
            # Indexes belong to the physical collection (a recreated one under the same alias has none).
            current = collection or await self.current_collection(index=index)
            if current is None:
                return
            wanted = {path: schema for path, schema in schemas.items() if (current, path) not in self._field_indexes}
            if not wanted:
                return
            indexed = (await client.get_collection(collection_name=current)).payload_schema
            for path, schema in wanted.items():
                if path not in indexed:
                    await client.create_payload_index(
                        collection_name=current, field_name=path, field_schema=schema, wait=True
                    )
                self._field_indexes.add((current, path))
        except Exception as exc:
            logger.warning("Could not index %s of %s: %s", ", ".join(schemas), index.collection, exc)

    @translate_unreachable
    async def drop_search_made_indexes(self, *, index: KbIndex) -> list[str]:
        """Drop the indexes earlier kbsite let searches make on `meta.<key>` (filters now read typed paths)."""
        current = await self.current_collection(index=index)
        if current is None or not _has_payload_indexes():
            return []
        client = qdrant_service.client
        indexed = (await client.get_collection(collection_name=current)).payload_schema
        dropped = sorted(path for path in indexed if path.startswith(f"{METADATA_FIELD}."))
        for path in dropped:
            await client.delete_payload_index(collection_name=current, field_name=path, wait=True)
        return dropped

    @translate_unreachable
    async def searches_by_key(self, *, collection: str) -> bool:
        """Whether every point of the collection carries its search key, asked once per process and store.

        A collection written by an earlier kbsite holds points without one, which a search on the key
        would never find: its searches filter on tenant keys and the archived flag (slower, as before)
        until `manage.py upgrade_search_keys` has written them and the server has restarted.
        """
        client = qdrant_service.client
        known = _keyed_collections.setdefault(client, {})
        if collection not in known:
            # A scroll that stops at the first such point: a count would read every point of an unindexed field.
            found = await unless_missing(
                client.scroll(
                    collection_name=collection,
                    scroll_filter=without_search_key(),
                    limit=1,
                    with_payload=False,
                    with_vectors=False,
                ),
                None,
            )
            if found is None:
                return True  # no collection yet: nothing to find either way, and the first write keys its points
            known[collection] = not found[0]
            if found[0]:
                logger.warning(
                    "%s holds chunks written before search keys: its searches take the slower filter until "
                    "`manage.py upgrade_search_keys` has run and the server has restarted.",
                    collection,
                )
        return known[collection]

    @translate_unreachable
    async def count_without_search_key(self, *, collection: str) -> int:
        counted = await unless_missing(
            qdrant_service.client.count(collection_name=collection, count_filter=without_search_key(), exact=True),
            None,
        )
        return int(counted.count) if counted is not None else 0

    @translate_unreachable
    async def write_search_keys(self, *, collection: str, on_progress: Callable[[int, str], None]) -> int:
        """Give every point of the collection (an alias) that lacks one its search key; how many were written.

        A payload update per tenant and archived state, nothing else changes. Points are found by the
        key's absence, so a run stopped part-way is finished by running it again.
        """
        client = qdrant_service.client
        physical = await self._physical_collection(collection)
        if physical is None:
            return 0
        if _has_payload_indexes():
            indexed = (await client.get_collection(collection_name=physical)).payload_schema
            if SEARCH_KEY_FIELD not in indexed:
                await client.create_payload_index(
                    collection_name=physical,
                    field_name=SEARCH_KEY_FIELD,
                    field_schema=models.PayloadSchemaType.INTEGER,
                    wait=True,
                )
        written = 0
        while True:
            points, _ = await client.scroll(
                collection_name=collection,
                scroll_filter=without_search_key(),
                limit=SEARCH_KEY_PAGE,
                with_payload=[TENANT_FIELD, "archived"],
                with_vectors=False,
            )
            if not points:
                return written
            groups = dict.fromkeys(
                ((p.payload or {}).get(TENANT_FIELD), (p.payload or {}).get("archived") is True) for p in points
            )
            progressed = 0
            for tenant, archived in groups:
                if not isinstance(tenant, str):
                    raise SearchKeysUnwritable(
                        f"{collection} holds chunks without a tenant key (point {points[0].id}, for one), which no "
                        "kbsite writes: delete them, or the collection, and run upgrade_search_keys again."
                    )
                missing = models.IsEmptyCondition(is_empty=models.PayloadField(key=SEARCH_KEY_FIELD))
                # A point without the flag is live, as searches have always counted it.
                selection = (
                    models.Filter(must=[tenant_filter(tenant), missing, _archived(True)])
                    if archived
                    else models.Filter(must=[tenant_filter(tenant), missing], must_not=[_archived(True)])
                )
                counted = (await client.count(collection_name=collection, count_filter=selection, exact=True)).count
                await client.set_payload(
                    collection_name=collection,
                    payload={SEARCH_KEY_FIELD: search_key(tenant, archived=archived)},
                    points=models.FilterSelector(filter=selection),
                    wait=True,
                )
                written += counted
                progressed += counted
                on_progress(counted, tenant)
            if not progressed:
                raise SearchKeysUnwritable(f"No search key could be written to point {points[0].id} of {collection}.")

    async def _physical_collection(self, alias: str) -> str | None:
        response = await qdrant_service.client.get_aliases()
        return next((a.collection_name for a in response.aliases if a.alias_name == alias), None)

    async def _create_collection(self, name: str, vector_size: int) -> None:
        # A collection of this name dropped earlier (a store reset) took its indexes with it.
        self._field_indexes = {(collection, path) for collection, path in self._field_indexes if collection != name}
        client = qdrant_service.client
        await client.create_collection(
            collection_name=name,
            **create_collection_arguments(
                qdrant_service.config,
                vectors_config={DENSE_VECTOR: models.VectorParams(size=vector_size, distance=models.Distance.COSINE)},
            ),
            sparse_vectors_config={KEYWORD_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        if not _has_payload_indexes():
            return
        for field, schema in PAYLOAD_INDEXES:
            await client.create_payload_index(collection_name=name, field_name=field, field_schema=schema, wait=True)

    @translate_unreachable
    async def delete_generation(self, *, index: KbIndex) -> None:
        """Delete the points of one generation of one KB: an old one after a switch, or a rebuild given up."""
        await unless_missing(
            qdrant_service.client.delete(
                collection_name=index.collection,
                points_selector=models.FilterSelector(filter=models.Filter(must=[tenant_filter(index.tenant)])),
                wait=True,
            ),
            None,
        )

    @translate_unreachable
    async def model_collections(self) -> list[str]:
        """The aliases of every model collection this site made."""
        response = await qdrant_service.client.get_aliases()
        return sorted(a.alias_name for a in response.aliases if a.alias_name.startswith(COLLECTION_PREFIX))

    @translate_unreachable
    async def holds_points(self, *, kb_id: UUID | str) -> bool:
        """Whether any collection holds a point of the KB, of any generation."""
        for alias in await self.model_collections():
            counted = await unless_missing(
                qdrant_service.client.count(collection_name=alias, count_filter=_kb_filter(kb_id), exact=True), None
            )
            if counted is not None and counted.count:
                return True
        return False

    @translate_unreachable
    async def delete_knowledge_base(self, *, kb_id: UUID | str) -> None:
        """Delete every point of the KB, of every generation, in every model's collection; no other KB's."""
        for alias in await self.model_collections():
            await unless_missing(
                qdrant_service.client.delete(
                    collection_name=alias, points_selector=models.FilterSelector(filter=_kb_filter(kb_id)), wait=True
                ),
                None,
            )

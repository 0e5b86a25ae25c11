"""An AsyncQdrantClient backend that keeps every collection in an in-process Qdrant Edge shard."""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client.async_client_base import AsyncQdrantBase
from qdrant_client.http import models
from qdrant_client.local.payload_value_extractor import value_by_key

from search.edge import convert
from search.files import write_atomically
from search.priority import name_this_thread

MEMORY_LOCATION = ":memory:"

logger = logging.getLogger(__name__)

# Edge has no background optimizer and its optimize() holds the GIL while it runs (seconds for an
# HNSW build): small segments keep every build small. Sizes are in KB of vector data.
INDEXING_THRESHOLD_KB = 3_000
MAX_SEGMENT_SIZE_KB = 6_000
DEFAULT_SEGMENT_NUMBER = 16

LOCK_FILE = ".lock"
ALIASES_FILE = "aliases.json"
COLLECTIONS_DIR = "collections"
SHARD_DIR = "shard"
# Written last when a collection is created and removed first when it is dropped: a collection
# exists exactly when its sidecar does, so a crash in between leaves only an ignorable folder.
SIDECAR_FILE = "collection.json"

# Fewest points a grouped query reads per page: an HNSW search visits about this many candidates
# (its default ef) whatever its limit, so smaller pages would cost as much and need more of them.
GROUPS_PAGE = 100

# Since optimize() holds the GIL, no thread can take it out of a search's way: the store's
# optimizer thread waits for a pause in reads this long before it runs, searchable meanwhile from
# the unindexed segments (a full scan, fast at this size), unless a collection has this many
# points written since its last optimisation, when it runs at once.
OPTIMIZE_AFTER_QUIET_SECONDS = 0.5
MOST_POINTS_AWAITING_OPTIMIZATION = 10_000


class StoreLocked(RuntimeError):
    """Another process (or another EdgeStore in this one) holds the store folder."""


def default_search_threads() -> int:
    """One search thread per two cores (at least one, at most 8): Edge's own default started 8 even on 2 cores.

    The thread that calls Edge holds the GIL until its query returns, so while the pool's threads
    read segments no Python in the process runs. They pay only where cores are left over once the
    event loop and the query workers have theirs: on 2 cores one thread served more searches at
    every knowledge base size measured (README, "Configuration").
    """
    return max(1, min((os.cpu_count() or 1) // 2, 8))


def _edge_config(config: models.CreateCollection, search_threads: int) -> edge.EdgeConfig:
    # The thread count is always given: Edge keeps a shard's last one when none is, so a site could
    # never go back to its default.
    return edge.EdgeConfig(
        vectors=convert.dense_vectors_to_edge(config.vectors or None),
        sparse_vectors=convert.sparse_vectors_to_edge(config.sparse_vectors),
        hnsw_config=convert.hnsw_config_to_edge(config.hnsw_config),
        optimizers=edge.EdgeOptimizersConfig(
            indexing_threshold=INDEXING_THRESHOLD_KB,
            max_segment_size=MAX_SEGMENT_SIZE_KB,
            default_segment_number=DEFAULT_SEGMENT_NUMBER,
        ),
        max_search_threads=search_threads,
    )


def _validate_collection_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"Collection name {name!r} is not allowed in the Edge store")


def _collection_not_found(name: str) -> ValueError:
    # search.qdrant.is_missing_collection recognises exactly this wording.
    return ValueError(f"Collection {name} not found")


def _update_result(operation_id: int) -> models.UpdateResult:
    return models.UpdateResult(operation_id=operation_id, status=models.UpdateStatus.COMPLETED)


class EdgeStore(AsyncQdrantBase):
    """Collections and aliases in a folder, one Edge shard per collection, for AsyncQdrantClient._client.

    The folder is locked for this instance's lifetime; shards open on first use and stay open.
    Every method runs the engine synchronously on the caller's thread, as its calls are short,
    except the optimisation after writes: a thread of the store's own runs it once reads pause
    (see OPTIMIZE_AFTER_QUIET_SECONDS); the collection's status is grey until then, yellow during it.
    """

    def __init__(
        self, path: str | os.PathLike[str] = MEMORY_LOCATION, *, search_threads: int | None = None, **kwargs: Any
    ) -> None:
        """`search_threads`: each shard's pool for its per-segment reads (see QDRANT_EDGE_SEARCH_THREADS)."""
        super().__init__(**kwargs)
        self.search_threads = search_threads or default_search_threads()
        self._is_temporary = str(path) == MEMORY_LOCATION
        self.path = Path(tempfile.mkdtemp(prefix="edge-store-") if self._is_temporary else path)
        self._lock = threading.Lock()
        self._shards: dict[str, edge.EdgeShard] = {}
        self._configs: dict[str, models.CreateCollection] | None = None
        self._aliases: dict[str, str] = {}
        self._operation_ids = itertools.count(1)
        self._closed = False
        # Points written per collection since it was last optimised, and when a read last came.
        self._unoptimized: dict[str, int] = {}
        self._optimizing: str | None = None
        self._last_read = 0.0
        self._optimizer_wakeup = threading.Condition(self._lock)
        self._optimizer: threading.Thread | None = None
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_folder_lock()

    # --- folder, registry and shards ---------------------------------------------------------

    def _acquire_folder_lock(self) -> int:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"The Qdrant store folder {self.path} is held by another process; "
                "stop it or point this one at another folder."
            ) from None
        return fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _collections_dir(self) -> Path:
        return self.path / COLLECTIONS_DIR

    def _collection_dir(self, name: str) -> Path:
        return self._collections_dir / name

    def _registry(self) -> dict[str, models.CreateCollection]:
        """Collection configs by name, read from disk once; call with self._lock held."""
        if self._closed:
            raise RuntimeError(f"The Edge store at {self.path} is closed.")
        if self._configs is None:
            configs = {}
            if self._collections_dir.is_dir():
                for folder in sorted(self._collections_dir.iterdir()):
                    sidecar = folder / SIDECAR_FILE
                    if not folder.name.startswith(".") and sidecar.is_file():
                        configs[folder.name] = models.CreateCollection.model_validate_json(
                            sidecar.read_text()
                        )
            aliases_file = self.path / ALIASES_FILE
            aliases = json.loads(aliases_file.read_text()) if aliases_file.is_file() else {}
            self._aliases = {alias: target for alias, target in aliases.items() if target in configs}
            self._configs = configs
        return self._configs

    def _resolve(self, name: str) -> str:
        """The physical collection behind a collection or alias name; call with self._lock held."""
        configs = self._registry()
        if name in configs:
            return name
        target = self._aliases.get(name)
        if target is None:
            raise _collection_not_found(name)
        return target

    def _shard(self, collection_name: str) -> tuple[models.CreateCollection, edge.EdgeShard]:
        """The config and open shard of a collection or alias, loading the shard on first use."""
        with self._lock:
            name = self._resolve(collection_name)
            config = self._registry()[name]
            shard = self._shards.get(name)
            if shard is None:
                # Loading with the full config applies retuned optimizer constants to existing shards.
                shard = edge.EdgeShard.load(str(self._collection_dir(name) / SHARD_DIR), _edge_config(config, self.search_threads))
                self._shards[name] = shard
            return config, shard

    def _read_shard(self, collection_name: str) -> edge.EdgeShard:
        """The shard to read from, noting the read so that optimisation keeps out of its way."""
        self._last_read = time.monotonic()
        return self._shard(collection_name)[1]

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        write_atomically(self.path / ALIASES_FILE, json.dumps(aliases, indent=1, sort_keys=True))

    def _apply(
        self, collection_name: str, operation: edge.UpdateOperation, *, optimize_after: int | None = None
    ) -> models.UpdateResult:
        """Apply a write; with `optimize_after` (the points it wrote), have the optimizer thread tidy up after it."""
        _, shard = self._shard(collection_name)
        shard.update(operation)
        if optimize_after is not None:
            with self._lock:
                name = self._resolve(collection_name)
                self._unoptimized[name] = self._unoptimized.get(name, 0) + max(1, optimize_after)
                if self._optimizer is None or not self._optimizer.is_alive():
                    self._optimizer = threading.Thread(
                        target=self._optimize_when_quiet, name="kbsite-edge-optimizer", daemon=True
                    )
                    self._optimizer.start()
                self._optimizer_wakeup.notify_all()
        return _update_result(next(self._operation_ids))

    def _optimize_when_quiet(self) -> None:
        name_this_thread("kb-optimizer")
        while True:
            with self._lock:
                name = self._next_to_optimize()
                if name is None:
                    return
                del self._unoptimized[name]  # writes during the optimisation count afresh
                shard, self._optimizing = self._shards.get(name), name
            try:
                if shard is not None:
                    shard.optimize()
            except Exception:
                logger.exception("Optimising the Edge collection %s failed; its next write tries again", name)
            finally:
                with self._lock:
                    self._optimizing = None
                    self._optimizer_wakeup.notify_all()

    def _next_to_optimize(self) -> str | None:
        """Wait for a collection that is due, or return None once the store closes; call with self._lock held."""
        while not self._closed:
            if not self._unoptimized:
                self._optimizer_wakeup.wait()
                continue
            name = max(self._unoptimized, key=self._unoptimized.__getitem__)
            quiet_for = time.monotonic() - self._last_read
            if quiet_for >= OPTIMIZE_AFTER_QUIET_SECONDS or self._unoptimized[name] >= MOST_POINTS_AWAITING_OPTIMIZATION:
                return name
            self._optimizer_wakeup.wait(OPTIMIZE_AFTER_QUIET_SECONDS - quiet_for)
        return None

    def _wait_for_optimizer(self, name: str | None = None) -> None:
        """Wait until the optimizer thread is off `name` (any collection if None); call with self._lock held."""
        while self._optimizing is not None and name in (None, self._optimizing):
            self._optimizer_wakeup.wait()

    # --- collections -------------------------------------------------------------------------

    async def get_collections(self, **kwargs: Any) -> models.CollectionsResponse:
        with self._lock:
            names = list(self._registry())
        return models.CollectionsResponse(
            collections=[models.CollectionDescription(name=name) for name in names]
        )

    async def collection_exists(self, collection_name: str, **kwargs: Any) -> bool:
        with self._lock:
            try:
                self._resolve(collection_name)
            except ValueError:
                return False
            return True

    async def get_collection(self, collection_name: str, **kwargs: Any) -> models.CollectionInfo:
        config, shard = self._shard(collection_name)
        info = shard.info()
        hnsw = config.hnsw_config or models.HnswConfigDiff()
        with self._lock:
            name = self._resolve(collection_name)
            # As the Qdrant server reports a collection whose optimisation is running, or due and waiting.
            if self._optimizing == name:
                status = models.CollectionStatus.YELLOW
            elif name in self._unoptimized:
                status = models.CollectionStatus.GREY
            else:
                status = models.CollectionStatus.GREEN
        return models.CollectionInfo(
            status=status,
            optimizer_status=models.OptimizersStatusOneOf.OK,
            indexed_vectors_count=info.indexed_vectors_count,
            points_count=info.points_count,
            segments_count=info.segments_count,
            config=models.CollectionConfig(
                params=models.CollectionParams(vectors=config.vectors, sparse_vectors=config.sparse_vectors),
                hnsw_config=models.HnswConfig(
                    m=hnsw.m if hnsw.m is not None else 16,
                    ef_construct=hnsw.ef_construct if hnsw.ef_construct is not None else 100,
                    full_scan_threshold=hnsw.full_scan_threshold
                    if hnsw.full_scan_threshold is not None
                    else 10_000,
                ),
                optimizer_config=models.OptimizersConfig(
                    deleted_threshold=0.2,
                    vacuum_min_vector_number=1000,
                    default_segment_number=DEFAULT_SEGMENT_NUMBER,
                    max_segment_size=MAX_SEGMENT_SIZE_KB,
                    indexing_threshold=INDEXING_THRESHOLD_KB,
                    flush_interval_sec=0,
                ),
                metadata=config.metadata,
            ),
            payload_schema={
                field: convert.payload_index_info_from_edge(index)
                for field, index in info.payload_schema.items()
            },
        )

    async def create_collection(
        self,
        collection_name: str,
        vectors_config: models.VectorParams | Mapping[str, models.VectorParams] | None = None,
        sparse_vectors_config: Mapping[str, models.SparseVectorParams] | None = None,
        hnsw_config: models.HnswConfigDiff | None = None,
        metadata: models.Payload | None = None,
        **kwargs: Any,
    ) -> bool:
        _validate_collection_name(collection_name)
        if not vectors_config and not sparse_vectors_config:
            raise ValueError(f"Collection {collection_name} needs at least one dense or sparse vector")
        config = models.CreateCollection(
            vectors=vectors_config,
            sparse_vectors=sparse_vectors_config,
            hnsw_config=hnsw_config,
            metadata=metadata,
        )
        edge_config = _edge_config(config, self.search_threads)
        with self._lock:
            configs = self._registry()
            if collection_name in configs:
                raise ValueError(f"Collection {collection_name} already exists")
            if collection_name in self._aliases:
                raise ValueError(f"Alias {collection_name} already exists")
            folder = self._collection_dir(collection_name)
            # A folder without a sidecar is what a crash during an earlier create leaves.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            shard = edge.EdgeShard.create(str(folder / SHARD_DIR), edge_config)
            write_atomically(folder / SIDECAR_FILE, config.model_dump_json(exclude_none=True))
            self._shards[collection_name] = shard
            configs[collection_name] = config
        return True

    async def delete_collection(self, collection_name: str, **kwargs: Any) -> bool:
        with self._lock:
            configs = self._registry()
            if collection_name not in configs:
                return False
            aliases = {alias: target for alias, target in self._aliases.items() if target != collection_name}
            if aliases != self._aliases:
                self._save_aliases(aliases)
                self._aliases = aliases
            del configs[collection_name]
            self._unoptimized.pop(collection_name, None)
            self._wait_for_optimizer(collection_name)
            folder = self._collection_dir(collection_name)
            (folder / SIDECAR_FILE).unlink(missing_ok=True)
            shard = self._shards.pop(collection_name, None)
            if shard is not None:
                shard.close()
            trash = self._collections_dir / f".deleted-{collection_name}-{uuid.uuid4().hex}"
            folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # --- aliases -----------------------------------------------------------------------------

    async def update_collection_aliases(
        self, change_aliases_operations: Sequence[models.AliasOperations], **kwargs: Any
    ) -> bool:
        with self._lock:
            configs = self._registry()
            aliases = dict(self._aliases)
            for operation in change_aliases_operations:
                if isinstance(operation, models.CreateAliasOperation):
                    target = operation.create_alias.collection_name
                    alias = operation.create_alias.alias_name
                    if target not in configs:
                        raise _collection_not_found(target)
                    if alias in configs:
                        raise ValueError(f"Collection {alias} already exists")
                    aliases[alias] = target
                elif isinstance(operation, models.DeleteAliasOperation):
                    aliases.pop(operation.delete_alias.alias_name, None)
                elif isinstance(operation, models.RenameAliasOperation):
                    old, new = operation.rename_alias.old_alias_name, operation.rename_alias.new_alias_name
                    if old not in aliases:
                        raise ValueError(f"Alias {old} does not exist")
                    if new in configs:
                        raise ValueError(f"Collection {new} already exists")
                    aliases[new] = aliases.pop(old)
                else:
                    raise NotImplementedError(f"Alias operation {type(operation).__name__} is not supported")
            self._save_aliases(aliases)
            self._aliases = aliases
        return True

    async def get_aliases(self, **kwargs: Any) -> models.CollectionsAliasesResponse:
        with self._lock:
            self._registry()
            items = sorted(self._aliases.items())
        return models.CollectionsAliasesResponse(
            aliases=[
                models.AliasDescription(alias_name=alias, collection_name=target) for alias, target in items
            ]
        )

    # --- points: writes ----------------------------------------------------------------------

    async def upsert(
        self,
        collection_name: str,
        points: models.Batch | Sequence[models.PointStruct],
        update_filter: models.Filter | None = None,
        update_mode: models.UpdateMode | None = None,
        **kwargs: Any,
    ) -> models.UpdateResult:
        mode = None
        if update_mode is not None:
            mode = {
                models.UpdateMode.UPSERT: edge.UpdateMode.Upsert,
                models.UpdateMode.INSERT_ONLY: edge.UpdateMode.InsertOnly,
                models.UpdateMode.UPDATE_ONLY: edge.UpdateMode.UpdateOnly,
            }[models.UpdateMode(update_mode)]
        operation = edge.UpdateOperation.upsert_points(
            convert.points_to_edge(points), condition=convert.filter_to_edge(update_filter), update_mode=mode
        )
        written = len(points.ids) if isinstance(points, models.Batch) else len(points)
        return self._apply(collection_name, operation, optimize_after=written)

    async def delete(
        self, collection_name: str, points_selector: models.PointsSelector | Sequence[Any], **kwargs: Any
    ) -> models.UpdateResult:
        ids, filter_ = _selection(points_selector)
        if ids is not None:
            operation = edge.UpdateOperation.delete_points(ids)
        else:
            operation = edge.UpdateOperation.delete_points_by_filter(filter_)
        return self._apply(collection_name, operation, optimize_after=len(ids) if ids is not None else 1)

    async def set_payload(
        self,
        collection_name: str,
        payload: models.Payload,
        points: models.PointsSelector | models.Filter | Sequence[Any],
        key: str | None = None,
        **kwargs: Any,
    ) -> models.UpdateResult:
        ids, filter_ = _selection(points)
        if ids is not None:
            operation = edge.UpdateOperation.set_payload(ids, dict(payload), key=key)
        else:
            operation = edge.UpdateOperation.set_payload_by_filter(filter_, dict(payload), key=key)
        return self._apply(collection_name, operation)

    async def create_payload_index(
        self,
        collection_name: str,
        field_name: str,
        field_schema: models.PayloadFieldSchema | None = None,
        field_type: models.PayloadSchemaType | None = None,
        **kwargs: Any,
    ) -> models.UpdateResult:
        schema = field_schema if field_schema is not None else field_type
        if schema is None:
            raise ValueError(f"Payload index on {field_name} needs a field_schema")
        operation = edge.UpdateOperation.create_field_index(
            field_name, convert.payload_schema_to_edge(schema)
        )
        return self._apply(collection_name, operation)

    async def delete_payload_index(self, collection_name: str, field_name: str, **kwargs: Any) -> models.UpdateResult:
        return self._apply(collection_name, edge.UpdateOperation.delete_field_index(field_name))

    # --- points: reads -----------------------------------------------------------------------

    async def query_points(
        self,
        collection_name: str,
        query: Any = None,
        using: str | None = None,
        prefetch: models.Prefetch | list[models.Prefetch] | None = None,
        query_filter: models.Filter | None = None,
        search_params: models.SearchParams | None = None,
        limit: int = 10,
        offset: int | None = None,
        with_payload: models.WithPayloadInterface = True,
        with_vectors: models.WithVector = False,
        score_threshold: float | None = None,
        lookup_from: models.LookupLocation | None = None,
        **kwargs: Any,
    ) -> models.QueryResponse:
        request = convert.query_request_to_edge(
            query=query,
            using=using,
            prefetch=prefetch,
            query_filter=query_filter,
            search_params=search_params,
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vectors=with_vectors,
            score_threshold=score_threshold,
            lookup_from=lookup_from,
        )
        shard = self._read_shard(collection_name)
        return models.QueryResponse.model_construct(points=[convert.scored_point_from_edge(p) for p in shard.query(request)])

    async def query_batch_points(
        self, collection_name: str, requests: Sequence[models.QueryRequest], **kwargs: Any
    ) -> list[models.QueryResponse]:
        batch = [
            convert.query_request_to_edge(
                query=request.query,
                using=request.using,
                prefetch=request.prefetch,
                query_filter=request.filter,
                search_params=request.params,
                limit=request.limit if request.limit is not None else 10,
                offset=request.offset,
                # The server's QueryRequest defaults: no payload, no vectors.
                with_payload=request.with_payload,
                with_vectors=request.with_vector,
                score_threshold=request.score_threshold,
                lookup_from=request.lookup_from,
            )
            for request in requests
        ]
        shard = self._read_shard(collection_name)
        results = shard.query_batch(edge.QueryBatchRequest(batch))
        return [
            models.QueryResponse.model_construct(points=[convert.scored_point_from_edge(p) for p in points])
            for points in results
        ]

    async def query_points_groups(
        self,
        collection_name: str,
        group_by: str,
        query: Any = None,
        using: str | None = None,
        prefetch: models.Prefetch | list[models.Prefetch] | None = None,
        query_filter: models.Filter | None = None,
        search_params: models.SearchParams | None = None,
        limit: int = 10,
        group_size: int = 3,
        with_payload: models.WithPayloadInterface = True,
        with_vectors: models.WithVector = False,
        score_threshold: float | None = None,
        with_lookup: models.WithLookupInterface | None = None,
        lookup_from: models.LookupLocation | None = None,
        **kwargs: Any,
    ) -> models.GroupsResult:
        """The best `limit` groups of the query's points by the payload value at `group_by`, each with its
        best `group_size` points, in the query's order (a group ranks by its best point).

        Edge has no grouping query, so this groups the query's ranking itself, carrying only the
        group key; one retrieve then brings the chosen points' payload and vectors. A point joins
        each group its value names (a list names several); one whose value is missing or not a
        string or integer joins none. Like the server, prefetch limits are multiplied by `limit`.
        """
        if with_lookup is not None:
            raise NotImplementedError("with_lookup is not supported by the Edge store")
        if limit < 1 or group_size < 1:
            raise ValueError(f"limit ({limit}) and group_size ({group_size}) must be 1 or larger.")
        prefetch = _widened_prefetches(prefetch, limit)
        page = max(limit * group_size, GROUPS_PAGE)
        groups: dict[models.GroupId, list[models.ScoredPoint]] = {}
        seen: list[models.ExtendedPointId] = []
        while True:
            if prefetch:
                # A fusion's scores depend on every point its prefetches bring, so none may be left
                # out: its whole ranking, at most what the prefetches bring, is read at once.
                depth, page_filter = sum(item.limit for item in prefetch), query_filter
            else:
                # A plain query's scores do not depend on each other: each page leaves out the points
                # seen and those only full groups (or, once `limit` groups are known, other groups)
                # would take. Scores fall from page to page, so the groups fill in ranking order.
                depth = page
                page_filter = _remaining_filter(query_filter, group_by, groups, seen, limit, group_size)
            response = await self.query_points(
                collection_name,
                query=query,
                using=using,
                prefetch=prefetch,
                query_filter=page_filter,
                search_params=search_params,
                limit=depth,
                with_payload=[group_by.split("[", 1)[0].split(".", 1)[0]],
                score_threshold=score_threshold,
                lookup_from=lookup_from,
            )
            _add_to_groups(groups, response.points, group_by, limit, group_size)
            seen.extend(point.id for point in response.points)
            filled = len(groups) == limit and all(len(hits) == group_size for hits in groups.values())
            if prefetch or filled or len(response.points) < depth:
                break
        if with_payload or with_vectors:
            groups = await self._hydrate_groups(collection_name, groups, with_payload, with_vectors)
        else:
            groups = {
                key: [hit.model_copy(update={"payload": None}) for hit in hits]
                for key, hits in groups.items()
            }
        return models.GroupsResult(
            groups=[models.PointGroup(id=key, hits=hits) for key, hits in groups.items()]
        )

    async def _hydrate_groups(
        self,
        collection_name: str,
        groups: dict[models.GroupId, list[models.ScoredPoint]],
        with_payload: models.WithPayloadInterface,
        with_vectors: models.WithVector,
    ) -> dict[models.GroupId, list[models.ScoredPoint]]:
        ids = list(dict.fromkeys(hit.id for hits in groups.values() for hit in hits))
        records = {
            record.id: record
            for record in await self.retrieve(
                collection_name, ids, with_payload=with_payload, with_vectors=with_vectors
            )
        }
        hydrated = {}
        for key, hits in groups.items():
            # A point deleted since the ranking was read is left out, as a search a moment later would.
            kept = [
                hit.model_copy(update={"payload": records[hit.id].payload, "vector": records[hit.id].vector})
                for hit in hits
                if hit.id in records
            ]
            if kept:
                hydrated[key] = kept
        return hydrated

    async def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        order_by: str | models.OrderBy | None = None,
        offset: models.ExtendedPointId | None = None,
        with_payload: models.WithPayloadInterface = True,
        with_vectors: models.WithVector = False,
        **kwargs: Any,
    ) -> tuple[list[models.Record], models.ExtendedPointId | None]:
        if limit < 1:
            raise ValueError(f"limit value {limit} is invalid. Must be 1 or larger.")
        if order_by is not None and offset is not None:
            raise ValueError("Offset is not supported in conjunction with `order_by` scroll parameter")
        request = edge.ScrollRequest(
            offset=convert.point_id_to_edge(offset) if offset is not None else None,
            limit=limit,
            filter=convert.filter_to_edge(scroll_filter),
            with_payload=convert.with_payload_to_edge(with_payload),
            with_vector=convert.with_vectors_to_edge(with_vectors),
            order_by=convert.order_by_to_edge(order_by) if order_by is not None else None,
        )
        shard = self._read_shard(collection_name)
        records, next_offset = shard.scroll(request)
        if order_by is not None:
            # Like the server: paging by value is done with start_from, never with an offset.
            next_offset = None
        return (
            [convert.record_from_edge(record) for record in records],
            convert.point_id_from_edge(next_offset) if next_offset is not None else None,
        )

    async def count(
        self,
        collection_name: str,
        count_filter: models.Filter | None = None,
        exact: bool = True,
        **kwargs: Any,
    ) -> models.CountResult:
        shard = self._read_shard(collection_name)
        return models.CountResult(
            count=shard.count(edge.CountRequest(exact=exact, filter=convert.filter_to_edge(count_filter)))
        )

    async def retrieve(
        self,
        collection_name: str,
        ids: Sequence[models.ExtendedPointId],
        with_payload: models.WithPayloadInterface = True,
        with_vectors: models.WithVector = False,
        **kwargs: Any,
    ) -> list[models.Record]:
        shard = self._read_shard(collection_name)
        records = shard.retrieve(
            convert.point_ids_to_edge(ids),
            convert.with_payload_to_edge(with_payload),
            convert.with_vectors_to_edge(with_vectors),
        )
        return [convert.record_from_edge(record) for record in records]

    # --- store -------------------------------------------------------------------------------

    async def close(self, **kwargs: Any) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Close every shard and release the folder; safe to call twice and from sync code."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._optimizer_wakeup.notify_all()
            self._wait_for_optimizer()
            shards, self._shards = dict(self._shards), {}
            due, self._unoptimized = [shards[name] for name in self._unoptimized if name in shards], {}
            try:
                # Optimisations still due run now: the next process to open the store starts tidy.
                for shard in due:
                    shard.optimize()
            except Exception:
                logger.exception("Optimising the Edge store before closing it failed; its next write tries again")
            try:
                for shard in shards.values():
                    shard.close()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                if self._is_temporary:
                    shutil.rmtree(self.path, ignore_errors=True)


def _widened_prefetches(
    prefetch: models.Prefetch | Sequence[models.Prefetch] | None, factor: int
) -> list[models.Prefetch] | None:
    if prefetch is None:
        return None
    if isinstance(prefetch, models.Prefetch):
        prefetch = [prefetch]
    return [
        item.model_copy(
            update={
                "limit": (item.limit if item.limit is not None else 10) * factor,
                "prefetch": _widened_prefetches(item.prefetch, factor),
            }
        )
        for item in prefetch
    ]


def _add_to_groups(
    groups: dict[models.GroupId, list[models.ScoredPoint]],
    points: Sequence[models.ScoredPoint],
    group_by: str,
    limit: int,
    group_size: int,
) -> None:
    """Walk ranked points into the first `limit` groups they form, each up to `group_size` points."""
    for point in points:
        values = value_by_key(point.payload or {}, group_by)
        # bool is an int to Python but not a group id to Qdrant, so types are compared exactly.
        if not values or any(type(value) not in (str, int) for value in values):
            continue
        for value in dict.fromkeys(values):
            hits = groups.get(value)
            if hits is None:
                if len(groups) == limit:
                    continue
                hits = groups[value] = []
            if len(hits) < group_size:
                hits.append(point)


def _remaining_filter(
    query_filter: models.Filter | None,
    group_by: str,
    groups: dict[models.GroupId, list[models.ScoredPoint]],
    seen: list[models.ExtendedPointId],
    limit: int,
    group_size: int,
) -> models.Filter | None:
    """The query's filter, leaving out points seen and points that could join no group still filling."""
    if not seen:
        return query_filter
    must: list[models.Condition] = [query_filter] if query_filter is not None else []
    if len(groups) == limit:
        unfilled = [key for key, hits in groups.items() if len(hits) < group_size]
        must.append(models.Filter(should=[_group_condition(group_by, keys) for keys in _by_type(unfilled)]))
    else:
        full = _by_type([key for key, hits in groups.items() if len(hits) == group_size])
        # A point with several values stays while one of them is not a full group; across value
        # types that cannot be said in one condition, so mixed keys only leave out points seen.
        if len(full) == 1:
            must.append(models.FieldCondition(key=group_by, match=models.MatchExcept(**{"except": full[0]})))
    return models.Filter(must=must or None, must_not=[models.HasIdCondition(has_id=seen)])


def _by_type(keys: list[models.GroupId]) -> list[list[Any]]:
    """Group keys split into strings and integers: a match condition takes one type."""
    strings, integers = [k for k in keys if isinstance(k, str)], [k for k in keys if isinstance(k, int)]
    return [same for same in (strings, integers) if same]


def _group_condition(group_by: str, keys: list[Any]) -> models.FieldCondition:
    return models.FieldCondition(key=group_by, match=models.MatchAny(any=keys))


def _selection(points: Any) -> tuple[list[int | str] | None, edge.Filter | None]:
    """Point ids or a filter from any form the client accepts for `points` / `points_selector`."""
    if isinstance(points, models.FilterSelector):
        return None, convert.filter_to_edge(points.filter)
    if isinstance(points, models.Filter):
        return None, convert.filter_to_edge(points)
    if isinstance(points, models.PointIdsList):
        return convert.point_ids_to_edge(points.points), None
    if isinstance(points, Sequence) and not isinstance(points, str):
        return convert.point_ids_to_edge(points), None
    raise NotImplementedError(f"Points selector {type(points).__name__} is not supported by the Edge store")

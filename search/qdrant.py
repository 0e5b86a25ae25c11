"""Access to Qdrant through AsyncQdrantClient: one client per event loop on a server, one per process embedded.

Embedded, the client's backend is Qdrant Edge (Qdrant's Rust engine in process, `search.edge.EdgeStore`);
qdrant-client's pure-Python local mode stays selectable (`QDRANT_EMBEDDED_ENGINE=local`) for comparisons.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc
from django.conf import settings
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from search.errors import SearchError, VectorStoreUnavailable
from search.retries import RetryPolicy, with_retries

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")

MEMORY_LOCATION = ":memory:"
EDGE_ENGINE = "edge"
LOCAL_MODE_ENGINE = "local"
EMBEDDED_ENGINES = (EDGE_ENGINE, LOCAL_MODE_ENGINE)


@dataclass(frozen=True)
class QdrantConfig:
    """Where Qdrant is and how to talk to it; built once from settings.QDRANT."""

    url: str | None = None
    path: str = MEMORY_LOCATION
    api_key: str | None = None
    grpc_port: int = 6334
    prefer_grpc: bool = True
    timeout: float = 10.0
    engine: str = EDGE_ENGINE
    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    on_disk_vectors: bool = False
    on_disk_payload: bool = False
    edge_search_threads: int | None = None  # None: one per two cores, at least 1, at most 8
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def from_settings(cls) -> QdrantConfig:
        conf = settings.QDRANT
        return cls(
            url=conf.get("URL") or None,
            path=str(conf.get("PATH") or MEMORY_LOCATION),
            api_key=conf.get("API_KEY") or None,
            grpc_port=int(conf.get("GRPC_PORT", 6334)),
            prefer_grpc=bool(conf.get("PREFER_GRPC", True)),
            timeout=float(conf.get("TIMEOUT", 10.0)),
            engine=str(conf.get("EMBEDDED_ENGINE") or EDGE_ENGINE),
            shard_number=int(conf.get("SHARD_NUMBER", 1)),
            replication_factor=int(conf.get("REPLICATION_FACTOR", 1)),
            write_consistency_factor=int(conf.get("WRITE_CONSISTENCY_FACTOR", 1)),
            on_disk_vectors=bool(conf.get("ON_DISK_VECTORS", False)),
            on_disk_payload=bool(conf.get("ON_DISK_PAYLOAD", False)),
            edge_search_threads=int(conf.get("EDGE_SEARCH_THREADS") or 0) or None,
            retry=RetryPolicy(
                retries=int(conf.get("RETRIES", 2)), backoff_seconds=float(conf.get("RETRY_BACKOFF", 0.2))
            ),
        )

    @property
    def is_local(self) -> bool:
        return self.url is None

    def describe(self) -> str:
        if self.is_local:
            where = "in memory" if self.path == MEMORY_LOCATION else f"at {self.path}"
            engine = "Qdrant Edge" if self.engine == EDGE_ENGINE else "qdrant-client local mode"
            return f"embedded Qdrant ({engine}) {where}"
        return f"Qdrant server at {self.url}"


def _run_without_suspending(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine of the local store to its end on this thread.

    Local mode is synchronous code behind `async def`: its coroutines finish without ever
    suspending, which is what lets us hold a thread lock for exactly the call's duration.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("The embedded Qdrant store suspended a call; it cannot be serialised safely.")


class _SerialisedLocalStore:
    """Stands in for AsyncQdrantLocal inside the client and lets one thread at a time use it.

    The embedded store keeps plain dicts and numpy arrays and is not thread-safe, yet Django
    reaches it from several threads (the ASGI loop, runserver's per-request loops, the in-process
    ingestion worker). The calls stay awaitable and run on the caller's own thread: no executor.
    """

    def __init__(self, local: Any) -> None:
        self._local = local
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._local, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def serialised(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return _run_without_suspending(attribute(*args, **kwargs))

        return serialised

    def close_now(self) -> None:
        with self._lock:
            _run_without_suspending(self._local.close())


def without_inference_scan(client: AsyncQdrantClient) -> AsyncQdrantClient:
    """The client, told not to search every request for `models.Document`s and images to embed.

    kbsite embeds its own vectors and never sends inference objects. Unless `cloud_inference` is on,
    qdrant-client walks each request's models looking for them before every query and upsert; with
    it on, such an object would go to the server as it is (where a Qdrant Cloud cluster would embed
    it), which kbsite never asks for. Profiled on 100 concurrent hybrid searches, that walk took a
    quarter to a third of the Python time of the engine call, all of it on the event loop.
    """
    client.cloud_inference = True
    return client


class QdrantService:
    """Hands out the AsyncQdrantClient to use from the current context and closes them all.

    Server: gRPC channels are bound to the event loop of their first call, so each running loop
    gets its own client, closed when that loop shuts down. Embedded: one client per process,
    because only one client may open the store's folder.
    """

    def __init__(self, config: QdrantConfig | None = None) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._local_client: AsyncQdrantClient | None = None
        self._loop_clients: dict[asyncio.AbstractEventLoop, AsyncQdrantClient] = {}
        self._closers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    def configure(self, config: QdrantConfig) -> None:
        """Point the service at another Qdrant; clients already built are closed first."""
        self.close()
        self._config = config

    @property
    def config(self) -> QdrantConfig:
        if self._config is None:
            self._config = QdrantConfig.from_settings()
        return self._config

    @property
    def client(self) -> AsyncQdrantClient:
        """The client for the current context.

        Embedded: the process's one client. Server, from async code: the running loop's client,
        closed when the loop shuts down. Server, from sync code with no running loop: a new client
        that is not cached; the caller owns it and closes it (`await client.close()`) in the loop
        that used it, since its gRPC channel binds to that loop.
        """
        if self.config.is_local:
            return self._local_store_client()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._build_server_client()
        return self._client_for_running_loop()

    def _local_store_client(self) -> AsyncQdrantClient:
        client = self._local_client
        if client is not None:
            return client
        with self._lock:
            if self._local_client is None:
                self._local_client = self._open_local_store()
                atexit.register(self.close)
            return self._local_client

    def _open_local_store(self) -> AsyncQdrantClient:
        config = self.config
        if config.path != MEMORY_LOCATION:
            Path(config.path).mkdir(parents=True, exist_ok=True)
        if config.engine == LOCAL_MODE_ENGINE:
            client = self._open_local_mode(config)
        else:
            client = self._open_edge(config)
        logger.debug("Opened %s", config.describe())
        return client

    def _open_edge(self, config: QdrantConfig) -> AsyncQdrantClient:
        from search.edge import EdgeStore, StoreLocked

        if config.path != MEMORY_LOCATION and is_local_mode_store(config.path):
            raise VectorStoreUnavailable(
                f"The embedded store at {config.path} was written by an earlier kbsite (qdrant-client's local "
                "mode). Run `manage.py upgrade_store` once: it moves that folder aside and rebuilds every "
                "knowledge base from the documents' stored text into Qdrant Edge."
            )
        try:
            store = EdgeStore(config.path, search_threads=config.edge_search_threads)
        except StoreLocked as exc:
            raise self._held_elsewhere(config) from exc
        # AsyncQdrantClient has no public way to plug in a backend: its backend is the `_client`
        # attribute, which tests/unit/test_edge_hook.py checks on every qdrant-client upgrade.
        client = AsyncQdrantClient(location=MEMORY_LOCATION)
        client._client = store
        return without_inference_scan(client)

    def _open_local_mode(self, config: QdrantConfig) -> AsyncQdrantClient:
        if config.path == MEMORY_LOCATION:
            client = AsyncQdrantClient(location=MEMORY_LOCATION, force_disable_check_same_thread=True)
        else:
            try:
                client = AsyncQdrantClient(path=config.path, force_disable_check_same_thread=True)
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise self._held_elsewhere(config) from exc
        client._client = _SerialisedLocalStore(client._client)
        return without_inference_scan(client)

    @staticmethod
    def _held_elsewhere(config: QdrantConfig) -> VectorStoreUnavailable:
        return VectorStoreUnavailable(
            f"The embedded Qdrant store at {config.path} is held by another process "
            "(most likely the running kbsite server). Stop that process, or queue the work "
            "for it (ingest --enqueue), or run a Qdrant server and set QDRANT_URL."
        )

    def _client_for_running_loop(self) -> AsyncQdrantClient:
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is not None:
            return client
        with self._lock:
            for stale in [other for other in self._loop_clients if other.is_closed()]:
                # A loop closed without cancelling its tasks: its channels died with it.
                self._loop_clients.pop(stale, None)
                self._closers.pop(stale, None)
            client = self._build_server_client()
            self._loop_clients[loop] = client
            # asyncio.run, asgiref and pytest-asyncio cancel the tasks left on a loop before they
            # close it; this one answers by closing the loop's client while the loop still runs.
            self._closers[loop] = loop.create_task(self._close_when_cancelled(loop, client))
            return client

    def _build_server_client(self) -> AsyncQdrantClient:
        config = self.config
        client = AsyncQdrantClient(
            url=config.url,
            api_key=config.api_key,
            grpc_port=config.grpc_port,
            prefer_grpc=config.prefer_grpc,
            timeout=int(config.timeout),
            # The version check is an HTTP round trip per client; `check_qdrant` runs it once.
            check_compatibility=False,
        )
        return with_retries(without_inference_scan(client), config.retry)

    async def _close_when_cancelled(self, loop: asyncio.AbstractEventLoop, client: AsyncQdrantClient) -> None:
        try:
            await loop.create_future()
        finally:
            with self._lock:
                if self._loop_clients.get(loop) is client:
                    del self._loop_clients[loop]
                self._closers.pop(loop, None)
            await client.close()

    async def check_available(self) -> None:
        """Raise VectorStoreUnavailable, saying what to do, unless Qdrant answers a cheap call."""
        try:
            await self.client.get_collections()
        except VectorStoreUnavailable:
            raise
        except Exception as exc:
            raise as_unavailable(exc, self.config) or VectorStoreUnavailable(
                f"{self.config.describe()} failed: {exc}"
            ) from exc

    async def aclose(self) -> None:
        """Close the client of the running loop (server) or the process's store (embedded)."""
        if self.config.is_local:
            self.close()
            return
        loop = asyncio.get_running_loop()
        closer = self._closers.get(loop)
        if closer is not None:
            closer.cancel()
            await asyncio.gather(closer, return_exceptions=True)

    def close(self) -> None:
        """Release the embedded store; forget server clients whose loops are gone."""
        with self._lock:
            local, self._local_client = self._local_client, None
            for loop in [loop for loop in self._loop_clients if loop.is_closed()]:
                self._loop_clients.pop(loop, None)
                self._closers.pop(loop, None)
        if local is not None:
            backend = local._client
            if isinstance(backend, _SerialisedLocalStore):
                backend.close_now()
            else:
                _run_without_suspending(backend.close())


qdrant_service = QdrantService()


def is_local_mode_store(path: str | Path) -> bool:
    """Whether `path` holds a store written by qdrant-client's local mode (kbsite before Qdrant Edge)."""
    folder = Path(path)
    return (folder / "meta.json").is_file() and (folder / "collection").is_dir()


def is_missing_collection(exc: BaseException) -> bool:
    """Whether a Qdrant call failed because the collection (or alias) does not exist, in any mode."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() == grpc.StatusCode.NOT_FOUND
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    return isinstance(exc, ValueError) and str(exc).startswith("Collection ") and "not found" in str(exc)


async def unless_missing(call: Awaitable[R], default: D) -> R | D:
    """The call's answer, or `default` when the collection it names does not exist (yet or any more)."""
    try:
        return await call
    except Exception as exc:
        if is_missing_collection(exc):
            return default
        raise


def as_unavailable(exc: BaseException, config: QdrantConfig) -> VectorStoreUnavailable | None:
    """The error to raise when `exc` means Qdrant could not be reached in time, else None."""
    unreachable = (
        isinstance(exc, grpc.RpcError)
        and hasattr(exc, "code")
        and exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    ) or isinstance(exc, ResponseHandlingException)
    if not unreachable:
        return None
    return VectorStoreUnavailable(
        f"{config.describe()} did not answer ({type(exc).__name__}). Check that it is running "
        "and that QDRANT_URL, QDRANT_GRPC_PORT and QDRANT_API_KEY point at it; raise QDRANT_TIMEOUT "
        "if it is only slow."
    )


def translate_unreachable(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate a service method so "Qdrant did not answer" surfaces as VectorStoreUnavailable."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except SearchError:
            raise
        except Exception as exc:
            unavailable = as_unavailable(exc, qdrant_service.config)
            if unavailable is None:
                raise
            raise unavailable from exc

    return wrapper

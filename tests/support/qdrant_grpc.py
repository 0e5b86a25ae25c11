"""A loopback Qdrant gRPC server whose collections live in Qdrant Edge, run as a process of its own.

Tests, drills and benchmarks of the server path talk to it over Qdrant's real gRPC protocol, and
filters, fusion, grouping and payload indexes are answered by Qdrant's engine (`search.edge.EdgeStore`).
`LoopbackQdrantServer` starts and stops that process (`python -m tests.support.qdrant_grpc`) and
reaches its request counts and injected failures through a small control service on the same port;
`LoopbackEngine` is what runs inside it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent import futures
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc, grpc_field_type_to_payload_schema
from qdrant_client.http import models as rest

from search.edge import EdgeStore

_Servicer = TypeVar("_Servicer", bound="_EngineServicer")

SERVER_TITLE = "qdrant - vector search engine"
# The engine behind the loopback server is Qdrant Edge: its package version stands for the server version.
ENGINE_VERSION = metadata.version("qdrant-edge-py")
CONTROL_SERVICE = "kbsite.LoopbackControl"
# Time for the child to import Edge and gRPC and bind its port, on a busy machine.
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30

# The store reports a missing collection or alias with these messages; the server answers NOT_FOUND.
_NOT_FOUND = (
    (re.compile(r"Collection (\S+) not found"), "Not found: Collection `{}` doesn't exist!"),
    (re.compile(r"Alias (\S+) does not exist"), "Not found: Alias `{}` doesn't exist!"),
)


def _status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    # Request errors: the store's ValueErrors (pydantic's ValidationError is one too) and Edge's own
    # errors, which it raises as bare Exceptions ("Vector dimension error: ...") where a server says
    # "Wrong input". Anything else is a fault of this server.
    if not isinstance(error, ValueError | TypeError) and type(error) is not Exception:
        return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
    for pattern, message in _NOT_FOUND:
        if match := pattern.search(str(error)):
            return grpc.StatusCode.NOT_FOUND, message.format(match.group(1))
    return grpc.StatusCode.INVALID_ARGUMENT, str(error)


def _optional(message: Message, field: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
    """The converted value of an optional field, or the default when the client left it unset."""
    return convert(getattr(message, field)) if message.HasField(field) else default


def _rpc(
    handler: Callable[[_Servicer, Any], Coroutine[Any, Any, Message]],
) -> Callable[[_Servicer, Any, grpc.ServicerContext], Message]:
    """Route an RPC implementation through the host's dispatch, under its "Service.Method" name."""

    @functools.wraps(handler)
    def serve(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Message:
        method = f"{self.service}.{handler.__name__}"
        return self.host.dispatch(method, lambda: handler(self, request), context)

    return serve


def _update_response(result: rest.UpdateResult) -> pb.PointsOperationResponse:
    return pb.PointsOperationResponse(result=RestToGrpc.convert_update_result(result))


class _EngineServicer:
    service: str

    def __init__(self, host: LoopbackQdrantServer) -> None:
        self.host = host
        self.store = host.store


class _Qdrant(_EngineServicer, pb.QdrantServicer):
    service = "Qdrant"

    @_rpc
    async def HealthCheck(self, request: pb.HealthCheckRequest) -> pb.HealthCheckReply:
        # a server's title, with the engine's version: clients check the title, not the version
        return pb.HealthCheckReply(title=SERVER_TITLE, version=ENGINE_VERSION)


class _Collections(_EngineServicer, pb.CollectionsServicer):
    service = "Collections"

    @_rpc
    async def Get(self, request: pb.GetCollectionInfoRequest) -> pb.GetCollectionInfoResponse:
        info = await self.store.get_collection(request.collection_name)
        # Edge keeps its WAL to itself; answer with a server's default, and the cluster settings the
        # collection was created with, as a server reports them.
        info.config.wal_config = rest.WalConfig(wal_capacity_mb=32, wal_segments_ahead=0)
        recorded = self.host.creations.get(request.collection_name, {})
        for field in ("shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload"):
            if field in recorded:
                setattr(info.config.params, field, recorded[field])
        return pb.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(info))

    @_rpc
    async def List(self, request: pb.ListCollectionsRequest) -> pb.ListCollectionsResponse:
        descriptions = (await self.store.get_collections()).collections
        return pb.ListCollectionsResponse(
            collections=[RestToGrpc.convert_collection_description(d) for d in descriptions]
        )

    @_rpc
    async def Create(self, request: pb.CreateCollection) -> pb.CollectionOperationResponse:
        # One Edge shard stands for the cluster: sharding, replication and on-disk settings are recorded
        # (the control service reports them) rather than applied.
        self.host.record_creation(request)
        created = await self.store.create_collection(
            request.collection_name,
            vectors_config=_optional(request, "vectors_config", GrpcToRest.convert_vectors_config),
            sparse_vectors_config=_optional(
                request, "sparse_vectors_config", GrpcToRest.convert_sparse_vector_config
            ),
            hnsw_config=_optional(request, "hnsw_config", GrpcToRest.convert_hnsw_config_diff),
            metadata=GrpcToRest.convert_payload(request.metadata) if request.metadata else None,
        )
        return pb.CollectionOperationResponse(result=created)

    @_rpc
    async def Delete(self, request: pb.DeleteCollection) -> pb.CollectionOperationResponse:
        return pb.CollectionOperationResponse(
            result=await self.store.delete_collection(request.collection_name)
        )

    @_rpc
    async def CollectionExists(self, request: pb.CollectionExistsRequest) -> pb.CollectionExistsResponse:
        exists = await self.store.collection_exists(request.collection_name)
        return pb.CollectionExistsResponse(result=pb.CollectionExists(exists=exists))

    @_rpc
    async def UpdateAliases(self, request: pb.ChangeAliases) -> pb.CollectionOperationResponse:
        operations = [GrpcToRest.convert_alias_operations(action) for action in request.actions]
        return pb.CollectionOperationResponse(result=await self.store.update_collection_aliases(operations))

    @_rpc
    async def ListCollectionAliases(self, request: pb.ListCollectionAliasesRequest) -> pb.ListAliasesResponse:
        return self._aliases(await self.store.get_collection_aliases(request.collection_name))

    @_rpc
    async def ListAliases(self, request: pb.ListAliasesRequest) -> pb.ListAliasesResponse:
        return self._aliases(await self.store.get_aliases())

    @staticmethod
    def _aliases(response: rest.CollectionsAliasesResponse) -> pb.ListAliasesResponse:
        return pb.ListAliasesResponse(
            aliases=[RestToGrpc.convert_alias_description(alias) for alias in response.aliases]
        )


class _Points(_EngineServicer, pb.PointsServicer):
    service = "Points"

    @_rpc
    async def Upsert(self, request: pb.UpsertPoints) -> pb.PointsOperationResponse:
        return _update_response(
            await self.store.upsert(
                request.collection_name,
                points=[GrpcToRest.convert_point_struct(point) for point in request.points],
                update_filter=_optional(request, "update_filter", GrpcToRest.convert_filter),
                update_mode=_optional(request, "update_mode", GrpcToRest.convert_update_mode),
            )
        )

    @_rpc
    async def Delete(self, request: pb.DeletePoints) -> pb.PointsOperationResponse:
        selector = GrpcToRest.convert_points_selector(request.points)
        return _update_response(await self.store.delete(request.collection_name, points_selector=selector))

    @_rpc
    async def Get(self, request: pb.GetPoints) -> pb.GetResponse:
        # unset selectors get the server's defaults for Get and Scroll: payload included, vectors left out
        records = await self.store.retrieve(
            request.collection_name,
            ids=[GrpcToRest.convert_point_id(point_id) for point_id in request.ids],
            with_payload=_optional(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=_optional(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.GetResponse(result=[RestToGrpc.convert_record(record) for record in records])

    @_rpc
    async def SetPayload(self, request: pb.SetPayloadPoints) -> pb.PointsOperationResponse:
        return _update_response(
            await self.store.set_payload(
                request.collection_name,
                payload=GrpcToRest.convert_payload(request.payload),
                points=GrpcToRest.convert_points_selector(request.points_selector),
                key=_optional(request, "key", str),
            )
        )

    @_rpc
    async def Scroll(self, request: pb.ScrollPoints) -> pb.ScrollResponse:
        records, next_offset = await self.store.scroll(
            request.collection_name,
            scroll_filter=_optional(request, "filter", GrpcToRest.convert_filter),
            limit=_optional(request, "limit", int, 10),
            order_by=_optional(request, "order_by", GrpcToRest.convert_order_by),
            offset=_optional(request, "offset", GrpcToRest.convert_point_id),
            with_payload=_optional(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=_optional(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.ScrollResponse(
            # A server sends an empty payload where none was asked for.
            result=[RestToGrpc.convert_record(record.model_copy(update={"payload": record.payload or {}})) for record in records],
            next_page_offset=(
                RestToGrpc.convert_extended_point_id(next_offset) if next_offset is not None else None
            ),
        )

    @_rpc
    async def Count(self, request: pb.CountPoints) -> pb.CountResponse:
        result = await self.store.count(
            request.collection_name, count_filter=_optional(request, "filter", GrpcToRest.convert_filter)
        )
        return pb.CountResponse(result=RestToGrpc.convert_count_result(result))

    @_rpc
    async def Query(self, request: pb.QueryPoints) -> pb.QueryResponse:
        # the batch call takes the REST QueryRequest whole, so no field is unpacked (and none forgotten) here
        (response,) = await self.store.query_batch_points(
            request.collection_name, requests=[GrpcToRest.convert_query_points(request)]
        )
        return pb.QueryResponse(result=[RestToGrpc.convert_scored_point(point) for point in response.points])

    @_rpc
    async def QueryBatch(self, request: pb.QueryBatchPoints) -> pb.QueryBatchResponse:
        responses = await self.store.query_batch_points(
            request.collection_name,
            requests=[GrpcToRest.convert_query_points(query) for query in request.query_points],
        )
        return pb.QueryBatchResponse(
            result=[
                pb.BatchResult(result=[RestToGrpc.convert_scored_point(point) for point in response.points])
                for response in responses
            ]
        )

    @_rpc
    async def QueryGroups(self, request: pb.QueryPointGroups) -> pb.QueryGroupsResponse:
        result = await self.store.query_points_groups(
            request.collection_name,
            group_by=request.group_by,
            query=_optional(request, "query", GrpcToRest.convert_query),
            using=_optional(request, "using", str),
            prefetch=[GrpcToRest.convert_prefetch_query(prefetch) for prefetch in request.prefetch] or None,
            query_filter=_optional(request, "filter", GrpcToRest.convert_filter),
            search_params=_optional(request, "params", GrpcToRest.convert_search_params),
            score_threshold=_optional(request, "score_threshold", float),
            limit=_optional(request, "limit", int, 10),
            group_size=_optional(request, "group_size", int, 3),
            with_payload=_optional(request, "with_payload", GrpcToRest.convert_with_payload_interface, False),
            with_vectors=_optional(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.QueryGroupsResponse(result=RestToGrpc.convert_groups_result(result))

    @_rpc
    async def CreateFieldIndex(self, request: pb.CreateFieldIndexCollection) -> pb.PointsOperationResponse:
        if request.HasField("field_index_params"):
            schema = GrpcToRest.convert_payload_schema_params(request.field_index_params)
        else:
            schema = _optional(
                request,
                "field_type",
                lambda field_type: GrpcToRest.convert_payload_schema_type(
                    grpc_field_type_to_payload_schema(field_type)
                ),
            )
        created = await self.store.create_payload_index(
            request.collection_name, request.field_name, field_schema=schema
        )
        return _update_response(created)


def _creation_settings(request: pb.CreateCollection) -> dict[str, Any]:
    """The cluster and storage settings a create_collection call carried (unset ones left out)."""
    settings = {
        field: getattr(request, field)
        for field in ("shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload")
        if request.HasField(field)
    }
    if request.HasField("vectors_config"):
        vectors = request.vectors_config
        if vectors.HasField("params"):
            every = [vectors.params]
        else:
            every = list(vectors.params_map.map.values())
        if every and all(params.HasField("on_disk") for params in every):
            settings["vectors_on_disk"] = all(params.on_disk for params in every)
    return settings


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


class LoopbackEngine:
    """The gRPC server over an EdgeStore folder, in this process: what the child of LoopbackQdrantServer runs.

    Every store call runs on one event-loop thread, in arrival order, as the product's one process
    with an embedded store would make them; gRPC's threads only translate messages.
    """

    executor_threads = 8
    servicers: tuple[type[_EngineServicer], ...] = (_Qdrant, _Collections, _Points)

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.store = EdgeStore(folder)
        self._lock = threading.Lock()
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.creations: dict[str, dict[str, Any]] = {}
        self._failures: collections.defaultdict[str, collections.deque[grpc.StatusCode]] = (
            collections.defaultdict(collections.deque)
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="loopback-engine", daemon=True
        )
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def start(self, port: int = 0) -> LoopbackEngine:
        self._loop_thread.start()
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.executor_threads, thread_name_prefix="loopback-qdrant"
        )
        self._server = grpc.server(self._executor)
        for servicer in self.servicers:
            servicer.register(servicer(self), self._server)
        self._server.add_generic_rpc_handlers((self._control_handler(),))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if not self.port:
            raise RuntimeError(f"the loopback Qdrant server could not bind 127.0.0.1:{port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            # grpc does not own the executor it was given, so its worker threads are ours to join
            self._executor.shutdown(wait=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._loop_thread.is_alive():
            self._loop_thread.join()
        self.store.close_now()

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run a store call on the engine's loop and return its result (from any thread)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def record_creation(self, request: pb.CreateCollection) -> None:
        with self._lock:
            self.creations[request.collection_name] = _creation_settings(request)

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        """Make the next `times` calls of `method` (e.g. "Points.Upsert") abort with `code`."""
        with self._lock:
            self._failures[method].extend([code] * times)

    def dispatch(
        self, method: str, call: Callable[[], Coroutine[Any, Any, Message]], context: grpc.ServicerContext
    ) -> Message:
        """Serve one RPC: count it, inject a scheduled failure, run it on the engine, map errors."""
        started = time.perf_counter()
        status: tuple[grpc.StatusCode, str] | None = None
        with self._lock:
            self.request_counts[method] += 1
            if pending := self._failures[method]:
                status = pending.popleft(), f"injected failure of {method}"
        if status is None:
            try:
                response = self.run(call())
            except Exception as error:  # noqa: BLE001 - every failure must reach the client as a status
                status = _status_of(error)
        if status is not None:
            context.abort(*status)
        if "time" in response.DESCRIPTOR.fields_by_name:
            response.time = time.perf_counter() - started
        return response

    async def _drop_everything(self) -> None:
        aliases = (await self.store.get_aliases()).aliases
        await self.store.update_collection_aliases(
            [
                rest.DeleteAliasOperation(delete_alias=rest.DeleteAlias(alias_name=a.alias_name))
                for a in aliases
            ]
        )
        for collection in (await self.store.get_collections()).collections:
            await self.store.delete_collection(collection.name)

    def _control_handler(self) -> grpc.GenericRpcHandler:
        """JSON-over-gRPC calls with which the parent process reads counts and schedules failures."""

        def state(_request: Any, _context: grpc.ServicerContext) -> Any:
            with self._lock:
                return {"request_counts": dict(self.request_counts), "creations": dict(self.creations)}

        def fail_next(request: Any, _context: grpc.ServicerContext) -> Any:
            self.fail_next(request["method"], grpc.StatusCode[request["code"]], request["times"])
            return {}

        def reset(_request: Any, _context: grpc.ServicerContext) -> Any:
            self.run(self._drop_everything())
            with self._lock:
                self.request_counts.clear()
                self.creations.clear()
                self._failures.clear()
            return {}

        return grpc.method_handlers_generic_handler(
            CONTROL_SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    handler, request_deserializer=json.loads, response_serializer=_json_bytes
                )
                for name, handler in (("State", state), ("FailNext", fail_next), ("Reset", reset))
            },
        )


_Qdrant.register = staticmethod(pb.add_QdrantServicer_to_server)
_Collections.register = staticmethod(pb.add_CollectionsServicer_to_server)
_Points.register = staticmethod(pb.add_PointsServicer_to_server)


class LoopbackQdrantServer:
    """Context manager over the server's process. start() serves on a free port of 127.0.0.1.

    After stop(), start() serves again on the same port and with the same points (they are in the
    folder this object owns until it is garbage): a Qdrant server restarted after an outage, for
    clients that keep their address. Leaving the context emptied and idle hands the process to the
    next server started, since starting one costs seconds of imports; idle ones end with the interpreter.
    """

    _idle: list[LoopbackQdrantServer] = []

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="loopback-qdrant-")
        self._process: subprocess.Popen[str] | None = None
        self._channel: grpc.Channel | None = None
        self._port: int | None = None

    def start(self) -> LoopbackQdrantServer:
        if self._process is not None:
            raise RuntimeError("the loopback Qdrant server is already running")
        if self._port is None and self._idle:
            self._take_over(self._idle.pop())
            return self
        command = [
            sys.executable,
            "-m",
            "tests.support.qdrant_grpc",
            self._folder.name,
            "--port",
            str(self._port or 0),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=_project_root())
        line = _read_line(self._process, START_TIMEOUT_SECONDS)
        if not line.startswith("port "):
            self._process.kill()
            self._process.wait()
            self._process = None
            raise RuntimeError(f"the loopback Qdrant server did not start (exit status or output: {line!r})")
        self._port = int(line.split()[1])
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self._port}")
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._channel.close()
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._process = self._channel = None

    def __enter__(self) -> LoopbackQdrantServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                self._control("Reset", {})
            except grpc.RpcError:
                pass  # stopped below rather than handed on
            else:
                idle = LoopbackQdrantServer.__new__(LoopbackQdrantServer)
                idle._take_over(self)
                self._idle.append(idle)
                return
        self.stop()
        self._folder.cleanup()

    def _take_over(self, other: LoopbackQdrantServer) -> None:
        self._folder, self._process, self._channel, self._port = (
            other._folder,
            other._process,
            other._channel,
            other._port,
        )
        other._process = other._channel = other._port = None

    @classmethod
    def stop_idle(cls) -> None:
        """End the idle processes kept for reuse."""
        while cls._idle:
            idle = cls._idle.pop()
            idle.stop()
            idle._folder.cleanup()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the loopback Qdrant server is not running")
        return self._process.pid

    @property
    def grpc_port(self) -> int:
        if self._port is None:
            raise RuntimeError("the loopback Qdrant server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def request_counts(self) -> collections.Counter[str]:
        """How often each RPC ("Points.Upsert", ...) was called since this process started, read now."""
        return collections.Counter(self._control("State", {})["request_counts"])

    @property
    def creations(self) -> dict[str, dict[str, Any]]:
        """The cluster and storage settings each collection was created with, by collection name."""
        return self._control("State", {})["creations"]

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        """Make the next `times` calls of `method` (e.g. "Points.Upsert") abort with `code`."""
        self._control("FailNext", {"method": method, "code": code.name, "times": times})

    def _control(self, name: str, request: dict[str, Any]) -> Any:
        if self._channel is None:
            raise RuntimeError("the loopback Qdrant server is not running")
        call = self._channel.unary_unary(
            f"/{CONTROL_SERVICE}/{name}", request_serializer=_json_bytes, response_deserializer=json.loads
        )
        return call(request, timeout=STOP_TIMEOUT_SECONDS)


atexit.register(LoopbackQdrantServer.stop_idle)


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first line of output, or its exit status if it ends (or stalls) before writing one."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if result and result[0]:
        return result[0].strip()
    return f"exit status {process.poll()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the Edge store folder (created if missing)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    arguments = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    engine = LoopbackEngine(arguments.folder).start(arguments.port)
    print(f"port {engine.port}", flush=True)
    try:
        stopping.wait()
    finally:
        engine.stop()


if __name__ == "__main__":
    main()

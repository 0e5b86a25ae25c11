"""A loopback Qdrant gRPC server backed by qdrant-client's local mode, for tests of the gRPC client path."""

from __future__ import annotations

import collections
import functools
import re
import threading
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from qdrant_client import QdrantClient
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc, grpc_field_type_to_payload_schema
from qdrant_client.http import models as rest

_Servicer = TypeVar("_Servicer", bound="_LocalServicer")

# The local client reports a missing collection or alias with these messages; the server answers NOT_FOUND.
_NOT_FOUND = (
    (re.compile(r"Collection (\S+) not found"), "Not found: Collection `{}` doesn't exist!"),
    (re.compile(r"Alias (\S+) does not exist"), "Not found: Alias `{}` doesn't exist!"),
)


def _status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    if not isinstance(error, ValueError):  # pydantic's ValidationError is a ValueError too
        return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
    for pattern, message in _NOT_FOUND:
        if match := pattern.search(str(error)):
            return grpc.StatusCode.NOT_FOUND, message.format(match.group(1))
    return grpc.StatusCode.INVALID_ARGUMENT, str(error)


def _optional(message: Message, field: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
    """The converted value of an optional field, or the default when the client left it unset."""
    return convert(getattr(message, field)) if message.HasField(field) else default


def _rpc(
    handler: Callable[[_Servicer, Any], Message],
) -> Callable[[_Servicer, Any, grpc.ServicerContext], Message]:
    """Route an RPC implementation through the host's dispatch, under its "Service.Method" name."""

    @functools.wraps(handler)
    def serve(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Message:
        method = f"{self.service}.{handler.__name__}"
        return self.host._dispatch(method, lambda: handler(self, request), context)

    return serve


def _update_response(result: rest.UpdateResult) -> pb.PointsOperationResponse:
    return pb.PointsOperationResponse(result=RestToGrpc.convert_update_result(result))


class _LocalServicer:
    service: str

    def __init__(self, host: LoopbackQdrantServer) -> None:
        self.host = host
        self.local = host.local


class _Qdrant(_LocalServicer, pb.QdrantServicer):
    service = "Qdrant"

    @_rpc
    def HealthCheck(self, request: pb.HealthCheckRequest) -> pb.HealthCheckReply:
        return RestToGrpc.convert_health_check_reply(self.local.info())


class _Collections(_LocalServicer, pb.CollectionsServicer):
    service = "Collections"

    @_rpc
    def Get(self, request: pb.GetCollectionInfoRequest) -> pb.GetCollectionInfoResponse:
        info = self.local.get_collection(request.collection_name)
        return pb.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(info))

    @_rpc
    def List(self, request: pb.ListCollectionsRequest) -> pb.ListCollectionsResponse:
        descriptions = self.local.get_collections().collections
        return pb.ListCollectionsResponse(
            collections=[RestToGrpc.convert_collection_description(d) for d in descriptions]
        )

    @_rpc
    def Create(self, request: pb.CreateCollection) -> pb.CollectionOperationResponse:
        # local mode has no HNSW, WAL, optimizers, quantization or sharding, so those settings are dropped
        created = self.local.create_collection(
            request.collection_name,
            vectors_config=_optional(request, "vectors_config", GrpcToRest.convert_vectors_config),
            sparse_vectors_config=_optional(
                request, "sparse_vectors_config", GrpcToRest.convert_sparse_vector_config
            ),
            metadata=GrpcToRest.convert_payload(request.metadata) if request.metadata else None,
        )
        return pb.CollectionOperationResponse(result=created)

    @_rpc
    def Delete(self, request: pb.DeleteCollection) -> pb.CollectionOperationResponse:
        return pb.CollectionOperationResponse(result=self.local.delete_collection(request.collection_name))

    @_rpc
    def CollectionExists(self, request: pb.CollectionExistsRequest) -> pb.CollectionExistsResponse:
        exists = self.local.collection_exists(request.collection_name)
        return pb.CollectionExistsResponse(result=pb.CollectionExists(exists=exists))

    @_rpc
    def UpdateAliases(self, request: pb.ChangeAliases) -> pb.CollectionOperationResponse:
        operations = [GrpcToRest.convert_alias_operations(action) for action in request.actions]
        return pb.CollectionOperationResponse(result=self.local.update_collection_aliases(operations))

    @_rpc
    def ListCollectionAliases(self, request: pb.ListCollectionAliasesRequest) -> pb.ListAliasesResponse:
        return self._aliases(self.local.get_collection_aliases(request.collection_name))

    @_rpc
    def ListAliases(self, request: pb.ListAliasesRequest) -> pb.ListAliasesResponse:
        return self._aliases(self.local.get_aliases())

    @staticmethod
    def _aliases(response: rest.CollectionsAliasesResponse) -> pb.ListAliasesResponse:
        return pb.ListAliasesResponse(
            aliases=[RestToGrpc.convert_alias_description(alias) for alias in response.aliases]
        )


class _Points(_LocalServicer, pb.PointsServicer):
    service = "Points"

    @_rpc
    def Upsert(self, request: pb.UpsertPoints) -> pb.PointsOperationResponse:
        return _update_response(
            self.local.upsert(
                request.collection_name,
                points=[GrpcToRest.convert_point_struct(point) for point in request.points],
                update_filter=_optional(request, "update_filter", GrpcToRest.convert_filter),
                update_mode=_optional(request, "update_mode", GrpcToRest.convert_update_mode),
            )
        )

    @_rpc
    def Delete(self, request: pb.DeletePoints) -> pb.PointsOperationResponse:
        selector = GrpcToRest.convert_points_selector(request.points)
        return _update_response(self.local.delete(request.collection_name, points_selector=selector))

    @_rpc
    def Get(self, request: pb.GetPoints) -> pb.GetResponse:
        # unset selectors get the server's defaults for Get and Scroll: payload included, vectors left out
        records = self.local.retrieve(
            request.collection_name,
            ids=[GrpcToRest.convert_point_id(point_id) for point_id in request.ids],
            with_payload=_optional(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=_optional(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.GetResponse(result=[RestToGrpc.convert_record(record) for record in records])

    @_rpc
    def SetPayload(self, request: pb.SetPayloadPoints) -> pb.PointsOperationResponse:
        return _update_response(
            self.local.set_payload(
                request.collection_name,
                payload=GrpcToRest.convert_payload(request.payload),
                points=GrpcToRest.convert_points_selector(request.points_selector),
                key=_optional(request, "key", str),
            )
        )

    @_rpc
    def OverwritePayload(self, request: pb.SetPayloadPoints) -> pb.PointsOperationResponse:
        return _update_response(
            self.local.overwrite_payload(
                request.collection_name,
                payload=GrpcToRest.convert_payload(request.payload),
                points=GrpcToRest.convert_points_selector(request.points_selector),
            )
        )

    @_rpc
    def DeletePayload(self, request: pb.DeletePayloadPoints) -> pb.PointsOperationResponse:
        return _update_response(
            self.local.delete_payload(
                request.collection_name,
                keys=list(request.keys),
                points=GrpcToRest.convert_points_selector(request.points_selector),
            )
        )

    @_rpc
    def Scroll(self, request: pb.ScrollPoints) -> pb.ScrollResponse:
        records, next_offset = self.local.scroll(
            request.collection_name,
            scroll_filter=_optional(request, "filter", GrpcToRest.convert_filter),
            limit=_optional(request, "limit", int, 10),
            order_by=_optional(request, "order_by", GrpcToRest.convert_order_by),
            offset=_optional(request, "offset", GrpcToRest.convert_point_id),
            with_payload=_optional(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=_optional(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.ScrollResponse(
            result=[RestToGrpc.convert_record(record) for record in records],
            next_page_offset=(
                RestToGrpc.convert_extended_point_id(next_offset) if next_offset is not None else None
            ),
        )

    @_rpc
    def Count(self, request: pb.CountPoints) -> pb.CountResponse:
        result = self.local.count(
            request.collection_name, count_filter=_optional(request, "filter", GrpcToRest.convert_filter)
        )
        return pb.CountResponse(result=RestToGrpc.convert_count_result(result))

    @_rpc
    def Query(self, request: pb.QueryPoints) -> pb.QueryResponse:
        # the batch call takes the REST QueryRequest whole, so no field is unpacked (and none forgotten) here
        (response,) = self.local.query_batch_points(
            request.collection_name, requests=[GrpcToRest.convert_query_points(request)]
        )
        return pb.QueryResponse(result=[RestToGrpc.convert_scored_point(point) for point in response.points])

    @_rpc
    def QueryBatch(self, request: pb.QueryBatchPoints) -> pb.QueryBatchResponse:
        responses = self.local.query_batch_points(
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
    def QueryGroups(self, request: pb.QueryPointGroups) -> pb.QueryGroupsResponse:
        result = self.local.query_points_groups(
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
    def CreateFieldIndex(self, request: pb.CreateFieldIndexCollection) -> pb.PointsOperationResponse:
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
        # Local mode keeps no payload indexes and warns so; a server would build one, so answer as it does.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            created = self.local.create_payload_index(request.collection_name, request.field_name, field_schema=schema)
        return _update_response(created)

    @_rpc
    def DeleteFieldIndex(self, request: pb.DeleteFieldIndexCollection) -> pb.PointsOperationResponse:
        return _update_response(self.local.delete_payload_index(request.collection_name, request.field_name))


class LoopbackQdrantServer:
    """Context manager. start() binds 127.0.0.1 on a free port and serves in background threads.

    After stop(), start() serves again on the same port and with the same points: a Qdrant server
    restarted after an outage, for clients that keep their address.
    """

    def __init__(self) -> None:
        self._local = QdrantClient(location=":memory:")
        # local mode is not thread-safe and the server runs handlers on several threads
        self._lock = threading.Lock()
        self.request_counts: collections.Counter[str] = collections.Counter()
        self._failures: collections.defaultdict[str, collections.deque[grpc.StatusCode]] = (
            collections.defaultdict(collections.deque)
        )
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None
        self._port: int | None = None

    def start(self) -> LoopbackQdrantServer:
        if self._server is not None:
            raise RuntimeError("the loopback Qdrant server is already running")
        self._executor = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="loopback-qdrant")
        self._server = grpc.server(self._executor)
        pb.add_QdrantServicer_to_server(_Qdrant(self), self._server)
        pb.add_CollectionsServicer_to_server(_Collections(self), self._server)
        pb.add_PointsServicer_to_server(_Points(self), self._server)
        self._port = self._server.add_insecure_port(f"127.0.0.1:{self._port or 0}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop(grace=None).wait()
        # grpc does not own the executor it was given, so its worker threads are ours to join
        self._executor.shutdown(wait=True)
        self._server = self._executor = None

    def __enter__(self) -> LoopbackQdrantServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_port(self) -> int:
        if self._port is None:
            raise RuntimeError("the loopback Qdrant server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def local(self) -> QdrantClient:
        return self._local

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        """Make the next `times` calls of `method` (e.g. "Points.Upsert") abort with `code`."""
        with self._lock:
            self._failures[method].extend([code] * times)

    def _dispatch(self, method: str, call: Callable[[], Message], context: grpc.ServicerContext) -> Message:
        """Serve one RPC: count it, inject a scheduled failure, run it under the lock, map errors."""
        started = time.perf_counter()
        status: tuple[grpc.StatusCode, str] | None = None
        with self._lock:
            self.request_counts[method] += 1
            if pending := self._failures[method]:
                status = pending.popleft(), f"injected failure of {method}"
            else:
                try:
                    response = call()
                except Exception as error:  # noqa: BLE001 - every failure must reach the client as a status
                    status = _status_of(error)
        if status is not None:
            # abort() raises, so it waits until the lock is released
            context.abort(*status)
        if "time" in response.DESCRIPTOR.fields_by_name:
            response.time = time.perf_counter() - started
        return response

"""QdrantService: the embedded store's one-process rule, closing, and error translation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from search.errors import VectorStoreUnavailable
from search.qdrant import QdrantConfig, QdrantService, as_unavailable, is_missing_collection

pytestmark = pytest.mark.unit


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


async def test_a_store_folder_held_elsewhere_is_refused_with_what_to_do(tmp_path) -> None:
    holder = QdrantService(QdrantConfig(path=str(tmp_path)))
    await holder.client.get_collections()

    with pytest.raises(VectorStoreUnavailable) as held:
        _ = QdrantService(QdrantConfig(path=str(tmp_path))).client

    assert str(tmp_path) in held.value.message and "QDRANT_URL" in held.value.message
    await holder.aclose()
    reopened = QdrantService(QdrantConfig(path=str(tmp_path)))
    assert (await reopened.client.get_collections()).collections == []
    reopened.close()


async def test_the_embedded_store_keeps_what_was_written_across_reopening(tmp_path) -> None:
    from qdrant_client import models

    first = QdrantService(QdrantConfig(path=str(tmp_path)))
    await first.client.create_collection("kept", vectors_config=models.VectorParams(size=4, distance="Cosine"))
    first.close()

    second = QdrantService(QdrantConfig(path=str(tmp_path)))
    assert [c.name for c in (await second.client.get_collections()).collections] == ["kept"]
    second.close()


def test_sync_code_gets_a_new_server_client_each_time_and_async_code_one_per_loop() -> None:
    """A sync caller owns the client it gets (nothing caches it); each running loop keeps its own."""
    service = QdrantService(QdrantConfig(url="http://qdrant.internal:6333"))

    first, second = service.client, service.client
    assert isinstance(first, AsyncQdrantClient) and first is not second

    async def twice():
        return service.client, service.client

    in_loop = asyncio.run(twice())
    assert in_loop[0] is in_loop[1] and in_loop[0] not in (first, second)


@pytest.mark.parametrize(
    ("error", "missing"),
    [
        (RpcError(grpc.StatusCode.NOT_FOUND), True),
        (RpcError(grpc.StatusCode.UNAVAILABLE), False),
        (UnexpectedResponse(404, "Not Found", b"", {}), True),
        (UnexpectedResponse(500, "Oops", b"", {}), False),
        (ValueError("Collection kb_1 not found"), True),
        (ValueError("something else"), False),
    ],
)
def test_a_missing_collection_is_recognised_in_every_mode(error, missing) -> None:
    assert is_missing_collection(error) is missing


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (RpcError(grpc.StatusCode.UNAVAILABLE), True),
        (RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (RpcError(grpc.StatusCode.INVALID_ARGUMENT), False),
        (ResponseHandlingException(ConnectionError("refused")), True),
        (ValueError("bad vector"), False),
    ],
)
def test_unreachable_qdrant_becomes_a_clear_error(error, unavailable) -> None:
    config = QdrantConfig(url="http://qdrant.internal:6333")

    translated = as_unavailable(error, config)

    assert (translated is not None) is unavailable
    if translated:
        assert "http://qdrant.internal:6333" in translated.message and "QDRANT_TIMEOUT" in translated.message


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_the_embedded_clients_skip_qdrant_clients_scan_for_inference_objects(tmp_path, engine) -> None:
    service = QdrantService(QdrantConfig(path=str(tmp_path), engine=engine))
    try:
        assert service.client.cloud_inference is True
    finally:
        service.close()


async def test_the_server_client_skips_qdrant_clients_scan_for_inference_objects() -> None:
    service = QdrantService(QdrantConfig(url="http://127.0.0.1:9", grpc_port=9))
    try:
        assert service.client.cloud_inference is True
    finally:
        await service.aclose()

"""The hook the embedded store relies on: AsyncQdrantClient delegates every call to its `_client` backend.

qdrant-client has no public way to plug in a backend. If an upgrade renames the attribute or stops
delegating, these tests fail before anything else does: pin qdrant-client back, or adapt search/qdrant.py.
"""

from __future__ import annotations

import inspect

import pytest
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.async_client_base import AsyncQdrantBase
from qdrant_client.http import models as rest

from search.edge import EdgeStore

pytestmark = pytest.mark.unit

# Every backend method the project's services and tests call.
USED_METHODS = (
    "get_collections",
    "get_collection",
    "collection_exists",
    "create_collection",
    "delete_collection",
    "get_aliases",
    "update_collection_aliases",
    "create_payload_index",
    "upsert",
    "query_points",
    "query_batch_points",
    "scroll",
    "count",
    "retrieve",
    "set_payload",
    "delete_payload",
    "delete",
    "close",
)


class RecordingBackend(AsyncQdrantBase):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict]] = []

    async def count(self, collection_name, count_filter=None, exact=True, **kwargs):
        self.calls.append(("count", {"collection_name": collection_name, "count_filter": count_filter}))
        return models.CountResult(count=7)

    async def query_points(self, collection_name, query=None, **kwargs):
        self.calls.append(("query_points", {"collection_name": collection_name, "query": query, **kwargs}))
        return rest.QueryResponse(points=[])


def test_the_client_keeps_its_backend_in_the_private_client_attribute() -> None:
    client = AsyncQdrantClient(location=":memory:")
    assert isinstance(client._client, AsyncQdrantBase)


async def test_the_client_hands_calls_to_a_replaced_backend() -> None:
    client = AsyncQdrantClient(location=":memory:")
    backend = RecordingBackend()
    client._client = backend
    flt = models.Filter(must=[models.FieldCondition(key="kb_id", match=models.MatchValue(value="k"))])

    assert (await client.count(collection_name="kb_x", count_filter=flt, exact=True)).count == 7
    await client.query_points(collection_name="kb_x", query=[0.1, 0.2], using="dense", limit=3)

    assert backend.calls[0] == ("count", {"collection_name": "kb_x", "count_filter": flt})
    name, arguments = backend.calls[1]
    # The client resolves a plain vector into a NearestQuery before the backend sees it.
    assert name == "query_points" and arguments["query"] == models.NearestQuery(nearest=[0.1, 0.2])
    assert arguments["using"] == "dense" and arguments["limit"] == 3


@pytest.mark.parametrize("method", USED_METHODS)
def test_edge_store_implements_every_backend_method_the_project_calls(method: str) -> None:
    implementation = getattr(EdgeStore, method)
    assert implementation is not getattr(AsyncQdrantBase, method), f"EdgeStore does not implement {method}"
    assert inspect.iscoroutinefunction(implementation)
    base_parameters = set(inspect.signature(getattr(AsyncQdrantBase, method)).parameters)
    ours = inspect.signature(implementation).parameters
    accepts_anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())
    missing = base_parameters - set(ours)
    assert accepts_anything or not missing, f"EdgeStore.{method} lacks {missing}"

"""The hook the embedded store relies on: AsyncQdrantClient delegates every call to its `_client` backend.

qdrant-client has no public way to plug in a backend. If an upgrade renames the attribute or stops
delegating, these tests fail before anything else does: pin qdrant-client back, or adapt search/qdrant.py.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.async_client_base import AsyncQdrantBase
from qdrant_client.embed.type_inspector import Inspector
from qdrant_client.http import models as rest

from search.edge import EdgeStore
from search.qdrant import without_inference_scan

pytestmark = pytest.mark.unit

BASE_DIR = Path(__file__).resolve().parents[2]

# Every backend method the app calls on its Qdrant client, and so every method EdgeStore implements:
# the two tests at the end keep this list, the app and EdgeStore in step.
USED_METHODS = (
    "get_collections",
    "get_collection",
    "collection_exists",
    "create_collection",
    "delete_collection",
    "get_aliases",
    "update_collection_aliases",
    "create_payload_index",
    "delete_payload_index",
    "upsert",
    "query_points",
    "query_batch_points",
    "query_points_groups",
    "scroll",
    "count",
    "retrieve",
    "set_payload",
    "delete",
    "close",
)
APP_PACKAGES = ("kbsite", "knowledge", "search")
BACKEND_METHODS = frozenset(
    name for name, _ in inspect.getmembers(AsyncQdrantBase, inspect.isfunction) if not name.startswith("_")
)


def methods_the_app_calls_on_its_client() -> set[str]:
    """Backend methods called on a Qdrant client in the app's source: `client.x(...)` or `<...>.client.x(...)`.

    The app reaches Qdrant only through `qdrant_service.client` or a local named `client`; the
    embedded store's own package (the backend itself) is left out.
    """
    called = set()
    for package in APP_PACKAGES:
        for path in (BASE_DIR / package).rglob("*.py"):
            if path.is_relative_to(BASE_DIR / "search" / "edge"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                receiver = node.func.value
                on_a_client = (isinstance(receiver, ast.Name) and receiver.id == "client") or (
                    isinstance(receiver, ast.Attribute) and receiver.attr == "client"
                )
                if on_a_client and node.func.attr in BACKEND_METHODS:
                    called.add(node.func.attr)
    return called


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

    async def query_batch_points(self, collection_name, requests, **kwargs):
        self.calls.append(("query_batch_points", {"collection_name": collection_name, "requests": requests}))
        return [rest.QueryResponse(points=[]) for _ in requests]

    async def upsert(self, collection_name, points, **kwargs):
        self.calls.append(("upsert", {"collection_name": collection_name, "points": points}))
        return rest.UpdateResult(operation_id=1, status=rest.UpdateStatus.COMPLETED)


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


def test_the_list_holds_exactly_the_backend_methods_the_app_calls() -> None:
    called = methods_the_app_calls_on_its_client()

    assert not called - set(USED_METHODS), f"add to USED_METHODS (and to EdgeStore): {called - set(USED_METHODS)}"
    assert not set(USED_METHODS) - called, f"the app no longer calls {set(USED_METHODS) - called}: drop them"


def test_edge_store_implements_no_backend_method_the_app_does_not_call() -> None:
    implemented = {name for name in BACKEND_METHODS if getattr(EdgeStore, name) is not getattr(AsyncQdrantBase, name)}

    assert implemented == set(USED_METHODS)


async def test_a_client_without_the_inference_scan_hands_requests_over_uninspected(monkeypatch) -> None:
    # qdrant-client walks every request for Documents to embed unless `cloud_inference` is set; the
    # walk was a quarter or more of a search's engine call in Python. If an upgrade gates it otherwise,
    # this fails: find the new switch for search.qdrant.without_inference_scan.
    def inspected(self, points):
        raise AssertionError("the request was inspected for inference objects")

    monkeypatch.setattr(Inspector, "inspect", inspected)
    client = AsyncQdrantClient(location=":memory:")
    backend = RecordingBackend()
    client._client = backend
    client = without_inference_scan(client)
    request = models.QueryRequest(
        prefetch=[models.Prefetch(query=[0.1, 0.2], using="dense", limit=5)], query=models.FusionQuery(fusion="rrf")
    )

    await client.query_batch_points(collection_name="kb_x", requests=[request])
    await client.query_points(collection_name="kb_x", query=[0.1, 0.2], using="dense", limit=3)
    await client.upsert(collection_name="kb_x", points=[models.PointStruct(id=1, vector=[0.1, 0.2])])

    assert [name for name, _ in backend.calls] == ["query_batch_points", "query_points", "upsert"]
    assert backend.calls[0][1]["requests"] == [request]

"""How concurrent searches reach Qdrant: together in one query_batch_points, alone as query_points."""

from __future__ import annotations

import asyncio
import copy
from unittest.mock import AsyncMock

import pytest
from qdrant_client import models
from qdrant_client.http import models as rest

from search.query_batching import MAX_BATCH, QueryBatcher

pytestmark = pytest.mark.unit


def request(n: int) -> models.QueryRequest:
    return models.QueryRequest(query=models.NearestQuery(nearest=[float(n), 1.0]), limit=n + 1, with_payload=True)


def point(n: int) -> rest.ScoredPoint:
    return rest.ScoredPoint(id=n, version=1, score=float(n))


def client_answering_with_request_limits() -> AsyncMock:
    client = AsyncMock()
    client.query_points.side_effect = lambda **kw: rest.QueryResponse(points=[point(kw["limit"])])
    client.query_batch_points.side_effect = lambda **kw: [
        rest.QueryResponse(points=[point(r.limit)]) for r in kw["requests"]
    ]
    return client


async def test_queries_started_together_go_out_as_one_batch_in_order() -> None:
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)

    answers = await asyncio.gather(*(batcher.query(collection_name="kb_a", request=request(n)) for n in range(5)))

    assert [[p.id for p in points] for points in answers] == [[n + 1] for n in range(5)]
    client.query_batch_points.assert_awaited_once()
    sent = client.query_batch_points.call_args.kwargs["requests"]
    assert [r.model_dump() for r in sent] == [request(n).model_dump() for n in range(5)]
    client.query_points.assert_not_awaited()


async def test_a_query_alone_goes_out_as_query_points_with_its_fields() -> None:
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)

    await batcher.query(collection_name="kb_a", request=request(3))

    client.query_batch_points.assert_not_awaited()
    kwargs = client.query_points.call_args.kwargs
    assert (kwargs["collection_name"], kwargs["query"], kwargs["limit"]) == ("kb_a", request(3).query, 4)
    assert kwargs["with_payload"] is True


async def test_each_collection_gets_its_own_call_and_big_bursts_are_split() -> None:
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)

    await asyncio.gather(
        batcher.query(collection_name="kb_b", request=request(0)),
        *(batcher.query(collection_name="kb_a", request=request(n)) for n in range(MAX_BATCH + 1)),
    )

    sizes = sorted(len(call.kwargs["requests"]) for call in client.query_batch_points.call_args_list)
    assert sizes == [MAX_BATCH]
    assert sorted(call.kwargs["collection_name"] for call in client.query_points.call_args_list) == ["kb_a", "kb_b"]


async def test_queries_in_later_turns_are_not_held_back() -> None:
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)

    for n in range(3):
        await batcher.query(collection_name="kb_a", request=request(n))

    assert client.query_points.await_count == 3


async def test_a_failed_batch_fails_every_query_in_it() -> None:
    client = AsyncMock()
    client.query_batch_points.side_effect = ValueError("Collection kb_a not found")
    batcher = QueryBatcher(lambda: client)

    outcomes = await asyncio.gather(
        *(batcher.query(collection_name="kb_a", request=request(n)) for n in range(3)), return_exceptions=True
    )

    assert [str(o) for o in outcomes] == ["Collection kb_a not found"] * 3


async def test_a_cancelled_query_leaves_the_others_of_its_batch_their_answers() -> None:
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)
    tasks = [asyncio.ensure_future(batcher.query(collection_name="kb_a", request=request(n))) for n in range(3)]
    await asyncio.sleep(0)  # each task has queued its query
    tasks[1].cancel()

    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [p.id for p in outcomes[0]] == [1] and [p.id for p in outcomes[2]] == [3]
    assert len(client.query_batch_points.call_args.kwargs["requests"]) == 2


async def test_a_batch_reaches_the_client_as_requests_it_copies_without_copying_their_vectors() -> None:
    # qdrant-client's query_batch_points deep-copies every request it is given; the batch's requests
    # must come out of that copy equal, of the same model, and sharing the vectors instead of copying them.
    client = client_answering_with_request_limits()
    batcher = QueryBatcher(lambda: client)
    sent = [request(n) for n in range(3)]

    await asyncio.gather(*(batcher.query(collection_name="kb_a", request=r) for r in sent))

    (call,) = client.query_batch_points.call_args_list
    for original, given in zip(sent, call.kwargs["requests"]):
        copied = copy.deepcopy(given)
        assert isinstance(copied, models.QueryRequest)
        assert copied.model_dump() == original.model_dump()
        assert copied.model_fields_set == original.model_fields_set
        assert copied.query.nearest is original.query.nearest

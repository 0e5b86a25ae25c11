"""Outage drill on the server path: the Qdrant server stops while searches and ingestion run, then comes back.

While it is down, searches answer 503 in the error shape within the client's timeout, health says
Qdrant is down, and documents in work go back to the queue with a retry time; once it is back,
every document ends ready with all its points. Run with -s to see the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from asgiref.sync import sync_to_async
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.ingestion.pipeline import STORE_WAIT, IngestionService, IngestionSettings
from knowledge.ingestion.worker import IngestionWorker
from knowledge.models import Document, DocumentStatus
from knowledge.services.tokens import ApiTokenService
from search.services.chunks import ChunkService
from tests.factories import corpus, make_document, make_kb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.server,
    pytest.mark.drill,
    pytest.mark.django_db(transaction=True),
]

client = TestAsyncClient(api)
# The qdrant_server fixture gives the client this timeout; a busy machine adds the margin.
CLIENT_TIMEOUT_SECONDS = 5
MARGIN_SECONDS = 10
# Down at least this long, and until every document in work has gone back to the queue.
SHORTEST_OUTAGE_SECONDS = 4
CONDITION_TIMEOUT_SECONDS = 120


async def wait_for(condition, *, what: str, timeout: float = CONDITION_TIMEOUT_SECONDS, pause: float = 0.05):
    async with asyncio.timeout(timeout):
        while not (value := await condition()):
            await asyncio.sleep(pause)
    assert value, what
    return value


async def statuses(kb) -> dict:
    return {d.pk: d async for d in Document.objects.filter(knowledge_base=kb)}


async def test_a_qdrant_outage_answers_503_in_time_and_loses_no_document(qdrant_server, test_user) -> None:
    # Small chunks in batches of four: each document takes several Qdrant writes, so the stop lands mid-document.
    kb = await sync_to_async(make_kb)(owner=test_user, name="Outage", chunk_size=40, chunk_overlap=4)
    documents = [
        await sync_to_async(make_document)(kb=kb, title=title, text=text) for title, text in corpus()
    ]
    token = await sync_to_async(lambda: ApiTokenService().create_token(user=test_user, name="drill").secret)()
    headers = {"Authorization": f"Bearer {token}"}
    ingestion = IngestionService(config=IngestionSettings.from_settings(batch_size=4))
    worker = IngestionWorker(service=ingestion, worker_id="drill-worker", poll_seconds=0.2, concurrency=2)
    stop = asyncio.Event()
    working = asyncio.ensure_future(worker.run(stop=stop))
    failed_during_outage: set = set()
    try:

        async def one_in_flight():
            return any(
                d.status == DocumentStatus.PROCESSING and d.chunks_done > 0
                for d in (await statuses(kb)).values()
            )

        await wait_for(one_in_flight, what="a document part-way through")
        qdrant_server.stop()
        down_at = time.monotonic()
        in_flight = {pk for pk, d in (await statuses(kb)).items() if d.status == DocumentStatus.PROCESSING}

        searched: Counter[int] = Counter()
        slowest = 0.0
        health = None
        sent_back: set = set()
        finished: set = set()  # in its last step when the server stopped: no Qdrant call left to fail
        while time.monotonic() - down_at < SHORTEST_OUTAGE_SECONDS or not in_flight <= sent_back | finished:
            started = time.monotonic()
            response = await client.post(
                "/search", json={"query": "why is high tide later", "kb_ids": [str(kb.id)]}, headers=headers
            )
            slowest = max(slowest, time.monotonic() - started)
            searched[response.status_code] += 1
            assert response.status_code == 503, response.content
            assert (
                set(response.json()) == {"code", "message", "detail"}
                and response.json()["code"] == "vector_store_unavailable"
            )
            health = health or await client.get("/health")
            for pk, document in (await statuses(kb)).items():
                if document.status == DocumentStatus.FAILED:
                    failed_during_outage.add(pk)
                if document.status == DocumentStatus.READY:
                    finished.add(pk)
                if (
                    document.status == DocumentStatus.PENDING
                    and document.next_attempt_at
                    and document.error.startswith(STORE_WAIT)
                ):
                    sent_back.add(pk)
            assert time.monotonic() - down_at < CONDITION_TIMEOUT_SECONDS, "documents in work never went back"
        qdrant_server.start()
        outage = time.monotonic() - down_at

        async def search_answers():
            response = await client.post(
                "/search", json={"query": "why is high tide later", "kb_ids": [str(kb.id)]}, headers=headers
            )
            return response.status_code == 200

        await wait_for(search_answers, what="a search answered after the outage", pause=0.2)
        recovered = time.monotonic() - down_at - outage

        async def all_settled():
            return all(
                d.status in (DocumentStatus.READY, DocumentStatus.FAILED)
                for d in (await statuses(kb)).values()
            )

        await wait_for(all_settled, what="every document settled", pause=0.2)
    finally:
        stop.set()
        await asyncio.wait_for(working, timeout=60)
    settled = await statuses(kb)
    chunks = ChunkService()
    points = 0
    for document in settled.values():
        indexes, _ = await chunks.get_chunks_by_document(kb_id=kb.id, document_id=document.pk, limit=1000)
        assert [chunk.chunk_index for chunk in indexes] == list(range(document.chunk_count)), document.title
        assert await chunks.count_chunks(kb_id=kb.id, document_id=document.pk) == document.chunk_count
        points += document.chunk_count
    print(
        f"\noutage {outage:.1f} s; searches during it by status {dict(searched)}, slowest {slowest:.2f} s; "
        f"documents in work at the stop {len(in_flight)}, sent back to the queue with a retry time {len(sent_back)}, "
        f"failed {len(failed_during_outage)}; searches answered again {recovered:.1f} s after the restart; "
        f"{len(settled)} documents, {points} points checked"
    )

    assert health.status_code == 503
    assert health.json()["detail"] == {"database": "ok", "qdrant": "unavailable"}
    assert slowest < CLIENT_TIMEOUT_SECONDS + MARGIN_SECONDS
    assert failed_during_outage == set()
    assert sent_back and in_flight <= sent_back | finished
    assert {d.status for d in settled.values()} == {DocumentStatus.READY}, {
        d.title: d.error for d in settled.values()
    }
    assert len(settled) == len(documents)
    assert await chunks.count_chunks(kb_id=kb.id) == points

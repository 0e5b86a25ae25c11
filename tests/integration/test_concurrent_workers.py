"""Concurrent ingestion workers: processes sharing a queue never take a document twice."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from qdrant_client import models

from knowledge.models import Document, DocumentStatus
from knowledge.services.knowledge_bases import active_index
from search.chunking import TextChunk
from search.embedding import embedding_service
from search.services.chunks import ChunkService
from search.services.collections import CollectionService, KbIndex
from tests.factories import make_document, make_kb
from tests.support.qdrant_grpc import LoopbackQdrantServer

pytestmark = [pytest.mark.integration, pytest.mark.server, pytest.mark.django_db(transaction=True)]

WORKERS = 3
DOCUMENTS = 12
WORKER_TIMEOUT_SECONDS = 180


def worker_database_url() -> str:
    """The URL of the database this test runs on (the test database), for the worker processes."""
    database = settings.DATABASES["default"]
    credentials = quote(database.get("USER") or "", safe="")
    if database.get("PASSWORD"):
        credentials += ":" + quote(database["PASSWORD"], safe="")
    host, port = database.get("HOST") or "localhost", database.get("PORT") or 5432
    return f"postgres://{credentials}@{host}:{port}/{quote(database['NAME'], safe='')}"


def start_worker(server: LoopbackQdrantServer) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kbsite.settings",
        "DATABASE_URL": worker_database_url(),
        "QDRANT_URL": server.url,
        "QDRANT_GRPC_PORT": str(server.grpc_port),
        "KBSITE_IN_PROCESS_WORKER": "false",
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "ingest_worker", "--until-idle", "--poll", "0.2"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(workers: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each worker; all are killed if any outlives the timeout."""
    finished = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=WORKER_TIMEOUT_SECONDS)
            finished.append((worker.returncode, out, err))
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
            worker.communicate()
        pytest.fail(f"the workers did not go idle within {WORKER_TIMEOUT_SECONDS}s")
    return finished


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="worker processes share the queue only through a database server: set DATABASE_URL to PostgreSQL",
)
def test_several_worker_processes_never_process_the_same_document_twice(qdrant_server):
    kb = make_kb(name="Shared queue")
    # Made up front so this test is about the queue alone; the first writes into a new KB have their own test.
    asyncio.run(CollectionService().ensure_collection(index=active_index(kb)))
    documents = [
        make_document(kb=kb, title=f"Note {n}", text=f"Note {n}: worker processes share one queue.")
        for n in range(DOCUMENTS)
    ]
    assert {d.status for d in documents} == {DocumentStatus.PENDING}

    results = wait_for([start_worker(qdrant_server) for _ in range(WORKERS)])

    for code, out, err in results:
        assert code == 0, f"a worker exited with {code}:\n{out}\n{err}"
    logs = "\n".join(err for _, _, err in results)
    processed = [int(re.search(r"processed (\d+) documents", out).group(1)) for _, out, _ in results]
    assert sum(processed) == DOCUMENTS, (processed, logs)
    for document in Document.objects.filter(knowledge_base=kb):
        assert document.status == DocumentStatus.READY, (document.status, document.error, logs)
        assert document.chunk_count == 1
        count = asyncio.run(ChunkService().count_chunks(kb_id=kb.id, document_id=document.id))
        assert count == document.chunk_count
    # Each document is one batch of one chunk: a document processed twice would be written twice.
    assert qdrant_server.request_counts["Points.Upsert"] == DOCUMENTS, logs


async def test_the_first_writes_of_several_workers_into_a_new_kb_all_land(qdrant_server):
    """Workers that each take a document of a KB nobody has written to yet create its collection at once."""
    kb_id = "6a1f7a4e-0000-4000-8000-0000000000aa"
    chunks = ChunkService()
    index = KbIndex(kb_id=kb_id, model=embedding_service.model_id, vector_size=embedding_service.dimensions)
    vector = [1.0] * embedding_service.dimensions

    async def first_write(n: int) -> int:
        chunk = TextChunk(index=0, content=f"note {n}", char_start=0, char_end=6, token_count=2)
        return await chunks.upsert_chunks(
            kb_id=kb_id,
            document_id=f"6a1f7a4e-0000-4000-8000-00000000000{n}",
            title=f"Note {n}",
            chunks=[chunk],
            vectors=[vector],
            keyword_vectors=[models.SparseVector(indices=[n], values=[1.0])],
            index=index,
        )

    outcomes = await asyncio.gather(*(first_write(n) for n in range(WORKERS)), return_exceptions=True)

    assert outcomes == [1] * WORKERS
    assert await chunks.count_chunks(kb_id=kb_id, index=index) == WORKERS
    assert await chunks.collections.current_collection(index=index) == f"{index.collection}_v1"
    assert await chunks.collections.model_collections() == [index.collection]

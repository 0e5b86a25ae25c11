"""Fixtures shared by the tests: users, knowledge bases indexed into the real embedded Qdrant, a per-test reset."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from array import array

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from qdrant_client import models

from knowledge.ingestion.pipeline import IngestionService
from knowledge.models import DocumentStatus
from search.embedding import embedding_service
from search.qdrant import QdrantConfig, qdrant_service
from search.services.collections import CollectionService
from tests.factories import corpus, make_document, make_kb, make_user
from tests.support.flushing import flush_by_delete
from tests.support.qdrant_grpc import LoopbackQdrantServer

#: Tests `make test` runs alone, after the others (`--run-part`): the timed load tests and the crash,
#: outage and deployment drills, whose timings a neighbour sharing the CPU would distort. Every other
#: test, the browser tests and live-server tests among them (they wait for what they expect to see,
#: never for a time), is independent of the tests beside it: its own in-memory Qdrant store and test
#: database per process, free ports, files in tmp dirs.
RUN_ALONE_MARKERS = ("performance", "drill")
SHARED_SCOPES = ("package", "module", "class")
#: Tests that never open a database, Django's test database or a live site's: the store contract, the
#: unit tests, the loopback server's self-test; plus those marked `database_free` (the benchmark smoke
#: test, whose benchmarks make SQLite sites of their own; the deployment drill, which always makes a
#: PostgreSQL database of its own). Their outcome does not depend on DATABASE_URL, so the second
#: database pass of `.ci/run` skips them (`--database-tests-only`); they ran in the first.
DATABASE_FREE_FOLDERS = ("tests/unit/", "tests/store/", "tests/support/")


flush_by_delete()  # PostgreSQL: 9-18 ms between transactional tests instead of 200 (tests/support/flushing.py)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-part",
        choices=("all", "parallel", "alone"),
        default="all",
        help=f"all tests; only those that may run in parallel (-n); or only those run alone ({', '.join(RUN_ALONE_MARKERS)})",
    )
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="skip the tests that never open a database (a second pass on another database: they ran in the first)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    part, database_only = config.getoption("run_part"), config.getoption("database_tests_only")
    kept, dropped = [], []
    for item in items:
        alone = any(item.get_closest_marker(marker) for marker in RUN_ALONE_MARKERS)
        chosen = part == "all" or alone == (part == "alone")
        (kept if chosen and not (database_only and _database_free(item)) else dropped).append(item)
        # A fixture built once per module or class (a live server, say) stays once: under pytest-xdist's
        # --dist loadgroup, the tests sharing it go to one process.
        if _shares_a_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _database_free(item: pytest.Item) -> bool:
    """Whether the test never opens a database; one that asks for Django's test database never is."""
    if item.get_closest_marker("django_db") or "_django_db_helper" in getattr(item, "fixturenames", ()):
        return False
    return bool(item.get_closest_marker("database_free")) or item.nodeid.startswith(DATABASE_FREE_FOLDERS)


def _shares_a_fixture(item: pytest.Item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return False
    return any(definitions[-1].scope in SHARED_SCOPES for definitions in fixtures.name2fixturedefs.values())


class MemoisingEmbeddings:
    """The real embedding service, remembering document vectors so each corpus text is embedded once per run.

    With `KBSITE_TEST_VECTORS` naming a file, the vectors are kept there as well, keyed by the model and
    the text: `.ci/run` names one for its two database passes, so the second embeds nothing the first
    did (the load test's 2,000 chunks alone take the model some 90 s). The vectors in it are the real
    model's, computed earlier in the same CI run; the queries of every test are always embedded anew.
    """

    def __init__(self, real) -> None:
        self._real = real
        self._vectors: dict[str, list[float]] = {}
        self._kept = VectorFile.from_environment()

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    async def embed_documents(self, texts):
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing and self._kept is not None:
            self._vectors.update(self._kept.read(self._real.model_id, missing))
            missing = [text for text in missing if text not in self._vectors]
        if missing:
            vectors = await self._real.embed_documents(missing)
            self._vectors.update(zip(missing, vectors))
            if self._kept is not None:
                self._kept.write(self._real.model_id, dict(zip(missing, vectors)))
        return [self._vectors[text] for text in texts]


class VectorFile:
    """Document vectors in a SQLite file that several test processes may share (pytest-xdist's, two passes).

    A cache, so nothing waits for the disk: write-ahead log, no sync at commit.
    """

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=OFF")
        with self._connection:
            self._connection.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @classmethod
    def from_environment(cls) -> VectorFile | None:
        path = os.environ.get("KBSITE_TEST_VECTORS")
        return cls(path) if path else None

    @staticmethod
    def _key(model_id: str, text: str) -> str:
        return hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()

    def read(self, model_id: str, texts: list[str]) -> dict[str, list[float]]:
        keys = {self._key(model_id, text): text for text in texts}
        ordered, found = list(keys), {}
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            rows = self._connection.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((keys[key], array("d", blob).tolist()) for key, blob in rows)
        return found

    def write(self, model_id: str, vectors: dict[str, list[float]]) -> None:
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                [(self._key(model_id, text), array("d", vector).tobytes()) for text, vector in vectors.items()],
            )


async def drop_all_collections() -> None:
    client = qdrant_service.client
    aliases = (await client.get_aliases()).aliases
    if aliases:
        await client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias.alias_name))
                for alias in aliases
            ]
        )
    for collection in (await client.get_collections()).collections:
        await client.delete_collection(collection.name)


@pytest.fixture(autouse=True)
def fresh_qdrant():
    """Every test starts from an empty embedded store, whatever the test before it left behind."""
    asyncio.run(drop_all_collections())
    yield


@pytest.fixture(scope="session", autouse=True)
def close_async_orm_connections(django_db_setup, django_db_blocker):
    """The async ORM's worker thread keeps its own connection; PostgreSQL cannot drop the test DB under it."""
    yield
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture
def qdrant_server():
    """The process's qdrant_service pointed at a loopback Qdrant gRPC server for one test."""
    with LoopbackQdrantServer() as server:
        qdrant_service.configure(QdrantConfig(url=server.url, grpc_port=server.grpc_port, timeout=5))
        try:
            yield server
        finally:
            qdrant_service.configure(QdrantConfig.from_settings())


@pytest.fixture(scope="session")
def ingestion_service() -> IngestionService:
    return IngestionService(embeddings=MemoisingEmbeddings(embedding_service))


@pytest.fixture
def test_user(db):
    return make_user(username="alice")


@pytest.fixture
def other_user(db):
    return make_user(username="bob")


async def index_corpus(
    *, owner, ingestion: IngestionService, chunk_size: int, chunk_overlap: int, name: str = "Test corpus"
):
    """A KB holding the whole test corpus, every document taken through the ingestion pipeline."""
    kb = await sync_to_async(make_kb)(owner=owner, name=name, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    documents = []
    for title, text in corpus():
        document = await sync_to_async(make_document)(kb=kb, title=title, text=text)
        document = await ingestion.ingest_now(document_id=document.id, worker_id="tests")
        assert document.status == DocumentStatus.READY, document.error
        documents.append(document)
    return kb, documents


@pytest.fixture
async def test_kb_with_documents(test_user, ingestion_service):
    """(kb, documents): the eight corpus documents, ready, in chunks of 64 tokens."""
    kb, documents = await index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=64, chunk_overlap=12)
    yield kb, documents
    await CollectionService().delete_knowledge_base(kb_id=kb.id)


@pytest.fixture
async def test_kb_with_indexed_chunks(test_user, ingestion_service):
    """A KB of the eight corpus documents in chunks of 40 tokens: well over 200 chunks."""
    kb, _ = await index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=40, chunk_overlap=8)
    yield kb
    await CollectionService().delete_knowledge_base(kb_id=kb.id)

"""Upgrading an embedded store written by qdrant-client's local mode: detected, refused with the fix, rebuilt into Edge."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid5

import pytest
from django.test import override_settings
from django.utils import timezone
from qdrant_client import models

from knowledge.ingestion.pipeline import IngestionService
from knowledge.models import DocumentStatus, KnowledgeBase
from knowledge.services import store_upgrade
from knowledge.services.knowledge_bases import active_index
from knowledge.services.permissions import PermissionService
from knowledge.services.store_upgrade import LayoutUpgradeService
from search.checks import check_qdrant_settings
from search.errors import VectorStoreUnavailable
from search.qdrant import LOCAL_MODE_ENGINE, QdrantConfig, is_local_mode_store, qdrant_service
from search.services import collections
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.collections import DENSE_VECTOR, KEYWORD_VECTOR, CollectionService
from search.services.search import SearchMode, SearchService
from tests.factories import make_document, make_kb, make_user
from tests.integration.test_commands import PASSAGES, TIDE_QUERY, command_error, run
from tests.support.tenants import as_written_before_search_keys, kb_points

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def store_path(tmp_path):
    yield tmp_path / "qdrant"
    qdrant_service.configure(QdrantConfig.from_settings())


def write_with_local_mode(path, documents) -> None:
    qdrant_service.configure(QdrantConfig(path=str(path), engine=LOCAL_MODE_ENGINE))
    service = IngestionService()
    for document in documents:
        assert (
            asyncio.run(service.ingest_now(document_id=document.id, worker_id="old")).status
            == DocumentStatus.READY
        )
    qdrant_service.close()


def test_a_local_mode_store_is_refused_with_the_command_that_upgrades_it(store_path) -> None:
    kb = make_kb(owner=make_user())
    write_with_local_mode(store_path, [make_document(kb=kb, title="Tides", text=PASSAGES["tides.txt"])])
    qdrant_service.configure(QdrantConfig(path=str(store_path)))

    with pytest.raises(VectorStoreUnavailable, match="manage.py upgrade_store"):
        asyncio.run(qdrant_service.check_available())
    with override_settings(QDRANT={"URL": None, "PATH": str(store_path), "TIMEOUT": 10}):
        problems = check_qdrant_settings()
    assert [p.id for p in problems] == ["search.E007"]
    assert "upgrade_store" in problems[0].hint


def test_upgrade_store_keeps_the_old_folder_and_rebuilds_every_kb_into_edge(store_path) -> None:
    owner = make_user()
    kb = make_kb(owner=owner)
    documents = [make_document(kb=kb, title=name, text=text) for name, text in PASSAGES.items()]
    write_with_local_mode(store_path, documents)
    # The KB was made before hybrid search: no keyword settings.
    KnowledgeBase.objects.filter(pk=kb.pk).update(keyword_settings=None)
    qdrant_service.configure(QdrantConfig(path=str(store_path)))

    output = run("upgrade_store", interactive=False)

    kept = next(store_path.parent.glob("qdrant.local-mode-*"))
    assert is_local_mode_store(kept) and not is_local_mode_store(store_path)
    assert str(kept) in output and "Upgraded 1 knowledge base to Qdrant Edge" in output
    kb.refresh_from_db()
    assert kb.keyword_settings is not None
    total = sum(d.chunk_count for d in kb.documents.all())
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id)) == total > 0
    response = asyncio.run(
        SearchService(PermissionService(), SearchAuditService()).asearch(
            query=TIDE_QUERY, kb_ids=[kb.id], user_id=owner.id, mode=SearchMode.HYBRID
        )
    )
    assert response.mode == SearchMode.HYBRID and response.results[0].title == "tides.txt"
    assert "nothing to do" in run("upgrade_store", interactive=False)


def test_upgrade_store_refuses_a_qdrant_server(qdrant_server) -> None:
    assert "only an embedded store" in command_error("upgrade_store", interactive=False)


# --- per-KB collections (kbsite before tenants) into shared collections ---------------------------

LANDED_NAMESPACE = UUID("8f9c1d52-6a3e-4c1b-9a57-2f4e7b0c9d11")


async def as_the_landed_release_kept_it(kb: KnowledgeBase, *, hybrid: bool) -> int:
    """Move the KB's points into its own collection `kb_<id>_v1` behind the alias `kb_<id>`, as the landed
    release kept them: its point ids (document/chunk), its payload (no tenant key), and, for a KB from
    before hybrid search, one unnamed dense vector. Returns the number of points."""
    client = qdrant_service.client
    points = await kb_points(kb.id, with_vectors=True)
    name = f"kb_{kb.id}_v1"
    dense = models.VectorParams(size=kb.vector_size, distance=models.Distance.COSINE)
    if hybrid:
        await client.create_collection(
            collection_name=name,
            vectors_config={DENSE_VECTOR: dense},
            sparse_vectors_config={KEYWORD_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
    else:
        await client.create_collection(collection_name=name, vectors_config=dense)
    await client.upsert(
        collection_name=name,
        points=[
            models.PointStruct(
                id=str(uuid5(LANDED_NAMESPACE, f"{p.payload['document_id']}/{p.payload['chunk_index']}")),
                vector=p.vector if hybrid else p.vector[DENSE_VECTOR],
                payload={key: value for key, value in p.payload.items() if key not in ("tenant", "search_key")},
            )
            for p in points
        ],
        wait=True,
    )
    await client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=f"kb_{kb.id}")
            )
        ]
    )
    await CollectionService().delete_knowledge_base(kb_id=kb.id)
    return len(points)


@pytest.fixture
def landed_store(test_user, ingestion_service):
    """Two KBs in per-KB collections (one from before hybrid search) and a collection of a KB deleted since."""
    kbs = {}
    for slug, hybrid in (("alpha", True), ("beta", False)):
        kb = make_kb(owner=test_user, name=slug.title(), slug=slug)
        for name, text in PASSAGES.items():
            document = make_document(kb=kb, title=name, text=text)
            assert (
                asyncio.run(ingestion_service.ingest_now(document_id=document.id, worker_id="t")).status
                == "ready"
            )
        if not hybrid:
            KnowledgeBase.objects.filter(pk=kb.pk).update(keyword_settings=None)
        kbs[slug] = (kb, asyncio.run(as_the_landed_release_kept_it(kb, hybrid=hybrid)))
    gone = make_kb(owner=test_user, name="Gone", slug="gone")
    ingestion = asyncio.run(
        ingestion_service.ingest_now(
            document_id=make_document(kb=gone, title="x", text=PASSAGES["tides.txt"]).id, worker_id="t"
        )
    )
    assert ingestion.status == "ready"
    asyncio.run(as_the_landed_release_kept_it(gone, hybrid=True))
    KnowledgeBase.objects.filter(pk=gone.pk).delete()
    return kbs, f"kb_{gone.pk}"


def assert_moved(kb: KnowledgeBase, points: int, user) -> None:
    kb.refresh_from_db()
    assert kb.index_generation == 2 and kb.keyword_settings is not None
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id)) == points > 0
    response = asyncio.run(
        SearchService(PermissionService(), SearchAuditService()).asearch(
            query=TIDE_QUERY, kb_ids=[kb.id], user_id=user.id, mode=SearchMode.HYBRID
        )
    )
    assert response.results[0].title == "tides.txt" and {r.kb_id for r in response.results} == {kb.id}


def test_upgrade_layout_moves_every_kbs_collection_into_the_shared_one_and_names_what_it_left(
    landed_store, test_user
) -> None:
    kbs, orphan = landed_store

    output = run("upgrade_layout", interactive=False)

    assert f"Moved 2 knowledge bases ({sum(points for _, points in kbs.values())} chunks)" in output
    for kb, points in kbs.values():
        assert_moved(kb, points, test_user)
    aliases = {a.alias_name for a in asyncio.run(qdrant_service.client.get_aliases()).aliases}
    assert aliases == {orphan, active_index(kbs["alpha"][0]).collection}
    # What is left is the collection of a KB the database no longer has: named, and never taken.
    assert "Moved 0 knowledge bases" in run("upgrade_layout", interactive=False)
    assert asyncio.run(qdrant_service.client.count(orphan, exact=True)).count > 0


def test_an_upgrade_stopped_part_way_is_finished_by_running_it_again(
    landed_store, test_user, monkeypatch
) -> None:
    kbs, orphan = landed_store
    monkeypatch.setattr(store_upgrade, "MOVE_BATCH", 2)
    calls = []

    def stop_after_the_first_batch(moved: int, slug: str) -> None:
        calls.append(slug)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(LayoutUpgradeService().move_all(on_progress=stop_after_the_first_batch))
    alpha, points = kbs["alpha"]
    alpha.refresh_from_db()
    assert alpha.index_generation == 1 and asyncio.run(ChunkService().count_chunks(kb_id=alpha.id)) == 0
    assert asyncio.run(qdrant_service.client.count(f"kb_{alpha.id}", exact=True)).count == points

    output = run("upgrade_layout", interactive=False)

    assert "Moved 2 knowledge bases" in output
    for kb, points in kbs.values():
        assert_moved(kb, points, test_user)
    assert f"kb_{alpha.id}" not in {
        a.alias_name for a in asyncio.run(qdrant_service.client.get_aliases()).aliases
    }


# --- search keys (kbsite before them) -----------------------------------------------------------


async def without_search_keys(kb: KnowledgeBase) -> int:
    """Write the KB's points again as the release before search keys wrote them."""
    points = await kb_points(kb.id, with_vectors=True)
    await as_written_before_search_keys(active_index(kb).collection, points)
    return len(points)


def hybrid_titles(kb: KnowledgeBase, user, **request) -> list[str]:
    response = asyncio.run(
        SearchService(PermissionService(), SearchAuditService()).asearch(
            query=TIDE_QUERY, kb_ids=[kb.id], user_id=user.id, mode=SearchMode.HYBRID, limit=50, **request
        )
    )
    return [result.title for result in response.results]


def test_upgrade_search_keys_gives_chunks_from_before_them_their_keys_and_searches_find_the_same(
    test_user, ingestion_service
) -> None:
    kb = make_kb(owner=test_user)
    documents = []
    for name, text in PASSAGES.items():
        documents.append(make_document(kb=kb, title=name, text=text))
        assert asyncio.run(ingestion_service.ingest_now(document_id=documents[-1].id, worker_id="t")).status == "ready"
    tides = next(d for d in documents if d.title == "tides.txt")
    asyncio.run(ChunkService().set_archived(kb_id=kb.id, document_id=tides.id, archived_at=timezone.now()))
    live, everything = hybrid_titles(kb, test_user), hybrid_titles(kb, test_user, include_archived=True)
    assert "tides.txt" not in live and "tides.txt" in everything
    points = asyncio.run(without_search_keys(kb))

    # Until the upgrade the collection is searched by tenant key and archive flag: the same answers.
    assert not asyncio.run(CollectionService().searches_by_key(collection=active_index(kb).collection))
    assert hybrid_titles(kb, test_user) == live
    assert hybrid_titles(kb, test_user, include_archived=True) == everything

    output = run("upgrade_search_keys")

    assert f"Wrote the search keys of {points} chunks." in output
    assert all("search_key" in p.payload for p in asyncio.run(kb_points(kb.id)))
    collections._keyed_collections.clear()
    assert asyncio.run(CollectionService().searches_by_key(collection=active_index(kb).collection))
    assert hybrid_titles(kb, test_user) == live
    assert hybrid_titles(kb, test_user, include_archived=True) == everything
    assert "nothing to do" in run("upgrade_search_keys")

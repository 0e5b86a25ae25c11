"""Upgrading an embedded store written by qdrant-client's local mode: detected, refused with the fix, rebuilt into Edge."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from knowledge.ingestion.pipeline import IngestionService
from knowledge.models import DocumentStatus, KnowledgeBase
from knowledge.services.permissions import PermissionService
from search.checks import check_qdrant_settings
from search.errors import VectorStoreUnavailable
from search.qdrant import LOCAL_MODE_ENGINE, QdrantConfig, is_local_mode_store, qdrant_service
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.search import SearchMode, SearchService
from tests.factories import make_document, make_kb, make_user
from tests.integration.test_commands import PASSAGES, TIDE_QUERY, command_error, run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def store_path(tmp_path):
    yield tmp_path / "qdrant"
    qdrant_service.configure(QdrantConfig.from_settings())


def write_with_local_mode(path, documents) -> None:
    qdrant_service.configure(QdrantConfig(path=str(path), engine=LOCAL_MODE_ENGINE))
    service = IngestionService()
    for document in documents:
        assert asyncio.run(service.ingest_now(document_id=document.id, worker_id="old")).status == DocumentStatus.READY
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
    assert str(kept) in output and "Upgraded 1 knowledge bases" in output
    kb.refresh_from_db()
    assert kb.keyword_settings is not None
    total = sum(d.chunk_count for d in kb.documents.all())
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id)) == total > 0
    response = asyncio.run(
        SearchService(PermissionService(), SearchAuditService()).search(
            query=TIDE_QUERY, kb_ids=[kb.id], user_id=owner.id, mode=SearchMode.HYBRID
        )
    )
    assert response.mode == SearchMode.HYBRID and response.results[0].title == "tides.txt"
    assert "nothing to do" in run("upgrade_store", interactive=False)


def test_upgrade_store_refuses_a_qdrant_server(qdrant_server) -> None:
    assert "only an embedded store" in command_error("upgrade_store", interactive=False)

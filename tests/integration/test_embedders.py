"""Knowledge bases embedded through an OpenAI-compatible endpoint: a real HTTP server process serving the built-in model."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.admin import KnowledgeBaseAdmin
from knowledge.forms import KnowledgeBaseForm
from knowledge.ingestion.pipeline import EMBEDDER_WAIT, IngestionService, IngestionSettings
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.knowledge_bases import active_index
from knowledge.services.permissions import PermissionService
from search.embedding import embedding_service
from search.embedding.minilm import MiniLMEmbedder
from search.embedding.openai_compatible import OpenAICompatibleEmbedder
from search.embedding.registry import EndpointSettings, embedders, endpoints_from_settings
from search.errors import EmbedderRefused, EmbedderUnavailable
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.collections import model_collection_alias
from search.services.search import SearchMode, SearchService
from tests.api.test_api import bearer, client, issue_token
from tests.factories import corpus, make_document, make_kb, make_user
from tests.support.embeddings_server import EmbeddingsServer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ENDPOINT = "minilm-http"
KEY_VARIABLE = "KBSITE_TEST_EMBEDDER_KEY"
TIDES = next(item for item in corpus() if "Tides" in item[0])
BEES = next(item for item in corpus() if "Honeybee" in item[0])


@pytest.fixture(scope="module")
def server():
    with EmbeddingsServer() as running:
        yield running


@pytest.fixture
def endpoint(server, monkeypatch):
    """The endpoint configured as an embedder named ENDPOINT, its vector size left to be asked; fresh per test."""
    if server.process is None:
        server.start()  # a test before this one stopped it
    server.control(fail=None)
    monkeypatch.setenv(KEY_VARIABLE, server.api_key)
    embedders.configure(
        {
            ENDPOINT: EndpointSettings(
                name=ENDPOINT,
                base_url=server.url,
                model="all-MiniLM-L6-v2",
                batch_size=8,
                api_key_env=KEY_VARIABLE,
                timeout=10,
                longest_retry_after=5,
            )
        }
    )
    yield server
    embedders.configure(endpoints_from_settings()[0])


def search_service() -> SearchService:
    return SearchService(PermissionService(), SearchAuditService())


def quick_ingestion() -> IngestionService:
    return IngestionService(config=IngestionSettings(store_retry_seconds=0.05, store_patience_seconds=0.5))


async def endpoint_kb(owner, name: str = "Through HTTP"):
    return await sync_to_async(make_kb)(
        owner=owner, name=name, embedding_model=ENDPOINT, chunk_size=64, chunk_overlap=12
    )


async def indexed(kb, *documents: tuple[str, str]) -> list[Document]:
    ingestion = IngestionService()
    ready = []
    for title, text in documents:
        document = await sync_to_async(make_document)(kb=kb, title=title, text=text)
        document = await ingestion.ingest_now(document_id=document.id, worker_id="tests")
        assert document.status == DocumentStatus.READY, document.error
        ready.append(document)
    return ready


def test_the_endpoint_and_the_built_in_model_give_the_same_vectors(endpoint, monkeypatch) -> None:
    texts = [TIDES[1], BEES[1][:300], "a short query about the sea"]
    through_http = OpenAICompatibleEmbedder(
        name=ENDPOINT, base_url=endpoint.url, model="all-MiniLM-L6-v2", api_key_env=KEY_VARIABLE
    )

    remote, local = through_http.embed(texts), MiniLMEmbedder(threads=1).embed(texts)

    assert through_http.dimensions == 384  # learned from the first answer
    cosines = (remote * local).sum(axis=1)
    assert remote.shape == local.shape == (3, 384)
    assert np.all(cosines > 0.9999), cosines


async def test_a_kb_made_for_the_endpoint_is_indexed_and_searched_through_it_in_its_own_collection(
    endpoint, test_user
) -> None:
    kb = await endpoint_kb(test_user)
    await indexed(kb, TIDES, BEES)

    response = await search_service().asearch(
        query="why does the sea rise", kb_ids=[kb.id], user_id=test_user.id
    )

    assert (kb.embedding_model, kb.vector_size) == (ENDPOINT, 384)  # the size asked of the endpoint
    assert active_index(kb).collection == model_collection_alias(ENDPOINT, 384)
    assert active_index(kb).collection != model_collection_alias(embedding_service.model_id, 384)
    assert response.results and "Tides" in response.results[0].title
    stats = endpoint.stats()
    assert stats["texts"] > 2 and stats["refused"] == 0


async def test_one_search_over_kbs_of_two_models_embeds_once_per_model_and_fuses_their_rankings(
    endpoint, test_user
) -> None:
    built_in = await sync_to_async(make_kb)(owner=test_user, name="Built in", chunk_size=64, chunk_overlap=12)
    remote = await endpoint_kb(test_user)
    await indexed(built_in, BEES)
    await indexed(remote, TIDES)
    before = endpoint.stats()["texts"]

    response = await search_service().asearch(
        query="the moon pulls the ocean",
        kb_ids=[built_in.id, remote.id],
        user_id=test_user.id,
        mode=SearchMode.SEMANTIC,
        limit=4,
    )

    assert endpoint.stats()["texts"] == before + 1  # the query, once, for the endpoint's KB
    # Fused by rank, not by the two models' cosines: the lists interleave, though every tide chunk is
    # closer to the query than any bee chunk.
    kbs = [result.kb_id for result in response.results]
    assert kbs == [built_in.id, remote.id, built_in.id, remote.id]
    assert "Honeybee" in response.results[0].title and "Tides" in response.results[1].title


async def test_while_the_endpoint_is_down_documents_wait_without_spending_an_attempt_and_then_index(
    endpoint, test_user
) -> None:
    kb = await endpoint_kb(test_user)
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    endpoint.stop()
    ingestion = quick_ingestion()

    waiting = await ingestion.ingest_until_settled(document_id=document.id, worker_id="tests")

    assert waiting.status == DocumentStatus.PENDING and waiting.attempts == 0
    assert waiting.error.startswith(EMBEDDER_WAIT) and ENDPOINT in waiting.error
    endpoint.start()
    ready = await ingestion.ingest_until_settled(document_id=document.id, worker_id="tests")
    assert ready.status == DocumentStatus.READY and ready.error == ""


async def test_an_endpoint_answering_503_holds_documents_as_an_outage_does(endpoint, test_user) -> None:
    kb = await endpoint_kb(test_user)
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    endpoint.control(fail="unavailable", times=3)

    ready = await quick_ingestion().ingest_until_settled(document_id=document.id, worker_id="tests")

    assert ready.status == DocumentStatus.READY and ready.error == ""
    assert endpoint.stats()["failed"] == 3


async def test_a_search_while_the_endpoint_is_down_answers_503_naming_the_embedder(endpoint) -> None:
    owner = await sync_to_async(make_user)(username="searcher")
    kb = await endpoint_kb(owner)
    await indexed(kb, TIDES)
    headers = await sync_to_async(lambda: bearer(issue_token(owner)))()
    endpoint.control(fail="unavailable")

    response = await client.post(
        "/search", json={"query": "tides and the moon", "kb_ids": [str(kb.id)]}, headers=headers
    )

    assert response.status_code == 503
    assert response.json()["code"] == "embedder_unavailable" and ENDPOINT in response.json()["message"]
    keyword = await client.post(
        "/search", json={"query": "tides", "kb_ids": [str(kb.id)], "mode": "keyword"}, headers=headers
    )
    assert keyword.status_code == 200 and keyword.json()["results"]  # BM25 needs no embedder


async def test_a_429_is_waited_out_for_as_long_as_retry_after_asks(endpoint, test_user) -> None:
    kb = await endpoint_kb(test_user)
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    endpoint.control(fail="rate_limit", times=1, retry_after="1")

    started = time.monotonic()
    ready = await IngestionService().ingest_now(document_id=document.id, worker_id="tests")

    assert ready.status == DocumentStatus.READY and ready.error == ""
    assert time.monotonic() - started >= 1.0
    assert endpoint.stats()["rate_limited"] == 1


async def test_a_429_asking_longer_than_kbsite_waits_holds_the_document_like_an_outage(
    endpoint, test_user
) -> None:
    kb = await endpoint_kb(test_user)
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    endpoint.control(fail="rate_limit", times=1, retry_after="3600")

    waiting = await IngestionService().ingest_now(document_id=document.id, worker_id="tests")

    assert waiting.status == DocumentStatus.PENDING and waiting.attempts == 0
    assert waiting.error.startswith(EMBEDDER_WAIT) and "429" in waiting.error


@pytest.mark.parametrize(
    ("failure", "said"),
    [("wrong_size", "vectors of 383 dimensions, not 384"), ("wrong_count", "vectors for")],
)
async def test_an_answer_of_the_wrong_size_or_count_fails_the_document_saying_so(
    endpoint, test_user, failure, said
) -> None:
    kb = await endpoint_kb(test_user)
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    endpoint.control(fail=failure)

    failed = await IngestionService().ingest_now(document_id=document.id, worker_id="tests")

    assert failed.status == DocumentStatus.FAILED and said in failed.error and ENDPOINT in failed.error
    assert await ChunkService().count_chunks(kb_id=kb.id) == 0


async def test_a_refused_key_is_one_clear_error_that_never_shows_the_key(
    endpoint, test_user, monkeypatch, caplog
) -> None:
    kb = await endpoint_kb(test_user)  # its size asked with the right key
    document = await sync_to_async(make_document)(kb=kb, title=TIDES[0], text=TIDES[1])
    wrong = "sk-wrong-" + "x" * 24
    monkeypatch.setenv(KEY_VARIABLE, wrong)
    embedders.configure(
        endpoints={
            ENDPOINT: EndpointSettings(
                name=ENDPOINT, base_url=endpoint.url, model="m", api_key_env=KEY_VARIABLE
            )
        }
    )

    with caplog.at_level(logging.DEBUG):
        waiting = await IngestionService().ingest_now(document_id=document.id, worker_id="tests")
        with pytest.raises(EmbedderRefused) as refused:
            await search_service().asearch(query="tides", kb_ids=[kb.id], user_id=test_user.id)

    assert waiting.status == DocumentStatus.PENDING and waiting.attempts == 0
    assert "refused kbsite's API key (401)" in waiting.error and KEY_VARIABLE in waiting.error
    assert isinstance(refused.value, EmbedderUnavailable) and refused.value.code == "embedder_key_refused"
    assert endpoint.stats()["refused"] >= 2
    for shown in (
        waiting.error,
        refused.value.message,
        caplog.text,
        repr(embedders.service(ENDPOINT).embedder),
    ):
        assert wrong not in shown and endpoint.api_key not in shown


def test_reindex_recreate_moves_a_kb_to_the_endpoint_and_back_never_mixing_models(
    endpoint, test_user
) -> None:
    kb = make_kb(owner=test_user, name="Moving", chunk_size=64, chunk_overlap=12)
    documents = asyncio.run(indexed(kb, TIDES, BEES))
    built_in = active_index(kb)

    with pytest.raises(CommandError, match="--recreate"):
        call_command("reindex", "--kb", kb.slug, "--model", ENDPOINT, "--no-input", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No embedder named 'nowhere'"):
        call_command(
            "reindex", "--kb", kb.slug, "--recreate", "--model", "nowhere", "--no-input", stdout=io.StringIO()
        )
    out = io.StringIO()
    call_command("reindex", "--kb", kb.slug, "--recreate", "--model", ENDPOINT, "--no-input", stdout=out)

    kb.refresh_from_db()
    moved = active_index(kb)
    assert (kb.embedding_model, kb.vector_size, moved.generation) == (ENDPOINT, 384, 2)
    assert moved.collection in out.getvalue()
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id, index=built_in)) == 0
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id)) == sum(d.chunk_count for d in documents)
    results = asyncio.run(
        search_service().semantic_search(query="why does the sea rise", kb_ids=[kb.id], user_id=test_user.id)
    )
    assert results and "Tides" in results[0].title

    call_command(
        "reindex", "--kb", kb.slug, "--recreate", "--no-input", stdout=io.StringIO()
    )  # keeps its model
    kb.refresh_from_db()
    assert kb.embedding_model == ENDPOINT and kb.index_generation == 3
    call_command(
        "reindex",
        "--kb",
        kb.slug,
        "--recreate",
        "--model",
        embedding_service.model_id,
        "--no-input",
        stdout=io.StringIO(),
    )
    kb.refresh_from_db()
    assert kb.embedding_model == embedding_service.model_id
    assert asyncio.run(ChunkService().count_chunks(kb_id=kb.id, index=moved)) == 0


async def test_a_kb_of_an_endpoint_no_longer_configured_asks_for_a_rebuild(endpoint, test_user) -> None:
    kb = await endpoint_kb(test_user)
    await indexed(kb, TIDES)
    embedders.configure({})

    document = await sync_to_async(make_document)(kb=kb, title=BEES[0], text=BEES[1])
    failed = await IngestionService().ingest_now(document_id=document.id, worker_id="tests")

    assert (
        failed.status == DocumentStatus.FAILED and "--recreate" in failed.error and ENDPOINT in failed.error
    )
    response = await search_service().asearch(query="tides", kb_ids=None, user_id=test_user.id)
    assert response.results == [] and any("reindex --recreate" in notice for notice in response.notices)


def test_the_admin_form_offers_the_configured_embedders_and_creates_the_kb_for_the_choice(
    endpoint, test_user
) -> None:
    form = KnowledgeBaseForm(
        data={
            "name": "Chosen",
            "slug": "chosen",
            "chunk_size": 64,
            "chunk_overlap": 8,
            "embedder": ENDPOINT,
            "owner": test_user.pk,
        }
    )
    assert [value for value, _ in form.fields["embedder"].choices] == [embedding_service.model_id, ENDPOINT]
    assert form.is_valid(), form.errors

    kb = form.save(commit=False)
    KnowledgeBaseAdmin(KnowledgeBase, site).save_model(request=None, obj=kb, form=form, change=False)

    assert KnowledgeBase.objects.get(slug="chosen").embedding_model == ENDPOINT
    endpoint.stop()
    unreachable = KnowledgeBaseForm(
        data={"name": "Later", "slug": "later", "chunk_size": 64, "chunk_overlap": 8, "embedder": ENDPOINT}
    )
    embedders.configure({ENDPOINT: EndpointSettings(name=ENDPOINT, base_url=endpoint.url, model="m")})
    assert not unreachable.is_valid() and "did not answer" in str(unreachable.errors)


def test_the_members_new_kb_page_offers_the_embedders_only_when_there_is_a_choice(endpoint, test_user) -> None:
    from django.test import Client
    from django.urls import reverse

    browser = Client()
    browser.force_login(test_user)
    page = browser.get(reverse("web:kb_new")).content.decode()
    assert f'<option value="{ENDPOINT}"' in page and f'value="{embedding_service.model_id}" selected' in page

    made = browser.post(
        reverse("web:kb_new"),
        {"name": "Remote notes", "chunk_size": 64, "chunk_overlap": 8, "embedding_model": ENDPOINT},
    )

    kb = KnowledgeBase.objects.get(name="Remote notes")
    assert made.status_code == 302 and (kb.embedding_model, kb.vector_size) == (ENDPOINT, 384)
    embedders.configure({})
    assert 'name="embedding_model"' not in browser.get(reverse("web:kb_new")).content.decode()


def test_eval_retrieval_measures_a_model_through_its_endpoint(endpoint, tmp_path) -> None:
    from tests.integration.test_eval_retrieval import evaluate, write_beir

    before = endpoint.stats()["texts"]
    output, figures = evaluate(
        write_beir(tmp_path / "tiny"), "--split", "test", "--modes", "semantic", "--embedder", ENDPOINT
    )

    assert figures["embedder"] == ENDPOINT and figures["modes"]["semantic"]["recall@10"] > 0.5
    assert endpoint.stats()["texts"] >= before + 12 + 4  # the corpus and the queries went through it
    assert ENDPOINT in output
    assert not KnowledgeBase.objects.exists()


async def test_the_api_creates_a_kb_for_a_configured_embedder_and_refuses_another(endpoint) -> None:
    owner = await sync_to_async(make_user)(username="creator")
    headers = await sync_to_async(lambda: bearer(issue_token(owner)))()

    made = await client.post("/kbs", json={"name": "Remote", "embedding_model": ENDPOINT}, headers=headers)
    unknown = await client.post(
        "/kbs", json={"name": "Nowhere", "embedding_model": "nowhere"}, headers=headers
    )

    assert made.status_code == 201, made.json()
    assert (made.json()["embedding_model"], made.json()["vector_size"]) == (ENDPOINT, 384)
    assert unknown.status_code == 422 and ENDPOINT in unknown.json()["message"]
    assert not await KnowledgeBase.objects.filter(name="Nowhere").aexists()


def test_an_endpoint_kb_exported_imports_with_its_vectors_where_the_site_has_that_embedder(
    endpoint, test_user, tmp_path
) -> None:
    kb = make_kb(owner=test_user, name="Exported", embedding_model=ENDPOINT, chunk_size=64, chunk_overlap=12)
    documents = asyncio.run(indexed(kb, TIDES, BEES))
    archive = tmp_path / "exported.kbsite"
    call_command("export_kb", kb.slug, "--output", str(archive), stdout=io.StringIO())
    embedded = endpoint.stats()["texts"]

    call_command("import_kb", str(archive), "--slug", "copy", stdout=io.StringIO())

    copy = KnowledgeBase.objects.get(slug="copy")
    assert (copy.embedding_model, copy.vector_size) == (ENDPOINT, 384)
    assert endpoint.stats()["texts"] == embedded  # its vectors were kept, nothing embedded again
    assert asyncio.run(ChunkService().count_chunks(kb_id=copy.id)) == sum(d.chunk_count for d in documents)
    embedders.configure({})
    with pytest.raises(CommandError, match="no embedder of this site makes those"):
        call_command("import_kb", str(archive), "--slug", "other", stdout=io.StringIO())


async def test_a_search_given_a_query_vector_of_the_wrong_size_answers_502_saying_so(endpoint) -> None:
    owner = await sync_to_async(make_user)(username="sizer")
    kb = await endpoint_kb(owner)
    await indexed(kb, TIDES)
    headers = await sync_to_async(lambda: bearer(issue_token(owner)))()
    endpoint.control(fail="wrong_size")

    response = await client.post(
        "/search", json={"query": "tides of the sea", "kb_ids": [str(kb.id)]}, headers=headers
    )

    assert response.status_code == 502 and response.json()["code"] == "embedder_bad_response"
    assert "383 dimensions" in response.json()["message"] and ENDPOINT in response.json()["message"]

"""How the OpenAI-compatible embedder calls its endpoint, read its settings, and how rankings of two models fuse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from search.embedding import EmbeddingConfig
from search.embedding.openai_compatible import OpenAICompatibleEmbedder, retry_after_seconds
from search.embedding.registry import EmbedderRegistry, EndpointSettings
from search.errors import EmbedderRefused, EmbedderResponseInvalid, EmbedderUnavailable, UnknownEmbedder
from search.services.search import fuse_by_rank

KEY = "sk-test-" + "s" * 24


def answer(request: httpx.Request, size: int = 3) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    data = [{"index": i, "embedding": [float(i + 1)] + [0.0] * (size - 1)} for i in range(len(texts))]
    return httpx.Response(200, json={"data": list(reversed(data)), "model": "m", "usage": {}})


def embedder(handler, **options) -> tuple[OpenAICompatibleEmbedder, list[float]]:
    slept: list[float] = []
    options = {"name": "remote", "base_url": "http://embed.test/v1", "model": "m", "dimensions": 3, **options}
    built = OpenAICompatibleEmbedder(transport=httpx.MockTransport(handler), sleep=slept.append, **options)
    return built, slept


def test_texts_go_in_batches_of_the_set_size_as_openai_requests_with_the_key(monkeypatch) -> None:
    monkeypatch.setenv("REMOTE_KEY", KEY)
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return answer(request)

    remote, _ = embedder(handler, batch_size=2, api_key_env="REMOTE_KEY")
    vectors = remote.embed(["a", "b", "c"])

    assert [json.loads(r.content) for r in seen] == [
        {"model": "m", "input": ["a", "b"]},
        {"model": "m", "input": ["c"]},
    ]
    assert {str(r.url) for r in seen} == {"http://embed.test/v1/embeddings"}
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in seen)
    # Answers put back in the order of `index`, and normalised.
    assert vectors.shape == (3, 3) and np.allclose(vectors[:, 0], 1.0)
    assert KEY not in repr(remote)


def test_a_429_is_retried_after_the_seconds_or_the_date_it_asks() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # past: at once
            None,
        ]
    )

    def handler(request):
        return next(answers) or answer(request)

    remote, slept = embedder(handler)

    assert remote.embed(["a"]).shape == (1, 3)
    assert slept == [2.0, 0.0]


def test_a_429_asking_too_long_or_too_often_makes_the_endpoint_unavailable() -> None:
    remote, slept = embedder(lambda request: httpx.Response(429, headers={"Retry-After": "600"}))
    with pytest.raises(EmbedderUnavailable, match="429"):
        remote.embed(["a"])
    assert slept == []

    remote, slept = embedder(lambda request: httpx.Response(429), rate_limit_retries=2)
    with pytest.raises(EmbedderUnavailable):
        remote.embed(["a"])
    assert slept == [1.0, 2.0]  # doubling without Retry-After


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Thu, 03 Dec 2026 09:00:30 GMT", now=lambda: now) == 30.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_its_own_error_naming_the_variable_not_the_key(monkeypatch, status) -> None:
    monkeypatch.setenv("REMOTE_KEY", KEY)
    remote, _ = embedder(
        lambda request: httpx.Response(status, json={"error": {"message": KEY}}), api_key_env="REMOTE_KEY"
    )

    with pytest.raises(EmbedderRefused) as refused:
        remote.embed(["a"])

    assert "REMOTE_KEY" in refused.value.message and KEY not in refused.value.message


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (lambda request: answer(request, size=4), "4 dimensions, not 3"),
        (
            lambda request: httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0, 0]}]}),
            "1 vectors for 2",
        ),
        (lambda request: httpx.Response(200, text="<html>"), "other than OpenAI"),
        (lambda request: httpx.Response(400, text="bad input"), "answered 400"),
    ],
)
def test_an_answer_that_is_not_one_vector_of_the_size_per_text_is_invalid(handler, said) -> None:
    remote, _ = embedder(handler)
    with pytest.raises(EmbedderResponseInvalid, match=said):
        remote.embed(["a", "b"])


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 503, 502])
def test_an_endpoint_down_or_failing_is_unavailable(failure) -> None:
    def handler(request):
        if isinstance(failure, Exception):
            raise failure
        return httpx.Response(failure)

    with pytest.raises(EmbedderUnavailable) as down:
        embedder(handler)[0].embed(["a"])
    assert not isinstance(down.value, EmbedderRefused) and "remote" in down.value.message


def test_the_vector_size_is_asked_once_when_not_set() -> None:
    calls = []

    def handler(request):
        calls.append(request)
        return answer(request, size=5)

    remote, _ = embedder(handler, dimensions=None)
    assert remote.dimensions == 5 and remote.dimensions == 5
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("conf", "said"),
    [
        ({"MODEL": "m"}, "needs BASE_URL"),
        ({"BASE_URL": "ftp://x", "MODEL": "m"}, "http://"),
        ({"BASE_URL": "http://x", "MODEL": "m", "BATCH_SIZE": "many"}, "whole"),
        ({"BASE_URL": "http://x", "MODEL": "m", "BATCH_SIZE": 0}, "above 0"),
        ({"BASE_URL": "http://x", "MODEL": "m", "TYPE": "cohere"}, "TYPE"),
    ],
)
def test_endpoint_settings_say_what_is_wrong(conf, said) -> None:
    with pytest.raises(ValueError, match=said):
        EndpointSettings.from_setting("e", conf)


def test_the_registry_gives_one_service_per_model_and_names_the_configured_ones_when_asked_for_another() -> (
    None
):
    default = SimpleNamespace(
        model_id="built-in", config=EmbeddingConfig(query_batch_size=8, query_cache_size=0, query_workers=3)
    )
    registry = EmbedderRegistry(default)
    registry.configure(
        {"e5": EndpointSettings.from_setting("e5", {"BASE_URL": "http://x/v1", "MODEL": "e5"})}
    )

    assert registry.names() == ["built-in", "e5"]
    assert registry.service("built-in") is default
    assert registry.service("e5") is registry.service("e5")
    assert registry.service("e5").config.document_batch_size == 32
    assert registry.service("e5").config.document_workers == 1
    assert registry.service("e5").config.query_workers == 3
    with pytest.raises(UnknownEmbedder, match="built-in, e5"):
        registry.service("gone")


def test_rankings_of_two_models_fuse_by_rank_not_by_score() -> None:
    a = [SimpleNamespace(id="a1", score=0.9), SimpleNamespace(id="a2", score=0.8)]
    b = [SimpleNamespace(id="b1", score=0.2), SimpleNamespace(id="a2", score=0.1)]

    fused = fuse_by_rank([a, b], key=lambda hit: hit.id)

    # a2 is in both lists (1/62 + 1/62 beats 1/61); then each list's best, in the lists' order.
    assert [hit.id for hit in fused] == ["a2", "a1", "b1"]
    assert [hit.id for hit in fuse_by_rank([a], key=lambda hit: hit.id)] == ["a1", "a2"]

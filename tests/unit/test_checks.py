"""System checks tell an operator what is misconfigured before a request fails."""

from __future__ import annotations

from datetime import timedelta

import pytest

from knowledge.checks import check_login_lockout_settings
from search.checks import check_embedders, check_embedding_settings, check_qdrant_settings

pytestmark = pytest.mark.unit


def ids(problems) -> list[str]:
    return [problem.id for problem in problems]


def test_the_embedded_default_passes(settings) -> None:
    assert check_qdrant_settings() == [] and check_embedding_settings() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"URL": "ftp://qdrant:6333"}, "search.E001"),
        ({"URL": "http://qdrant.example.com:6333", "API_KEY": "secret"}, "search.W001"),
        ({"URL": "http://qdrant:6333", "GRPC_PORT": 70000}, "search.E002"),
        ({"TIMEOUT": 0}, "search.E005"),
    ],
)
def test_bad_qdrant_settings_are_reported(settings, overrides, expected) -> None:
    settings.QDRANT = {**settings.QDRANT, **overrides}

    assert expected in ids(check_qdrant_settings())


def test_a_store_path_that_is_a_file_is_reported(settings, tmp_path) -> None:
    file = tmp_path / "not-a-folder"
    file.write_text("")
    settings.QDRANT = {**settings.QDRANT, "URL": None, "PATH": str(file)}

    assert ids(check_qdrant_settings()) == ["search.E003"]


@pytest.mark.parametrize(
    ("embedding", "chunking", "expected"),
    [
        ({"BACKEND": "search.embedding.nowhere.Model"}, {}, "search.E010"),
        ({"THREADS": 0}, {}, "search.E012"),
        ({"QUERY_WORKERS": 0}, {}, "search.E012"),
        ({"DOCUMENT_WORKERS": 0}, {}, "search.E012"),
        ({}, {"SIZE": 300}, "search.E013"),
        ({}, {"SIZE": 100, "OVERLAP": 100}, "search.E014"),
    ],
)
def test_bad_embedding_and_chunk_settings_are_reported(settings, embedding, chunking, expected) -> None:
    settings.EMBEDDING = {**settings.EMBEDDING, **embedding}
    settings.CHUNKING = {**settings.CHUNKING, **chunking}

    assert expected in ids(check_embedding_settings())


def test_an_unreadable_rate_limit_is_reported(settings) -> None:
    from search.checks import check_search_settings

    settings.SEARCH = {**settings.SEARCH, "RATE_LIMIT": "lots"}

    assert ids(check_search_settings()) == ["search.E020"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"MAX_ATTEMPTS": 0}, "knowledge.E001"), ({"IN_PROCESS_WORKER": "sometimes"}, "knowledge.E002")],
)
def test_bad_ingestion_settings_are_reported(settings, overrides, expected) -> None:
    from knowledge.checks import check_ingestion_settings

    assert check_ingestion_settings() == []
    settings.INGESTION = {**settings.INGESTION, **overrides}

    assert ids(check_ingestion_settings()) == [expected]


@pytest.mark.parametrize(
    ("limit", "minutes", "expected"),
    [(0, 15, ["knowledge.E003"]), (5, 0, ["knowledge.E004"]), (5, 15, [])],
)
def test_a_login_lockout_that_would_lock_everyone_out_or_never_hold_is_reported(
    settings, limit, minutes, expected
) -> None:
    settings.AXES_FAILURE_LIMIT = limit
    settings.AXES_COOLOFF_TIME = timedelta(minutes=minutes)

    assert ids(check_login_lockout_settings()) == expected


def test_an_unusable_embedder_entry_and_a_missing_key_are_reported_without_the_key(settings, monkeypatch) -> None:
    monkeypatch.delenv("KBSITE_UNSET_KEY", raising=False)
    settings.EMBEDDERS = {
        "broken": {"MODEL": "m"},
        "keyless": {"BASE_URL": "http://embed.test/v1", "MODEL": "m", "API_KEY_ENV": "KBSITE_UNSET_KEY"},
        "fine": {"BASE_URL": "http://embed.test/v1", "MODEL": "m"},
    }

    problems = check_embedders()

    assert ids(problems) == ["search.E030", "search.W030"]
    assert "'broken'" in problems[0].msg and "KBSITE_UNSET_KEY" in problems[1].msg

"""The errors the search app raises on purpose, each with a stable code and a message saying what to do."""

from __future__ import annotations

from typing import Any


class SearchError(Exception):
    """Base of the search app's errors; `code` is stable for API clients, `detail` is structured."""

    code = "search_error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidSearchRequest(SearchError):
    """The caller sent something that can never succeed as sent."""

    code = "invalid_request"


class EmptyQuery(InvalidSearchRequest):
    code = "empty_query"


class QueryTooLong(InvalidSearchRequest):
    code = "query_too_long"


class InvalidLimit(InvalidSearchRequest):
    code = "invalid_limit"


class InvalidKnowledgeBaseIds(InvalidSearchRequest):
    code = "invalid_kb_ids"


class InvalidSearchMode(InvalidSearchRequest):
    code = "invalid_search_mode"


class InvalidFilter(InvalidSearchRequest):
    code = "invalid_filter"


class UnknownUser(SearchError):
    code = "unknown_user"


class KnowledgeBaseNotFound(SearchError):
    """Unknown and unreadable knowledge bases look the same, so ids of others' KBs do not leak."""

    code = "kb_not_found"


class EmbeddingModelMismatch(SearchError):
    """A KB's vectors come from another model than the one the site embeds queries with."""

    code = "kb_needs_reindex"


class VectorStoreUnavailable(SearchError):
    code = "vector_store_unavailable"


class EmbedderUnavailable(SearchError):
    code = "embedder_unavailable"

"""The errors kbsite raises on purpose: the base of both apps' errors, and the search app's own."""

from __future__ import annotations

from typing import Any


class KbsiteError(Exception):
    """Base of every error kbsite raises on purpose, in both apps.

    `code` is stable for API clients, `message` tells a person what to do, `detail` is structured.
    The API maps each subclass to one status (kbsite/api.py); commands turn them into CommandError.
    """

    code = "kbsite_error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class SearchError(KbsiteError):
    """Base of the search app's errors."""

    code = "search_error"


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


class EmbedderRefused(EmbedderUnavailable):
    """An embeddings endpoint refused the API key (401 or 403): nothing embeds until the key is fixed."""

    code = "embedder_key_refused"


class EmbedderResponseInvalid(SearchError):
    """An embeddings endpoint answered, but not with one vector of the expected size per text."""

    code = "embedder_bad_response"


class UnknownEmbedder(EmbeddingModelMismatch):
    """A knowledge base or a command names an embedding model the site has no embedder configured for."""

    code = "unknown_embedder"

"""Text embedding: the Embedder interface, the default model and the process's batching service."""

from search.embedding.base import Embedder
from search.embedding.service import EmbeddingConfig, EmbeddingService, embedding_service

__all__ = ["Embedder", "EmbeddingConfig", "EmbeddingService", "embedding_service"]

"""Qdrant Edge as the embedded backend of AsyncQdrantClient."""

from search.edge.store import EdgeStore, StoreLocked

__all__ = ["EdgeStore", "StoreLocked"]

"""The search app's services: chunks in Qdrant, semantic search, and the search audit."""

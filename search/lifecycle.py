"""What the search app does when the server stops."""

from search.qdrant import qdrant_service


async def close_connections() -> None:
    """Close the server loop's Qdrant client, or release the embedded store's folder."""
    await qdrant_service.aclose()

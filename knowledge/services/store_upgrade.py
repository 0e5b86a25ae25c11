"""Moving an embedded store written by qdrant-client's local mode out of the way of Qdrant Edge."""

from __future__ import annotations

import time
from pathlib import Path

from knowledge.errors import InvalidInput
from search.qdrant import QdrantConfig, is_local_mode_store, qdrant_service


class StoreUpgradeService:
    """The old store is never deleted: it is renamed, and every KB is rebuilt from the documents' stored text."""

    def needs_upgrade(self, config: QdrantConfig | None = None) -> bool:
        config = config or qdrant_service.config
        return config.is_local and is_local_mode_store(config.path)

    def move_aside(self, config: QdrantConfig | None = None) -> Path:
        """Rename the local-mode folder to `<path>.local-mode-<time>` and return where it went."""
        config = config or qdrant_service.config
        if not self.needs_upgrade(config):
            raise InvalidInput(f"{config.describe()} holds no store written by local mode: nothing to move.")
        folder = Path(config.path)
        kept = folder.with_name(f"{folder.name}.local-mode-{time.strftime('%Y%m%d-%H%M%S')}")
        # The lock file only means something to a process that has the folder open; local mode
        # leaves it behind, and renaming the folder cannot race one that did (it would hold the store).
        folder.rename(kept)
        qdrant_service.close()
        return kept

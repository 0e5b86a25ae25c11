"""The cluster and storage settings a collection is created with on a Qdrant server (QDRANT_SHARD_NUMBER and friends)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qdrant_client import models

from search.qdrant import QdrantConfig


def create_collection_arguments(
    config: QdrantConfig, *, vectors_config: Mapping[str, models.VectorParams]
) -> dict[str, Any]:
    """The keyword arguments of create_collection for `vectors_config` under `config`.

    Embedded, one Edge shard holds everything and the settings mean nothing: the vectors go as
    given. On a server: shards, replicas and write consistency, and, for collections too large for
    memory, vectors and payload kept on disk (memory-mapped, hot pages cached by the OS).
    """
    if config.is_local:
        return {"vectors_config": dict(vectors_config)}
    return {
        "vectors_config": {
            name: params.model_copy(update={"on_disk": True}) if config.on_disk_vectors else params
            for name, params in vectors_config.items()
        },
        "shard_number": config.shard_number,
        "replication_factor": config.replication_factor,
        "write_consistency_factor": config.write_consistency_factor,
        "on_disk_payload": config.on_disk_payload,
    }

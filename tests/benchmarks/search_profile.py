"""Where one search's time goes, next to the health endpoint on the same application.

    python -m tests.benchmarks.search_profile [--documents 60] [--requests 200] [--mode hybrid]

A site of its own (a temporary var folder, SQLite unless DATABASE_URL says otherwise, embedded Qdrant)
gets a knowledge base of prose every Python install carries (tests.support.prose), indexed by the
real pipeline. Then, one request at a time through the whole ASGI application (kbsite.asgi, its
handler, django-ninja, authentication by API token; httpx's ASGI transport, so no socket and no
uvicorn), `--requests` health checks and as many searches, each with a query of its own (the query
cache never answers). The parts of each search are timed where they run:

  authentication   the API token's lookup (knowledge.auth.TokenAuth)
  permission       the readable knowledge bases' lookup (PermissionService)
  embedding        the query's vector (EmbeddingService.embed_query)
  engine           the Qdrant queries (ChunkService.search_chunks)
  highlights       marking the query's words in each result
  audit            the search's audit row (SearchAuditService.record_search)

The permission lookup runs while the query is embedded, so those two overlap; what the request took
beyond the parts (Django, the handler, ninja's parsing and serialisation) is printed as the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.benchmarks.search_modes import percentile

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["parse a JSON document", "open a socket connection", "time zone aware datetimes", "render a template",
          "compress files into an archive", "regular expression groups", "run tasks in a thread pool",
          "database migrations", "e-mail message headers", "round a decimal number"]
PARTS = ("authentication", "permission", "embedding", "engine", "highlights", "audit")


class Timer:
    """Seconds spent in each part, per request: wrap a method, then read `spent` after each request."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):
            @functools.wraps(original)
            async def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.spent[part] += time.perf_counter() - started
        else:
            @functools.wraps(original)
            def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.spent[part] += time.perf_counter() - started
        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, defaultdict(float)
        return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=60, help="prose documents to index (60: about 450 chunks)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--mode", choices=("hybrid", "semantic", "keyword"), default="hybrid")
    args = parser.parse_args()

    os.environ["KBSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="kbsite-profile-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "kbsite.settings"
    os.environ["KBSITE_SEARCH_RATE_LIMIT"] = "off"
    os.environ.pop("QDRANT_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import httpx
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from kbsite.asgi import application
    from knowledge.auth import TokenAuth
    from knowledge.ingestion.worker import IngestionWorker
    from knowledge.services.documents import DocumentService
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from knowledge.services.permissions import PermissionService
    from search.embedding import EmbeddingService
    from search.keywords import KeywordEncoder
    from search.services.audit import SearchAuditService
    from search.services.chunks import ChunkService
    from tests.support.prose import prose_documents

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("profiler", password=None)
    out = io.StringIO()
    call_command("create_api_token", "profiler", "--name", "profile", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    kb = KnowledgeBaseService().create_knowledge_base(name="Profiled prose", owner=user)
    for title, text in itertools.islice(prose_documents(), args.documents):
        DocumentService().add_text_document(kb=kb, title=title, text=text)
    logging.getLogger("knowledge.ingestion.worker").setLevel(logging.WARNING)
    asyncio.run(IngestionWorker(poll_seconds=0.1).run(until_idle=True))
    chunks = asyncio.run(ChunkService().count_chunks(kb_id=kb.id))

    timer = Timer()
    timer.wrap(TokenAuth, "authenticate", "authentication")
    timer.wrap(PermissionService, "readable_knowledge_bases", "permission")
    timer.wrap(EmbeddingService, "embed_query", "embedding")
    timer.wrap(ChunkService, "search_chunks", "engine")
    timer.wrap(KeywordEncoder, "highlights", "highlights")
    timer.wrap(SearchAuditService, "record_search", "audit")

    async def measure() -> tuple[list[float], list[float], list[dict[str, float]]]:
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver/api/v1", headers=headers) as api:
            for i in range(20):  # the model loaded, the store opened, the first queries seen
                (await api.post("/search", json={"query": f"warm up {i}", "kb_ids": [str(kb.id)]})).raise_for_status()
                (await api.get("/health")).raise_for_status()
            timer.take()
            health, searches, parts = [], [], []
            for i in range(args.requests):
                started = time.perf_counter()
                (await api.get("/health")).raise_for_status()
                health.append(time.perf_counter() - started)
                query = f"how to {TOPICS[i % len(TOPICS)]}, question {i}"
                started = time.perf_counter()
                answer = await api.post("/search", json={"query": query, "kb_ids": [str(kb.id)], "mode": args.mode})
                searches.append(time.perf_counter() - started)
                answer.raise_for_status()
                parts.append(timer.take())
            return health, searches, parts

    health, searches, parts = asyncio.run(measure())
    ms = 1000
    print(f"{chunks} chunks; {args.requests} requests each, one at a time, through kbsite.asgi (httpx ASGI transport); "
          f"{args.mode} searches; database {django.db.connection.vendor}; {os.cpu_count()} cores")
    print(f"health: p50 {statistics.median(health) * ms:.2f} ms, p90 {percentile(health, 0.9) * ms:.2f} ms")
    print(f"search: p50 {statistics.median(searches) * ms:.2f} ms, p90 {percentile(searches, 0.9) * ms:.2f} ms "
          f"({statistics.median(searches) / statistics.median(health):.1f} x health)")
    print(f"{'part':>15} | {'median ms':>9} | {'mean ms':>8} | share of the mean search")
    mean_search = statistics.mean(searches)
    overlapping = {"permission", "embedding"}
    accounted = 0.0
    for part in PARTS:
        values = [spent.get(part, 0.0) for spent in parts]
        mean = statistics.mean(values)
        accounted += mean if part not in overlapping else 0.0
        print(f"{part:>15} | {statistics.median(values) * ms:9.2f} | {mean * ms:8.2f} | {mean / mean_search:6.1%}")
    overlap = statistics.mean(max(spent.get("permission", 0.0), spent.get("embedding", 0.0)) for spent in parts)
    accounted += overlap
    print(f"{'rest':>15} | {'':>9} | {(mean_search - accounted) * ms:8.2f} | {(mean_search - accounted) / mean_search:6.1%}"
          "  (Django, the handler, ninja: parsing, validation, serialisation; permission and embedding overlap,"
          " counted once as the longer)")


if __name__ == "__main__":
    main()

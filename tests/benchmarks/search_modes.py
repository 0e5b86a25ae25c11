"""What a hybrid search costs next to a semantic and a keyword one, 100 at once, on a realistic KB.

    python -m tests.benchmarks.search_modes [--abstracts 720] [--concurrent 100] [--rounds 5] [--json FILE] [--embedder NAME]

SciFact abstracts (read from ../shared, never stored in the project) are ingested through the real
pipeline at the default chunk settings (720 abstracts: about 2,000 chunks); then, round after round,
`concurrent` searches of the claims are launched at once in each mode, the modes taking turns so
that a noisy machine weighs on each alike. Latency runs from the common launch to each search's end.
Printed: p50/p99 per mode (the median over the rounds) and the ratio of each mode to semantic.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCIFACT = ROOT.parent / "shared" / "bench" / "scifact2101-train"
MODES = ("semantic", "hybrid", "keyword")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def burst(service, *, mode: str, queries: list[str], kb_id, user_id: int) -> list[float]:
    finished: list[float] = []

    async def one(query: str) -> None:
        await service.asearch(query=query, kb_ids=[kb_id], user_id=user_id, mode=mode, limit=10)
        finished.append(time.perf_counter())

    launched = time.perf_counter()
    await asyncio.gather(*(one(query) for query in queries))
    return [end - launched for end in finished]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=SCIFACT)
    parser.add_argument("--abstracts", type=int, default=720)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--embedder",
        metavar="NAME",
        help="the embedding model to measure: the built-in one (default) or an endpoint named in EMBEDDERS_JSON",
    )
    args = parser.parse_args()
    if not (args.bench / "corpus.jsonl").is_file():
        sys.exit(f"SciFact is not at {args.bench}; pass --bench.")

    os.environ.setdefault("KBSITE_VAR_DIR", tempfile.mkdtemp(prefix="kbsite-modes-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    os.environ["KBSITE_SEARCH_RATE_LIMIT"] = "off"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from knowledge.ingestion.worker import IngestionWorker
    from knowledge.services.documents import DocumentService
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from knowledge.services.permissions import PermissionService
    from search.services.audit import SearchAuditService
    from search.services.chunks import ChunkService
    from search.services.search import SearchService

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser(f"modes{time.time_ns()}", password=None)
    kb = KnowledgeBaseService().create_knowledge_base(name=f"Modes {time.time():.0f}", owner=user, embedding_model=args.embedder)
    with (args.bench / "corpus.jsonl").open(encoding="utf-8") as corpus:
        for line, _ in zip(corpus, range(args.abstracts)):
            row = json.loads(line)
            DocumentService().add_text_document(kb=kb, title=row["_id"], text=row["text"])
    started = time.perf_counter()
    logging.getLogger("knowledge.ingestion.worker").setLevel(logging.WARNING)  # a line per document otherwise
    asyncio.run(IngestionWorker(poll_seconds=0.1).run(until_idle=True))
    chunks = asyncio.run(ChunkService().count_chunks(kb_id=kb.id))
    print(f"{chunks} chunks from {args.abstracts} abstracts, indexed in {time.perf_counter() - started:.0f}s")
    claims = [json.loads(line)["text"] for line in (args.bench / "queries.jsonl").open(encoding="utf-8")]

    async def measure() -> dict[str, list[list[float]]]:
        service = SearchService(PermissionService(), SearchAuditService())
        await burst(service, mode="hybrid", queries=claims[:20], kb_id=kb.id, user_id=user.pk)  # warm up
        gc.collect()
        gc.freeze()
        rounds: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        for number in range(args.rounds):
            for mode in MODES:
                queries = [claims[(number * args.concurrent + i) % len(claims)] for i in range(args.concurrent)]
                rounds[mode].append(await burst(service, mode=mode, queries=queries, kb_id=kb.id, user_id=user.pk))
        return rounds

    rounds = asyncio.run(measure())
    figures = {
        mode: {
            "p50_ms": 1000 * statistics.median(percentile(r, 0.50) for r in runs),
            "p99_ms": 1000 * statistics.median(percentile(r, 0.99) for r in runs),
        }
        for mode, runs in rounds.items()
    }
    print(f"{args.concurrent} concurrent searches, median of {args.rounds} rounds, on {os.cpu_count()} cores")
    print(f"{'mode':10} {'p50 ms':>8} {'p99 ms':>8} {'p99 / semantic':>15}")
    for mode in MODES:
        ratio = figures[mode]["p99_ms"] / figures["semantic"]["p99_ms"]
        figures[mode]["p99_ratio_to_semantic"] = ratio
        print(f"{mode:10} {figures[mode]['p50_ms']:8.0f} {figures[mode]['p99_ms']:8.0f} {ratio:15.2f}")
    if args.json:
        args.json.write_text(json.dumps({"chunks": chunks, "concurrent": args.concurrent, **figures}, indent=2))


if __name__ == "__main__":
    main()

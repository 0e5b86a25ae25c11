"""Many knowledge bases on the embedded store: memory, start to first search, one-KB against 50-KB searches.

    python -m tests.benchmarks.many_kbs [--kbs 10,100,1000] [--old-kbs 10,50] [--old-tree /work/main]

For each size N, a fresh Qdrant Edge store in a temporary folder is seeded (in a child process) with N
knowledge bases of --docs documents of two chunks each, plus one of --big chunks: seeded 384-dim unit
vectors, BM25 keyword vectors encoded as ingestion does, written through ChunkService; the seeding
ends as a server's shutdown does, with the store closed (and so optimised), after one query has been
embedded (so the site's folder holds what a site that has served a search keeps). Then a second child
process stands in for a restarted server: it sets Django up, imports the ASGI application, embeds a
query with the real embedder (whose model loads on first use, as in the server) and answers one hybrid
search across 50 knowledge bases with it, then freezes its heap as the server's start-up does.
"start->first" is the seconds from that process's launch to the answer; the same run prints its parts (Django and the application imported, the embedder's
first query, the store opened and searched) as the reference. It then reports its resident memory
(VmHWM, the peak) and, for each of --modes, launches 100 concurrent searches of one knowledge base,
then 100 of 50 knowledge bases (latency from the common launch, p50/p99, and the CPU time the process
spent on the burst, its engine threads included), five times over (the figures are the medians of the
five bursts'). On a machine shared with busy neighbours the latencies mostly measure waiting for a core;
the CPU times and their ratio much less so. Those go through
ChunkService at the engine level with a fixed query vector and keywords, so the figures compare store
layouts, not the embedder. The store takes the site's QDRANT_EDGE_SEARCH_THREADS (set it in the
environment to compare).

`--hnsw per-tenant` seeds the collection with Qdrant's multitenancy graph settings (no global HNSW
graph, `m=0`; one per tenant, `payload_m=16`) instead of the global graph kbsite makes, to compare.

`--old-tree` runs the same two children on the landed code (one collection per knowledge base, a
search of 50 = 50 engine queries merged, as its SearchService did) for the sizes in --old-kbs: each of
its open shards costs tens of MB, so keep those small on a shared machine. The ratio 50-KB / one-KB
in each row is the figure that travels between machines.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIM = 384
READABLE = 50
CONCURRENT = 100
ROUNDS = 5


def _setup(tree: str) -> None:
    sys.path.insert(0, tree)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    import django

    django.setup()


def _kb_id(n: int):
    from uuid import UUID

    return UUID(int=n + 1)


def _vectors(seed: int, count: int):
    import numpy as np

    rows = np.random.default_rng(seed).normal(size=(count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).tolist()


def _store_config(path: str):
    """The embedded store at `path`, with the site's QDRANT_EDGE_SEARCH_THREADS where the tree has it."""
    import dataclasses

    from search.qdrant import QdrantConfig

    return dataclasses.replace(QdrantConfig.from_settings(), url=None, path=path)


def _tenant_layout() -> bool:
    import search.services.chunks as chunks

    return hasattr(chunks, "ChunkSearch")


@functools.cache
def _index_maker():
    import search.services.collections as collections

    maker = getattr(collections, "kb_index", None)  # the process's shared indexes, where the tree has them
    if maker is not None:
        return maker
    return lambda kb_id, model, vector_size, generation: collections.KbIndex(
        kb_id=kb_id, model=model, vector_size=vector_size, generation=generation
    )


def _index(kb_id):
    # As SearchService gets one per knowledge base searched, without importing anything each time.
    return _index_maker()(kb_id, "bench-model", DIM, 1)


def _per_tenant_graphs() -> None:
    """Make collections with Qdrant's multitenancy HNSW settings: no global graph, one per tenant."""
    from qdrant_client import models

    import search.services.collections as collections

    made = collections.create_collection_arguments

    def arguments(*args, **kwargs):
        return {**made(*args, **kwargs), "hnsw_config": models.HnswConfigDiff(m=0, payload_m=16)}

    collections.create_collection_arguments = arguments


async def _seed(path: str, kbs: int, docs: int, big: int, hnsw: str) -> None:
    from uuid import UUID

    from search.chunking import TextChunk
    from search.keywords import KeywordSettings, keyword_encoder
    from search.qdrant import qdrant_service
    from search.services.chunks import ChunkService

    if hnsw == "per-tenant":
        _per_tenant_graphs()
    qdrant_service.configure(_store_config(path))
    service, encoder, tenants = ChunkService(), keyword_encoder(KeywordSettings()), _tenant_layout()
    words = "tide moon harbour storm reef anchor gravity shore cliff current wave sand".split()

    async def write(kb_id, document: int, count: int) -> None:
        texts = [" ".join(words[(document + i + j) % len(words)] for j in range(8)) for i in range(count)]
        chunks = [TextChunk(index=i, content=t, char_start=0, char_end=len(t), token_count=8) for i, t in enumerate(texts)]
        extra = {"index": _index(kb_id)} if tenants else {}
        await service.upsert_chunks(
            kb_id=kb_id, document_id=UUID(int=(kb_id.int << 20) + document), title=f"Document {document}",
            chunks=chunks, vectors=_vectors(document * 7919 + kb_id.int, count),
            keyword_vectors=encoder.encode_documents(texts), **extra,
        )  # fmt: skip

    for n in range(kbs):
        for document in range(docs):
            await write(_kb_id(n), document, 2)
    for start in range(0, big, 500):
        await write(_kb_id(kbs), start // 500, min(500, big - start))
    # The site answered a search before its restart: what its first query kept (the queries' model) is there.
    from search.embedding import embedding_service

    await embedding_service.embed_query(QUERY)
    qdrant_service.close()


QUERY = "storm over the harbour reef"


async def _serve(path: str, kbs: int, started: float, modes: list[str]) -> dict:
    import asyncio
    import statistics

    import kbsite.asgi  # noqa: F401  (the server's application, with its URLs and APIs)
    from search.embedding import embedding_service
    from search.keywords import KeywordSettings, keyword_encoder
    from search.qdrant import qdrant_service
    from search.services.chunks import ChunkService

    set_up = time.time()
    qdrant_service.configure(_store_config(path))
    service, tenants = ChunkService(), _tenant_layout()
    readable = [_kb_id(n) for n in range(min(READABLE, kbs))]
    keywords = keyword_encoder(KeywordSettings()).encode_query(QUERY)

    def search(kb_ids, vector, mode: str):
        if tenants:
            from search.services.chunks import ChunkSearch

            request = ChunkSearch(
                indexes=tuple(_index(k) for k in kb_ids),
                query_embedding=tuple(vector) if mode != "keyword" else None,
                query_keywords=keywords if mode != "semantic" else None,
            )
            return service.search_chunks(request)
        if mode != "semantic":
            raise SystemExit("the landed layout is measured in semantic mode only")
        if len(kb_ids) == 1:
            return service.search_chunks(kb_id=kb_ids[0], query_embedding=vector, limit=10)
        return many_landed(kb_ids, vector)

    async def many_landed(kb_ids, vector) -> list:
        # The landed SearchService's merge of one query per knowledge base.
        answers = await asyncio.gather(*(search([k], vector, "semantic") for k in kb_ids))
        return sorted((hit for hits in answers for hit in hits), key=lambda hit: -(hit.score or 0))[:10]

    embedded = await embedding_service.embed_query(QUERY)
    embedded_at = time.time()
    first = await search(readable, embedded, "hybrid" if tenants else "semantic")
    answered = time.time()
    assert first, "the first search found nothing"
    # What the server's start-up does once it is up: what is alive now is never rescanned by the
    # collector, whose full collections would otherwise land in some bursts and not others.
    from kbsite.lifespan import freeze_startup_heap

    await freeze_startup_heap()

    async def timed(work) -> tuple[list[float], float]:
        """Each search's latency from the common launch, and the CPU time the process spent on them all."""
        cpu, launch = time.process_time(), time.perf_counter()

        async def each(n: int) -> float:
            await work(n)
            return time.perf_counter() - launch

        latencies = sorted(await asyncio.gather(*(each(n) for n in range(CONCURRENT))))
        return latencies, time.process_time() - cpu

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    query = _vectors(42, 1)[0]
    by_mode = {}
    for mode in modes:
        # Bursts of one and of 50 knowledge bases alternate, and each figure is the median over the
        # rounds: on a shared machine a single burst is often one neighbour's spike.
        rounds: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            single = await timed(lambda n, mode=mode: search([readable[n % len(readable)]], query, mode))
            fifty = await timed(lambda n, mode=mode: search(readable, query, mode))
            for name, (values, cpu) in (("one_kb", single), ("fifty_kb", fifty)):
                rounds.setdefault(f"{name}_p50_ms", []).append(p(values, 0.5))
                rounds.setdefault(f"{name}_p99_ms", []).append(p(values, 0.99))
                rounds.setdefault(f"{name}_cpu_ms", []).append(cpu * 1000)
        by_mode[mode] = {name: statistics.median(values) for name, values in rounds.items()}
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    return {
        "first_search_s": answered - started,
        "setup_s": set_up - started,
        "embedder_s": embedded_at - set_up,
        "store_s": answered - embedded_at,
        "peak_rss_mb": peak / 1024,
        "modes": by_mode,
    }


def _child(args: argparse.Namespace) -> None:
    import asyncio

    _setup(args.tree)
    if args.role == "seed":
        asyncio.run(_seed(args.path, args.n, args.docs, args.big, args.hnsw))
    else:
        print(json.dumps(asyncio.run(_serve(args.path, args.n, args.started, args.modes.split(",")))))


def _run(tree: str, n: int, docs: int, big: int, modes: str, hnsw: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "KBSITE_VAR_DIR": tempfile.mkdtemp(prefix="many-kbs-var-")}
    with tempfile.TemporaryDirectory(prefix="many-kbs-") as folder:
        path = str(Path(folder) / "qdrant")
        base = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", tree, "--path", path]
        seeding = time.perf_counter()
        subprocess.run([*base, "--role", "seed", "--n", str(n), "--docs", str(docs), "--big", str(big),
                        "--hnsw", hnsw], cwd=tree, env=env, check=True)  # fmt: skip
        seeded = time.perf_counter() - seeding
        started = time.time()
        out = subprocess.run([*base, "--role", "serve", "--n", str(n), "--started", repr(started), "--modes", modes],
                             cwd=tree, env=env, check=True, capture_output=True, text=True)  # fmt: skip
        return {"seed_s": seeded, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kbs", default="10,100,1000")
    parser.add_argument("--old-kbs", default="10,50", help="Sizes to run on --old-tree ('' for none).")
    parser.add_argument("--old-tree", default="/work/main")
    parser.add_argument("--docs", type=int, default=3)
    parser.add_argument("--big", type=int, default=5000, help="Chunks of the one large knowledge base.")
    parser.add_argument("--modes", default="semantic,keyword,hybrid", help="Search modes timed (landed: semantic).")
    parser.add_argument("--hnsw", choices=("global", "per-tenant"), default="global",
                        help="The collection's HNSW graphs: kbsite's global one, or one per tenant (m=0, payload_m=16).")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("seed", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    runs = [("tenants", str(ROOT), int(n), args.modes) for n in args.kbs.split(",") if n]
    if Path(args.old_tree).is_dir():
        runs += [("per-KB (landed)", args.old_tree, int(n), "semantic") for n in args.old_kbs.split(",") if n]
    print(f"HNSW graphs: {args.hnsw}. start->first s = setup (Django, the application) + embedder + store")
    header = (
        "layout            KBs  seed s  peak RSS MB  start->first s (setup+embedder+store)  mode      "
        "one-KB p50/p99 ms  50-KB p50/p99 ms  50/1 p50  CPU ms one-KB/50-KB  50/1 CPU"
    )
    print(header)
    for layout, tree, n, modes in runs:
        r = _run(tree, n, args.docs, args.big, modes, args.hnsw)
        start = f"{r['first_search_s']:>6.2f} ({r['setup_s']:.2f}+{r['embedder_s']:.2f}+{r['store_s']:.2f})"
        for mode, m in r["modes"].items():
            print(
                f"{layout:<16} {n:>5} {r['seed_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {start:>38}  {mode:<8} "
                f"{m['one_kb_p50_ms']:>8.1f}/{m['one_kb_p99_ms']:<8.1f} {m['fifty_kb_p50_ms']:>8.1f}/"
                f"{m['fifty_kb_p99_ms']:<8.1f} {m['fifty_kb_p50_ms'] / m['one_kb_p50_ms']:>8.2f}  "
                f"{m['one_kb_cpu_ms']:>9.1f}/{m['fifty_kb_cpu_ms']:<9.1f} {m['fifty_kb_cpu_ms'] / m['one_kb_cpu_ms']:>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Many knowledge bases on the embedded store: memory, start to first search, one-KB against 50-KB searches.

    python -m tests.benchmarks.many_kbs [--kbs 10,100,1000] [--old-kbs 10,50] [--old-tree /work/main]

For each size N, a fresh Qdrant Edge store in a temporary folder is seeded (in a child process) with N
knowledge bases of --docs documents of two chunks each, plus one of --big chunks: seeded 384-dim unit
vectors, BM25 keyword vectors encoded as ingestion does, written through ChunkService. Then a second
child process stands in for a restarted server: it opens the store and answers one search across 50
knowledge bases (seconds from its start to that answer), reports its resident memory (VmHWM, the
peak), and launches 100 concurrent searches of one knowledge base, then 100 of 50 knowledge bases
(latency from the common launch, p50/p99). Searches go through ChunkService at the engine level, with
a fixed query vector, so the figures compare store layouts, not the embedder.

`--old-tree` runs the same two children on the landed code (one collection per knowledge base, a
search of 50 = 50 engine queries merged, as its SearchService did) for the sizes in --old-kbs: each of
its open shards costs tens of MB, so keep those small on a shared machine. The ratio 50-KB / one-KB
in each row is the figure that travels between machines.
"""

from __future__ import annotations

import argparse
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


def _tenant_layout() -> bool:
    import search.services.chunks as chunks

    return hasattr(chunks, "ChunkSearch")


def _index(kb_id):
    from search.services.collections import KbIndex

    return KbIndex(kb_id=kb_id, model="bench-model", vector_size=DIM)


async def _seed(path: str, kbs: int, docs: int, big: int) -> None:
    from uuid import UUID

    from search.chunking import TextChunk
    from search.keywords import KeywordSettings, keyword_encoder
    from search.qdrant import QdrantConfig, qdrant_service
    from search.services.chunks import ChunkService

    qdrant_service.configure(QdrantConfig(path=path))
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
    qdrant_service.close()


async def _serve(path: str, kbs: int, started: float) -> dict:
    import asyncio

    from search.qdrant import QdrantConfig, qdrant_service
    from search.services.chunks import ChunkService

    qdrant_service.configure(QdrantConfig(path=path))
    service, tenants = ChunkService(), _tenant_layout()
    query = _vectors(42, 1)[0]
    readable = [_kb_id(n) for n in range(min(READABLE, kbs))]

    async def one(kb_id) -> list:
        if tenants:
            from search.services.chunks import ChunkSearch

            return await service.search_chunks(ChunkSearch(indexes=(_index(kb_id),), query_embedding=tuple(query)))
        return await service.search_chunks(kb_id=kb_id, query_embedding=query, limit=10)

    async def many(kb_ids) -> list:
        if tenants:
            from search.services.chunks import ChunkSearch

            request = ChunkSearch(indexes=tuple(_index(k) for k in kb_ids), query_embedding=tuple(query))
            return await service.search_chunks(request)
        answers = await asyncio.gather(*(one(k) for k in kb_ids))  # the landed SearchService's merge
        return sorted((hit for hits in answers for hit in hits), key=lambda hit: -(hit.score or 0))[:10]

    first = await many(readable)
    to_first = time.time() - started
    assert first, "the first search found nothing"

    async def timed(work) -> list[float]:
        launch = time.perf_counter()

        async def each(n: int) -> float:
            await work(n)
            return time.perf_counter() - launch

        return sorted(await asyncio.gather(*(each(n) for n in range(CONCURRENT))))

    single = await timed(lambda n: one(readable[n % len(readable)]))
    fifty = await timed(lambda n: many(readable))
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "first_search_s": to_first,
        "peak_rss_mb": peak / 1024,
        "one_kb_p50_ms": p(single, 0.5), "one_kb_p99_ms": p(single, 0.99),
        "fifty_kb_p50_ms": p(fifty, 0.5), "fifty_kb_p99_ms": p(fifty, 0.99),
    }  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    import asyncio

    _setup(args.tree)
    if args.role == "seed":
        asyncio.run(_seed(args.path, args.n, args.docs, args.big))
    else:
        print(json.dumps(asyncio.run(_serve(args.path, args.n, args.started))))


def _run(tree: str, n: int, docs: int, big: int) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "KBSITE_VAR_DIR": tempfile.mkdtemp(prefix="many-kbs-var-")}
    with tempfile.TemporaryDirectory(prefix="many-kbs-") as folder:
        path = str(Path(folder) / "qdrant")
        base = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", tree, "--path", path]
        seeding = time.perf_counter()
        subprocess.run([*base, "--role", "seed", "--n", str(n), "--docs", str(docs), "--big", str(big)],
                       cwd=tree, env=env, check=True)  # fmt: skip
        seeded = time.perf_counter() - seeding
        started = time.time()
        out = subprocess.run([*base, "--role", "serve", "--n", str(n), "--started", repr(started)],
                             cwd=tree, env=env, check=True, capture_output=True, text=True)  # fmt: skip
        return {"seed_s": seeded, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kbs", default="10,100,1000")
    parser.add_argument("--old-kbs", default="10,50", help="Sizes to run on --old-tree ('' for none).")
    parser.add_argument("--old-tree", default="/work/main")
    parser.add_argument("--docs", type=int, default=3)
    parser.add_argument("--big", type=int, default=5000, help="Chunks of the one large knowledge base.")
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
    runs = [("tenants", str(ROOT), int(n)) for n in args.kbs.split(",") if n]
    if Path(args.old_tree).is_dir():
        runs += [("per-KB (landed)", args.old_tree, int(n)) for n in args.old_kbs.split(",") if n]
    header = "layout            KBs  seed s  peak RSS MB  start->first s  one-KB p50/p99 ms  50-KB p50/p99 ms  50/1 p50"
    print(header)
    for layout, tree, n in runs:
        r = _run(tree, n, args.docs, args.big)
        print(
            f"{layout:<16} {n:>5} {r['seed_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {r['first_search_s']:>15.2f} "
            f"{r['one_kb_p50_ms']:>8.1f}/{r['one_kb_p99_ms']:<8.1f} {r['fifty_kb_p50_ms']:>8.1f}/"
            f"{r['fifty_kb_p99_ms']:<8.1f} {r['fifty_kb_p50_ms'] / r['one_kb_p50_ms']:>8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

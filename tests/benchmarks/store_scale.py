"""How the embedded store scales with a KB's size: upsert throughput, one engine query, 100 concurrent searches.

    python -m tests.benchmarks.store_scale [--sizes 1000,5000,20000,100000] [--engines edge,local] [--json FILE]

For each engine (Qdrant Edge, qdrant-client's local mode) and KB size N (chunks), on a fresh embedded
store in a temporary folder:

(c) seeding: N synthetic chunks (seeded 384-dim unit vectors with cluster structure, short synthetic
    text, BM25 keyword vectors encoded as ingestion does) written through ChunkService.upsert_chunks in
    documents of 20 chunks, 2% of the documents then archived; points/s with and without the time of
    the sparse encoding.
(a) one engine query: p50/p99 of `query_points` on the dense vector with the default search filter,
    limit 10, one at a time.
(b) 100 concurrent SearchService.semantic_search calls with the real embedder, latency from the
    common launch (as tests/performance/test_qdrant_load.py), next to the floor measured in the same
    run: the 100 queries embedded in one model call plus the 100 bare engine queries back to back.

Sizes whose seeding or queries the rates already measured predict to take more than --budget seconds
are skipped. The vectors are synthetic, so (b) measures latency, not relevance.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIMENSIONS = 384
CHUNKS_PER_DOCUMENT = 20
ARCHIVED_SHARE = 0.02
ENGINE_QUERIES = 200
CONCURRENT = 100
WARM_UP = 20
CLUSTERS = 200
TARGET_QUERY_P50_MS = 3.0
TARGET_RATIO = 1.2
TARGET_P99_MS = 500.0
TARGET_SIZE = 20_000

WORDS = (
    "honeybee dance sourdough starter lava flow packet loss chlorophyll bebop solo bicycle chain spring tide oven "
    "temperature tectonic plate protein binding receptor cell membrane glacier retreat river delta neural network "
    "enzyme kinetics solar wind coral reef soil carbon vaccine trial insulin signal quantum dot battery anode "
    "galaxy cluster ocean current migration pattern lung tissue bone density gene expression wheat yield"
).split()
SUBJECTS = ["honeybee dances", "sourdough starters", "lava flows", "packet loss", "chlorophyll", "bebop solos",
            "bicycle chains", "spring tides", "oven temperature", "tectonic plates"]
ASKS = ["how does", "why do", "what limits", "when did researchers measure", "what explains", "which factors drive",
        "how fast is", "what is known about", "how to compare", "what happens to"]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({os.cpu_count()} online), {model}, Python {platform.python_version()}"


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """Seeded vectors around CLUSTERS random centres (so HNSW sees neighbourhoods) and short texts."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = unit(self.rng.standard_normal((CLUSTERS, DIMENSIONS)))

    def vectors(self, count: int, spread: float = 0.6) -> np.ndarray:
        centres = self.centres[self.rng.integers(0, CLUSTERS, count)]
        noise = self.rng.standard_normal((count, DIMENSIONS)).astype(np.float32) * (spread / math.sqrt(DIMENSIONS))
        return unit(centres + noise)

    def texts(self, count: int) -> list[str]:
        picks = self.rng.integers(0, len(WORDS), (count, 12))
        return [" ".join(WORDS[i] for i in row) + "." for row in picks]


def queries(label: str, count: int) -> list[str]:
    return [f"{ASKS[i % len(ASKS)]} {SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)]} {label} {i}" for i in range(count)]


async def seed(kb_id, n: int, synthetic: Synthetic) -> dict:
    from knowledge.services.knowledge_bases import KnowledgeBaseIndexes
    from search.chunking import TextChunk
    from search.keywords import KeywordSettings, keyword_encoder
    from search.services.chunks import ChunkService
    from search.services.collections import CollectionService

    chunks_service = ChunkService()
    encoder = keyword_encoder(KeywordSettings())
    documents = math.ceil(n / CHUNKS_PER_DOCUMENT)
    vectors = synthetic.vectors(n)
    texts = synthetic.texts(n)
    archived = set(synthetic.rng.choice(documents, size=round(documents * ARCHIVED_SHARE), replace=False).tolist())
    plan = []  # built before timing: ids, chunk objects, vector lists
    for d in range(documents):
        start, end = d * CHUNKS_PER_DOCUMENT, min(n, (d + 1) * CHUNKS_PER_DOCUMENT)
        chunks, offset = [], 0
        for index, text in enumerate(texts[start:end]):
            chunks.append(TextChunk(index=index, content=text, char_start=offset, char_end=offset + len(text),
                                    token_count=len(text.split())))
            offset += len(text) + 1
        plan.append((f"00000000-0000-4000-8000-{d:012d}", chunks, vectors[start:end].tolist()))
    del vectors

    await CollectionService().ensure_collection(index=await KnowledgeBaseIndexes().active_index(kb_id=kb_id))
    encoding = 0.0
    started = time.perf_counter()
    for d, (document_id, chunks, doc_vectors) in enumerate(plan):
        encode_started = time.perf_counter()
        keywords = encoder.encode_documents([chunk.content for chunk in chunks])
        encoding += time.perf_counter() - encode_started
        await chunks_service.upsert_chunks(kb_id=kb_id, document_id=document_id, title=f"Synthetic document {d}",
                                           chunks=chunks, vectors=doc_vectors, keyword_vectors=keywords)
    upserted = time.perf_counter() - started
    archived_at = datetime.now(UTC)
    archive_started = time.perf_counter()
    for d in sorted(archived):
        await chunks_service.set_archived(kb_id=kb_id, document_id=plan[d][0], archived_at=archived_at)
    archiving = time.perf_counter() - archive_started
    count = await chunks_service.count_chunks(kb_id=kb_id)
    assert count == n, f"seeded {count} chunks, wanted {n}"
    total = upserted + archiving
    return {
        "documents": documents,
        "archived_documents": len(archived),
        "seed_seconds": total,
        "upsert_seconds": upserted,
        "encode_seconds": encoding,
        "archive_seconds": archiving,
        "points_per_s": n / total,
        "points_per_s_without_encoding": n / (total - encoding),
    }


async def engine_queries(kb_id, vectors: np.ndarray) -> list[float]:
    """Latency (s) of each bare dense query_points with the default search filter, one at a time."""
    from knowledge.services.knowledge_bases import KnowledgeBaseIndexes
    from search.qdrant import qdrant_service
    from search.services.chunks import ChunkSearch
    from search.services.collections import DENSE_VECTOR

    client = qdrant_service.client
    index = await KnowledgeBaseIndexes().active_index(kb_id=kb_id)
    query_filter = ChunkSearch(indexes=(index,), query_embedding=(0.0,)).query_request().filter
    latencies = []
    for vector in vectors.tolist():
        started = time.perf_counter()
        response = await client.query_points(collection_name=index.collection, query=vector, using=DENSE_VECTOR,
                                             query_filter=query_filter, limit=10, with_payload=True, with_vectors=False)
        latencies.append(time.perf_counter() - started)
        assert len(response.points) == 10
    return latencies


async def run_concurrently(service, kb_id, user_id: int, texts: list[str]) -> tuple[list, list[float]]:
    """Launch the searches at once; each latency runs from the common launch to that search's end."""
    finished: list[float] = []

    async def one(text: str):
        results = await service.semantic_search(query=text, kb_ids=[str(kb_id)], user_id=user_id, limit=10)
        finished.append(time.perf_counter())
        return results

    launched = time.perf_counter()
    outcomes = await asyncio.gather(*(one(text) for text in texts), return_exceptions=True)
    return outcomes, sorted(end - launched for end in finished)


async def concurrent_searches(kb_id, user_id: int, rounds: int) -> dict:
    from knowledge.services.permissions import PermissionService
    from search.embedding import embedding_service
    from search.services.audit import SearchAuditService
    from search.services.search import SearchService

    service = SearchService(PermissionService(), SearchAuditService())
    # Warm-up round, as a server that has served its first requests: model loaded, store open.
    await asyncio.gather(*(service.semantic_search(query=f"warm up {i}", kb_ids=[str(kb_id)], user_id=user_id)
                           for i in range(WARM_UP)))
    embedder = embedding_service.embedder
    rows = []
    gc.collect()
    gc.freeze()
    try:
        for round_number in range(rounds):
            texts = queries(f"round {round_number}", CONCURRENT)
            outcomes, latencies = await run_concurrently(service, kb_id, user_id, texts)
            failures = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
            if failures:
                raise RuntimeError(f"{len(failures)} searches failed, first: {failures[0]}")
            # The floor, same texts: one model call for all 100, then the 100 bare engine queries.
            started = time.perf_counter()
            vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
            embed_seconds = time.perf_counter() - started
            engine = await engine_queries(kb_id, vectors)
            floor = embed_seconds + sum(engine)
            rows.append({
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "max_ms": latencies[-1] * 1000,
                "floor_ms": floor * 1000,
                "floor_embed_ms": embed_seconds * 1000,
                "floor_engine_ms": sum(engine) * 1000,
            })
    finally:
        gc.unfreeze()
    # The round with the median p99 stands for the run; every round is kept in the JSON.
    middle = sorted(rows, key=lambda row: row["p99_ms"])[len(rows) // 2]
    return {**middle, "ratio": middle["p99_ms"] / middle["floor_ms"], "rounds": rows}


async def bench_one(engine: str, n: int, kb_id, user_id: int, rounds: int, seed_value: int) -> dict:
    synthetic = Synthetic(seed_value + n)
    result: dict = {"engine": engine, "size": n}
    result.update(await seed(kb_id, n, synthetic))
    latencies = sorted(await engine_queries(kb_id, synthetic.vectors(ENGINE_QUERIES, spread=1.0)))
    result["query_p50_ms"] = percentile(latencies, 0.50) * 1000
    result["query_p99_ms"] = percentile(latencies, 0.99) * 1000
    result["concurrent"] = await concurrent_searches(kb_id, user_id, rounds)
    return result


def predicted_seconds(history: dict, n: int, rounds: int) -> tuple[float, float, str] | None:
    """(seeding, queries) seconds predicted for size n from the largest size already measured."""
    if not history:
        return None
    last = history[max(history)]
    seeding = n / last["points_per_s"]
    # Local mode scans every point: query time grows with N. Queries a size runs: engine + warm-up + rounds
    # of (concurrent + floor).
    per_query = last["query_p50_ms"] / 1000 * n / last["size"]
    queries_run = ENGINE_QUERIES + WARM_UP + rounds * 2 * CONCURRENT
    searching = per_query * queries_run
    why = (f"measured at {last['size']}: {last['points_per_s']:.0f} pts/s, query p50 {last['query_p50_ms']:.1f} ms "
           f"-> predicted {seeding:.0f}s seeding + {searching:.0f}s queries at {n}")
    return seeding, searching, why


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_table(results: list[dict]) -> None:
    header = (f"{'engine':<6} {'N':>7} | {'seed pts/s':>10} {'w/o enc':>8} | {'query p50':>9} {'p99':>6} | "
              f"{'100conc p50':>11} {'p99':>7} {'floor':>7} {'p99/fl':>6} | targets")
    print(header)
    print("-" * len(header))
    for r in results:
        if r.get("skipped"):
            print(f"{r['engine']:<6} {r['size']:>7} | skipped (too slow): {r['skipped']}")
            continue
        c = r["concurrent"]
        targets = ""
        if r["size"] == TARGET_SIZE:
            targets = (f"p50<={TARGET_QUERY_P50_MS:g}ms {mark(r['query_p50_ms'] <= TARGET_QUERY_P50_MS)}, "
                       f"p99<={TARGET_RATIO:g}xfloor {mark(c['ratio'] <= TARGET_RATIO)}, "
                       f"p99<{TARGET_P99_MS:g}ms {mark(c['p99_ms'] < TARGET_P99_MS)}")
        print(f"{r['engine']:<6} {r['size']:>7} | {r['points_per_s']:>10.0f} {r['points_per_s_without_encoding']:>8.0f} | "
              f"{r['query_p50_ms']:>7.2f}ms {r['query_p99_ms']:>4.1f}ms | {c['p50_ms']:>9.0f}ms {c['p99_ms']:>5.0f}ms "
              f"{c['floor_ms']:>5.0f}ms {c['ratio']:>6.2f} | {targets}")
    print(f"targets (at N={TARGET_SIZE}): engine query p50 <= {TARGET_QUERY_P50_MS:g} ms; 100 concurrent p99 <= "
          f"{TARGET_RATIO:g} x floor and < {TARGET_P99_MS:g} ms. floor = 100 queries embedded in one model call + "
          f"the 100 bare engine queries back to back.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,100000")
    parser.add_argument("--engines", default="edge,local")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: store_scale.json "
                                                                 "in the temporary folder)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 100 concurrent searches (median p99 shown)")
    parser.add_argument("--budget", type=float, default=120.0, help="skip a size predicted to seed or query longer")
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="kbsite-store-scale-"))
    os.environ["KBSITE_VAR_DIR"] = str(workdir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    os.environ.pop("QDRANT_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from search.embedding import embedding_service
    from search.qdrant import EMBEDDED_ENGINES, QdrantConfig, qdrant_service
    from tests.factories import make_user

    unknown = [e for e in engines if e not in EMBEDDED_ENGINES]
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {EMBEDDED_ENGINES}")
    call_command("migrate", verbosity=0)
    user = make_user(username="store-scale")
    embedding_service.embedder.embed(["load the model before timing"])

    header = f"store_scale on {machine()}; {time.strftime('%Y-%m-%d %H:%M:%S')}"
    print(header)
    print(f"sizes {sizes}, engines {engines}, {CHUNKS_PER_DOCUMENT} chunks/document, {ARCHIVED_SHARE:.0%} archived, "
          f"{ENGINE_QUERIES} engine queries, {CONCURRENT} concurrent x {args.rounds} rounds; workdir {workdir}",
          flush=True)
    results: list[dict] = []
    json_path = args.json or workdir / "store_scale.json"
    for engine in engines:
        history: dict[int, dict] = {}
        for n in sizes:
            prediction = predicted_seconds(history, n, args.rounds)
            if prediction and max(prediction[:2]) > args.budget:
                results.append({"engine": engine, "size": n, "skipped": prediction[2]})
                print(f"[{engine} {n}] skipped (too slow): {prediction[2]}", flush=True)
                continue
            folder = workdir / f"qdrant-{engine}-{n}"
            qdrant_service.configure(QdrantConfig(path=str(folder), engine=engine))
            kb = KnowledgeBaseService().create_knowledge_base(name=f"Scale {engine} {n}", owner=user)
            started = time.perf_counter()
            try:
                result = asyncio.run(bench_one(engine, n, kb.id, user.id, args.rounds, args.seed))
            finally:
                qdrant_service.close()
                shutil.rmtree(folder, ignore_errors=True)
            result["wall_seconds"] = time.perf_counter() - started
            history[n] = result
            results.append(result)
            c = result["concurrent"]
            print(f"[{engine} {n}] seed {result['seed_seconds']:.1f}s ({result['points_per_s']:.0f} pts/s, "
                  f"{result['points_per_s_without_encoding']:.0f} w/o encoding), query p50 "
                  f"{result['query_p50_ms']:.2f}ms p99 {result['query_p99_ms']:.2f}ms, 100 concurrent p50 "
                  f"{c['p50_ms']:.0f}ms p99 {c['p99_ms']:.0f}ms floor {c['floor_ms']:.0f}ms "
                  f"(embed {c['floor_embed_ms']:.0f} + engine {c['floor_engine_ms']:.0f}), "
                  f"wall {result['wall_seconds']:.0f}s", flush=True)
            json_path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print()
    print(header)
    print_table(results)
    json_path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"JSON: {json_path}")


if __name__ == "__main__":
    main()

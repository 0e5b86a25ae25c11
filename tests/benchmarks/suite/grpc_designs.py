"""The seed's Qdrant client design against ours, both over gRPC to a loopback server with injected latency.

    python -m tests.benchmarks.suite.grpc_designs [--quick] --json FILE

before: a synchronous `QdrantClient` (gRPC) called through `asyncio.to_thread`, the default executor
        (min(32, cores + 4) threads) -- the seed's design, which exists only here, never in the product.
after:  `AsyncQdrantClient` (gRPC), each call awaited -- what kbsite does.

The server is tests/support/qdrant_grpc.py's LoopbackEngine (Edge behind gRPC) in a process of its own
(so that it does not share the clients' GIL), subclassed here to (1) sleep `latency` seconds in each query before
answering, outside its lock, as a network and a busy server would, on a thread pool wide enough that
the sleeps overlap, and (2) answer a query it has already answered from a cache, so that the figures
measure the client design, not the loopback server's one engine thread. Each distinct query is computed once, in the warm-up.

For each latency and concurrency N, N `query_points` (dense vector, the product's kb/archived filter,
limit 10, with payload) are launched at once; each latency runs from the common launch to that call's
end; throughput is N / the burst's wall time. Rounds alternate the designs; the median round by p99
stands for the cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DIMENSIONS = 384
POINTS = 3_000
DISTINCT_QUERIES = 40
COLLECTION = "bench"
KB_ID = "8d1f6a52-5a3c-4d36-9a36-6f8f0c6f2c11"
SERVER_THREADS = 600
DESIGNS = ("before", "after")
FULL = {"latencies_ms": [0, 5, 20], "concurrency": [10, 25, 50, 100, 200, 500], "rounds": 5}
QUICK = {"latencies_ms": [0, 5, 20], "concurrency": [10, 100, 500], "rounds": 2}


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def search_filter():
    """The product's search filter (ChunkService._search_filter), built without Django."""
    from qdrant_client import models

    return models.Filter(
        must=[models.FieldCondition(key="kb_id", match=models.MatchValue(value=KB_ID))],
        must_not=[models.FieldCondition(key="archived", match=models.MatchValue(value=True))],
    )


def _serve(connection, points: int) -> None:
    """Child process: seed a loopback server, report its port, then take latency settings until "stop"."""
    from qdrant_client import grpc as pb
    from qdrant_client import models

    from tests.support.qdrant_grpc import LoopbackEngine, _Collections, _Points, _Qdrant

    class DelayedCachedPoints(_Points):
        def Query(self, request, context):  # noqa: N802 - the gRPC method's name
            time.sleep(self.host.latency)
            key = request.SerializeToString(deterministic=True)
            cached = self.host.answers.get(key)
            if cached is None:
                cached = self.host.answers[key] = super().Query(request, context)
            return cached

    DelayedCachedPoints.register = staticmethod(pb.add_PointsServicer_to_server)

    class DelayedServer(LoopbackEngine):
        # a pool wide enough that injected sleeps overlap
        executor_threads = SERVER_THREADS
        servicers = (_Qdrant, _Collections, DelayedCachedPoints)
        latency = 0.0
        answers: dict[bytes, object] = {}

    rng = np.random.default_rng(20260101)
    vectors = rng.standard_normal((points, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="grpc-designs-") as folder:
        server = DelayedServer(folder).start()
        store = server.store
        server.run(store.create_collection(COLLECTION, vectors_config=models.VectorParams(
            size=DIMENSIONS, distance=models.Distance.COSINE)))
        server.run(store.upsert(COLLECTION, points=[
            models.PointStruct(id=i, vector=vectors[i].tolist(), payload={
                "kb_id": KB_ID, "document_id": f"doc-{i // 20}", "chunk_index": i % 20,
                "archived": (i // 20) % 50 == 0, "content": f"synthetic chunk {i}"})
            for i in range(points)]))
        connection.send(server.port)
        while (message := connection.recv()) != "stop":
            server.latency = message
            connection.send("ok")
        server.stop()


class Server:
    """The delayed loopback server in a child process."""

    def __init__(self, points: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, points), daemon=True)

    def __enter__(self) -> Server:
        self._process.start()
        self.port = self._connection.recv()
        return self

    def set_latency(self, seconds: float) -> None:
        self._connection.send(seconds)
        self._connection.recv()

    def __exit__(self, *exc: object) -> None:
        self._connection.send("stop")
        self._process.join(timeout=30)


class Before:
    """The seed's design: the sync gRPC client, each call on the default executor."""

    def __init__(self, port: int) -> None:
        from qdrant_client import QdrantClient

        self.client = QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, timeout=120,
                                       check_compatibility=False)

    async def query(self, vector: list[float], query_filter) -> int:
        response = await asyncio.to_thread(self.client.query_points, collection_name=COLLECTION, query=vector,
                                           query_filter=query_filter, limit=10, with_payload=True)
        return len(response.points)

    async def close(self) -> None:
        self.client.close()


class After:
    """kbsite's design: AsyncQdrantClient over gRPC, awaited."""

    def __init__(self, port: int) -> None:
        from qdrant_client import AsyncQdrantClient

        self.client = AsyncQdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, timeout=120,
                                       check_compatibility=False)

    async def query(self, vector: list[float], query_filter) -> int:
        response = await self.client.query_points(collection_name=COLLECTION, query=vector,
                                                  query_filter=query_filter, limit=10, with_payload=True)
        return len(response.points)

    async def close(self) -> None:
        await self.client.close()


async def burst(design, vectors: list[list[float]], query_filter) -> dict:
    finished: list[float] = []

    async def one(vector: list[float]) -> None:
        assert await design.query(vector, query_filter) == 10
        finished.append(time.perf_counter())

    launched = time.perf_counter()
    await asyncio.gather(*(one(vector) for vector in vectors))
    wall = time.perf_counter() - launched
    latencies = sorted(end - launched for end in finished)
    return {"p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "wall_s": wall, "throughput_per_s": len(vectors) / wall}


async def measure(port: int, server: Server, plan: dict) -> list[dict]:
    rng = np.random.default_rng(7)
    pool = rng.standard_normal((DISTINCT_QUERIES, DIMENSIONS)).astype(np.float32)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).tolist()
    query_filter = search_filter()
    designs = {"before": Before(port), "after": After(port)}
    try:
        server.set_latency(0.0)
        for design in designs.values():  # the server computes each distinct query once; connections open
            for vector in pool:
                await design.query(vector, query_filter)
        widest = [pool[i % DISTINCT_QUERIES] for i in range(max(plan["concurrency"]))]
        for design in designs.values():  # threads started, channels busy once, before anything is timed
            await burst(design, widest, query_filter)
        rows = []
        for latency_ms in plan["latencies_ms"]:
            server.set_latency(latency_ms / 1000)
            for n in plan["concurrency"]:
                vectors = [pool[i % DISTINCT_QUERIES] for i in range(n)]
                rounds: dict[str, list[dict]] = {name: [] for name in DESIGNS}
                for round_number in range(plan["rounds"]):
                    order = DESIGNS if round_number % 2 == 0 else DESIGNS[::-1]
                    for name in order:
                        rounds[name].append(await burst(designs[name], vectors, query_filter))
                cell = {"latency_ms": latency_ms, "concurrency": n}
                for name in DESIGNS:
                    middle = sorted(rounds[name], key=lambda r: r["p99_ms"])[len(rounds[name]) // 2]
                    cell[name] = {**middle, "rounds": rounds[name]}
                cell["p99_ratio"] = cell["before"]["p99_ms"] / cell["after"]["p99_ms"]
                cell["throughput_ratio"] = cell["after"]["throughput_per_s"] / cell["before"]["throughput_per_s"]
                rows.append(cell)
                print(f"[grpc] latency {latency_ms:>2} ms, {n:>3} concurrent: before p50 "
                      f"{cell['before']['p50_ms']:.0f} p99 {cell['before']['p99_ms']:.0f} ms "
                      f"{cell['before']['throughput_per_s']:.0f}/s | after p50 {cell['after']['p50_ms']:.0f} "
                      f"p99 {cell['after']['p99_ms']:.0f} ms {cell['after']['throughput_per_s']:.0f}/s | "
                      f"p99 before/after {cell['p99_ratio']:.2f}", flush=True)
        return rows
    finally:
        for design in designs.values():
            await design.close()


def run(quick: bool) -> dict:
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    with Server(POINTS) as server:
        rows = asyncio.run(measure(server.port, server, plan))
    return {
        "points": POINTS, "dimensions": DIMENSIONS, "distinct_queries": DISTINCT_QUERIES, "plan": plan,
        "default_executor_threads": min(32, (multiprocessing.cpu_count() or 1) + 4),
        "server_threads": SERVER_THREADS, "rows": rows,
        "median_p99_ratio": statistics.median(row["p99_ratio"] for row in rows),
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.json.write_text(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()

"""Searches per second over HTTP, semantic and hybrid, next to the same server's health endpoint.

    python -m tests.benchmarks.suite.http_site [--clients 100] [--seconds 20] --json FILE

A site of its own is seeded with the test corpus as tests/performance/test_http_load.py seeds it and
served by uvicorn with one worker; tests/benchmarks/http_load.py's clients then load it for `seconds`
per mode. The health endpoint (one database query and one Qdrant call, no model) is loaded the same
way by the same number of clients: the reference for what the server does with a trivial request.

On the server path (`--server-path`, issue 22), the same corpus goes into the loopback Qdrant server
(Qdrant Edge behind gRPC, a process of its own) and semantic searches load uvicorn with 3 worker
processes against 1, one after the other on the same data: the 1-worker figure is the reference. On a
2-core machine expect little gain: the model and the Qdrant process share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]
MODES = ("semantic", "hybrid")


def summary(tally, elapsed: float) -> dict:
    from tests.benchmarks.http_load import percentile

    ordered = sorted(tally.latencies)
    total = sum(tally.statuses.values())
    return {
        "requests": total,
        "seconds": elapsed,
        "requests_per_s": total / elapsed,
        "p50_ms": percentile(ordered, 0.50) * 1000 if ordered else None,
        "p99_ms": percentile(ordered, 0.99) * 1000 if ordered else None,
        "errors": tally.error_count,
        "statuses": dict(tally.statuses),
    }


async def health_load(url: str, clients: int, seconds: float):
    """http_load's client loop shape, on GET /api/v1/health."""
    import asyncio

    from tests.benchmarks.http_load import Tally, http_client

    tally = Tally()

    async def one_client(deadline: float) -> None:
        async with http_client(url, timeout=60) as http:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await http.get("/api/v1/health")
                except httpx.HTTPError as exc:
                    tally.statuses[type(exc).__name__] += 1
                    tally.fail(f"{type(exc).__name__}: {exc}")
                    continue
                tally.latencies.append(time.perf_counter() - started)
                tally.statuses[str(response.status_code)] += 1
                if response.status_code != 200:
                    tally.fail(f"HTTP {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(one_client(started + seconds) for _ in range(clients)))
    return tally, time.perf_counter() - started


def run(clients: int, seconds: float) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from tests.benchmarks import http_load
    from tests.performance.test_http_load import _seeded_site
    from tests.support.live_server import site_environment

    results: dict = {"clients": clients, "seconds": seconds, "workers": 1}
    workdir = Path(tempfile.mkdtemp(prefix="kbsite-suite-http-"))
    with site_environment(workdir / "var", KBSITE_ADMIN_PASSWORD="suite-password") as env:
        site = _seeded_site(workdir, env)
        server, token, kb_id = next(site)
        try:
            tally, elapsed = http_load.run_loop(health_load(server.url, clients, seconds))
            results["health"] = summary(tally, elapsed)
            print(f"[http] health: {results['health']['requests_per_s']:.0f}/s", flush=True)
            for mode in MODES:
                started = time.perf_counter()
                tally = http_load.run_loop(http_load.run(server.url, token, kb_id, clients, seconds, 60, 5, mode))
                results[mode] = summary(tally, time.perf_counter() - started)
                print(f"[http] {mode}: {results[mode]['requests_per_s']:.0f}/s", flush=True)
        finally:
            site.close()
    return results


def run_server_path(clients: int, seconds: float) -> dict:
    """Semantic searches per second with 1 and then 3 uvicorn workers, against the loopback Qdrant server."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from tests.benchmarks import http_load
    from tests.performance.test_http_load import ADMIN, CORPUS_DIR
    from tests.support.live_server import live_server, manage, site_environment
    from tests.support.qdrant_grpc import LoopbackQdrantServer

    results: dict = {"clients": clients, "seconds": seconds, "cores": os.cpu_count()}
    workdir = Path(tempfile.mkdtemp(prefix="kbsite-suite-http-server-"))
    with LoopbackQdrantServer() as qdrant, site_environment(
        workdir / "var", QDRANT_URL=qdrant.url, QDRANT_GRPC_PORT=str(qdrant.grpc_port)
    ) as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", "--username", ADMIN, env=env)
        token = manage("create_api_token", ADMIN, "--name", "http load", env=env).strip()
        files = sorted(str(path) for path in CORPUS_DIR.glob("*.md"))
        manage("ingest", *files, "--kb", "corpus", "--create", "--owner", ADMIN, env=env)
        for workers in (1, 3):
            with live_server(env, workdir / f"server-{workers}.log", workers=workers) as server:
                headers = {"Authorization": f"Bearer {token}"}
                kbs = httpx.get(f"{server.url}/api/v1/kbs", headers=headers, timeout=30).raise_for_status()
                kb_id = next(kb["id"] for kb in kbs.json()["items"] if kb["slug"] == "corpus")
                # each worker loads the model on its first search: warm them all before measuring
                http_load.run_loop(http_load.run(server.url, token, kb_id, clients, 3, 60, 5, "semantic"))
                started = time.perf_counter()
                tally = http_load.run_loop(
                    http_load.run(server.url, token, kb_id, clients, seconds, 60, 5, "semantic")
                )
                results[f"{workers}_workers"] = summary(tally, time.perf_counter() - started)
        one, three = results["1_workers"], results["3_workers"]
        results["ratio_3_to_1"] = three["requests_per_s"] / one["requests_per_s"]
        print(
            f"[http] server path, semantic: 3 web processes {three['requests_per_s']:.1f}/s "
            f"(p50 {three['p50_ms']:.0f} ms) against 1 web process {one['requests_per_s']:.1f}/s "
            f"(p50 {one['p50_ms']:.0f} ms), same run: x{results['ratio_3_to_1']:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--server-path", action="store_true", help="3 web processes against 1 on a Qdrant server")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    measure = run_server_path if args.server_path else run
    args.json.write_text(json.dumps(measure(args.clients, args.seconds), indent=2))


if __name__ == "__main__":
    main()

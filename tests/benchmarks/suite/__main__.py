"""Run every benchmark behind the README's figures, print one table, write JSON and plots.

    python -m tests.benchmarks.suite [--quick] [--out docs/benchmarks] [--parts grpc,service,ingestion,http]

Parts, in this order: grpc (the seed's Qdrant client design against ours, suite/grpc_designs.py),
service (tests/benchmarks/store_scale.py), ingestion (tests/benchmarks/bench_ingestion.py) and http
(tests/benchmarks/http_load.py through suite/http_site.py). Each runs in a child process; a part that
fails is reported and the others still run. docs/BENCHMARKS.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from tests.benchmarks.store_scale import machine
from tests.benchmarks.suite import plots
from tests.benchmarks.suite.parts import PARTS, ROOT, Plan, workdir

FIGURES = {
    "grpc": (plots.grpc_concurrency, plots.grpc_throughput),
    "service": (plots.service_kb_size,),
    "ingestion": (plots.ingestion,),
    "http": (plots.http,),
}


def table(results: dict) -> str:
    lines: list[str] = []
    if grpc := results.get("grpc"):
        lines.append(f"Qdrant client design over gRPC ({grpc['points']} points, filtered query_points, "
                     f"default executor {grpc['default_executor_threads']} threads); latency from launch")
        lines.append(f"{'latency':>7} {'conc':>5} | {'before p50':>10} {'p99':>7} {'q/s':>6} | {'after p50':>9} "
                     f"{'p99':>7} {'q/s':>6} | {'p99 b/a':>7} {'q/s a/b':>7}")
        for row in grpc["rows"]:
            b, a = row["before"], row["after"]
            lines.append(f"{row['latency_ms']:>5}ms {row['concurrency']:>5} | {b['p50_ms']:>8.0f}ms {b['p99_ms']:>5.0f}ms "
                         f"{b['throughput_per_s']:>6.0f} | {a['p50_ms']:>7.0f}ms {a['p99_ms']:>5.0f}ms "
                         f"{a['throughput_per_s']:>6.0f} | {row['p99_ratio']:>6.2f}x {row['throughput_ratio']:>6.2f}x")
        lines.append("")
    if service := results.get("service"):
        lines.append("Service level: 100 concurrent semantic searches (real embedder, Qdrant Edge), from launch")
        lines.append(f"{'chunks':>7} | {'query p50':>9} | {'p50':>7} {'p99':>7} {'floor':>7} {'p99/floor':>9}")
        for row in service["results"]:
            if row.get("skipped"):
                lines.append(f"{row['size']:>7} | skipped: {row['skipped']}")
                continue
            c = row["concurrent"]
            lines.append(f"{row['size']:>7} | {row['query_p50_ms']:>7.2f}ms | {c['p50_ms']:>5.0f}ms {c['p99_ms']:>5.0f}ms "
                         f"{c['floor_ms']:>5.0f}ms {c['ratio']:>9.2f}")
        lines.append("")
    if ingestion := results.get("ingestion"):
        lines.append(f"Ingestion: {ingestion['chunks']} chunks (up to {ingestion['chunk_tokens']} tokens, "
                     f"{ingestion['average_tokens']} on average), median of {ingestion['rounds']} rounds")
        lines.append(f"  through the worker {ingestion['worker_chunks_per_s']:.1f} chunks/s, embedder alone "
                     f"{ingestion['embedder_chunks_per_s']:.1f} chunks/s: {ingestion['ratio']:.0%}")
        lines.append("")
    if http := results.get("http"):
        lines.append(f"HTTP: {http['clients']} clients for {http['seconds']:g} s per row, uvicorn, one worker")
        lines.append(f"{'endpoint':>9} | {'req/s':>6} {'x health':>8} | {'p50':>7} {'p99':>7} | errors")
        for name in ("health", "semantic", "hybrid"):
            r = http[name]
            lines.append(f"{name:>9} | {r['requests_per_s']:>6.0f} {r['requests_per_s'] / http['health']['requests_per_s']:>8.2f} | "
                         f"{r['p50_ms'] or 0:>5.0f}ms {r['p99_ms'] or 0:>5.0f}ms | {r['errors']}")
        lines.append("")
    for name, message in results.get("failed", {}).items():
        lines.append(f"{name}: FAILED: {message}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: about a minute and a half")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of %(default)s")
    args = parser.parse_args()
    chosen = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := [part for part in chosen if part not in PARTS]:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    plan, work = Plan(quick=args.quick), workdir()
    here = machine()
    results: dict = {"machine": here, "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "parts": chosen, "seconds": {}, "failed": {}, "figures": []}
    print(f"benchmark suite on {here}; {'quick' if args.quick else 'full'} run; logs in {work}", flush=True)
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            results[name] = PARTS[name](plan, work)
            for draw in FIGURES[name]:
                results["figures"].append(str(draw(results[name], args.out, here).relative_to(args.out)))
        except Exception as error:  # noqa: BLE001 - one part failing must not lose the others' figures
            traceback.print_exc()
            results["failed"][name] = str(error)
        results["seconds"][name] = round(time.perf_counter() - started, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    (args.out / "table.txt").write_text(f"{here}; {'quick' if args.quick else 'full'} run {results['started']}\n\n"
                                        f"{table(results)}\n")
    print(f"JSON, table and figures ({', '.join(results['figures'])}) in {args.out}; "
          f"seconds per part {results['seconds']}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark command's quick run completes: every part measured, its JSON, table and figures written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
# Each benchmark makes a SQLite site of its own whatever DATABASE_URL says: one database pass runs it.
pytestmark = [pytest.mark.integration, pytest.mark.database_free]

FIGURES = {"grpc_p99_vs_concurrency.png", "grpc_throughput.png", "service_p99_vs_kb_size.png", "ingestion.png",
           "http.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_suite_writes_every_part_table_and_figure(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.suite", "--quick", "--out", str(tmp_path)],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=600, check=False,  # about 70 s; a busy machine may take longer
    )
    print(done.stdout[-3000:])  # shown when the test fails, or with -s
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "table.txt").read_text()
    assert results["failed"] == {}
    # The quick plan's grid, each cell measured both ways, its ratios those of its own figures and in the table.
    grpc = results["grpc"]["rows"]
    assert {(row["latency_ms"], row["concurrency"]) for row in grpc} == {
        (latency, concurrency) for latency in (0, 5, 20) for concurrency in (10, 100, 500)
    }
    for row in grpc:
        for design in (row["before"], row["after"]):
            assert 0 < design["p50_ms"] <= design["p99_ms"] and design["throughput_per_s"] > 0
        assert row["p99_ratio"] == pytest.approx(row["before"]["p99_ms"] / row["after"]["p99_ms"])
        assert f"{row['p99_ratio']:>6.2f}x" in table
    # Both quick sizes measured, each p99 against a floor measured in the same run.
    service = [row for row in results["service"]["results"] if not row.get("skipped")]
    assert sorted(row["size"] for row in service) == [1000, 5000]
    for row in service:
        concurrent = row["concurrent"]
        assert concurrent["p50_ms"] <= concurrent["p99_ms"]
        assert concurrent["ratio"] == pytest.approx(concurrent["p99_ms"] / concurrent["floor_ms"])
    ingestion = results["ingestion"]
    assert ingestion["documents"] == 3 and ingestion["chunks"] > 0
    assert ingestion["ratio"] == pytest.approx(ingestion["worker_chunks_per_s"] / ingestion["embedder_chunks_per_s"])
    for name in ("health", "semantic", "hybrid"):
        http = results["http"][name]
        assert http["errors"] == 0 and http["requests"] > 0 and http["p50_ms"] <= http["p99_ms"]
    assert set(results["figures"]) == FIGURES
    for name in FIGURES:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)

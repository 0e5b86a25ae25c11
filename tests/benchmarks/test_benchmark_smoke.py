"""The benchmark command's quick run completes: every part measured, its JSON, table and figures written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

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
    assert results["failed"] == {}
    assert {row["concurrency"] for row in results["grpc"]["rows"]} >= {100, 500}
    assert {row["latency_ms"] for row in results["grpc"]["rows"]} == {0, 5, 20}
    assert all(row["before"]["p99_ms"] > 0 and row["after"]["p99_ms"] > 0 for row in results["grpc"]["rows"])
    assert len([row for row in results["service"]["results"] if not row.get("skipped")]) >= 2
    assert results["ingestion"]["worker_chunks_per_s"] > 0
    assert all(results["http"][name]["errors"] == 0 for name in ("health", "semantic", "hybrid"))
    assert set(results["figures"]) == FIGURES
    for name in FIGURES:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "p99 b/a" in (tmp_path / "table.txt").read_text()

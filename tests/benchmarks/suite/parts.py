"""The suite's parts: each runs an existing benchmark in a child process and returns its figures as a dict.

Each part runs in a process of its own because the benchmarks set up Django from environment variables
and open an embedded Qdrant store that one process at a time may hold.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# Each benchmark picks its own settings and temporary site; none inherits the caller's (pytest's, say).
CHILD_UNSET = ("DJANGO_SETTINGS_MODULE", "KBSITE_VAR_DIR", "QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY",
               "DATABASE_URL", "KBSITE_IN_PROCESS_WORKER")


@dataclass(frozen=True)
class Plan:
    quick: bool

    @property
    def store_sizes(self) -> str:
        return "1000,5000" if self.quick else "1000,5000,20000,50000"

    @property
    def store_rounds(self) -> int:
        return 1 if self.quick else 3

    @property
    def ingestion_documents(self) -> int:
        return 3 if self.quick else 12

    @property
    def ingestion_rounds(self) -> int:
        return 1 if self.quick else 3

    @property
    def http_seconds(self) -> float:
        return 3 if self.quick else 20


def _child(args: list[str], log: Path, timeout: float) -> str:
    """Run `python args…` from the project root, echo its output as it comes, keep it in `log`; its stdout."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in CHILD_UNSET}
    environment["PYTHONUNBUFFERED"] = "1"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in process.stdout:
            sink.write(line)
            lines.append(line)
            if line.startswith("[") or line.startswith(("end to end", "embedder alone", "worker throughput")):
                print("   ", line.rstrip(), flush=True)
        code = process.wait(timeout=timeout)
    if code:
        raise RuntimeError(f"{' '.join(args)} exited with {code}; its output is in {log}")
    return "".join(lines)


def grpc_designs(plan: Plan, work: Path) -> dict:
    out = work / "grpc_designs.json"
    _child(["-m", "tests.benchmarks.suite.grpc_designs", *(["--quick"] if plan.quick else []), "--json", str(out)],
           work / "grpc_designs.log", timeout=1200)
    return json.loads(out.read_text())


def store_scale(plan: Plan, work: Path) -> dict:
    out = work / "store_scale.json"
    _child(["-m", "tests.benchmarks.store_scale", "--sizes", plan.store_sizes, "--engines", "edge",
            "--rounds", str(plan.store_rounds), "--json", str(out)], work / "store_scale.log", timeout=1200)
    results = json.loads(out.read_text())
    results["sizes"] = plan.store_sizes
    return results


_INGESTION = {
    "worker": re.compile(r"end to end through the worker: (\d+) documents, (\d+) chunks, median of (\d+) rounds "
                         r"([\d.]+)s = ([\d.]+) chunks/s"),
    "embedder": re.compile(r"embedder alone on the same chunks \(batches of (\d+)\): median ([\d.]+)s "
                           r"= ([\d.]+) chunks/s"),
    "corpus": re.compile(r"corpus: .*?(\d+) chunks of up to (\d+) tokens \((\d+) tokens on average\)"),
}


def ingestion(plan: Plan, work: Path) -> dict:
    # bench_ingestion only prints: its lines are the interface read here.
    output = _child(["tests/benchmarks/bench_ingestion.py", "--documents", str(plan.ingestion_documents),
                     "--rounds", str(plan.ingestion_rounds)], work / "bench_ingestion.log", timeout=1200)
    found = {name: pattern.search(output) for name, pattern in _INGESTION.items()}
    missing = [name for name, match in found.items() if match is None]
    if missing:
        raise RuntimeError(f"bench_ingestion printed no {missing} line; its output is in {work}")
    worker, embedder, corpus = found["worker"], found["embedder"], found["corpus"]
    return {
        "documents": int(worker.group(1)), "chunks": int(worker.group(2)), "rounds": int(worker.group(3)),
        "chunk_tokens": int(corpus.group(2)), "average_tokens": int(corpus.group(3)),
        "worker_seconds": float(worker.group(4)), "worker_chunks_per_s": float(worker.group(5)),
        "embedder_batch": int(embedder.group(1)), "embedder_seconds": float(embedder.group(2)),
        "embedder_chunks_per_s": float(embedder.group(3)),
        "ratio": float(worker.group(5)) / float(embedder.group(3)),
    }


def http(plan: Plan, work: Path) -> dict:
    out = work / "http.json"
    _child(["-m", "tests.benchmarks.suite.http_site", "--seconds", str(plan.http_seconds), "--json", str(out)],
           work / "http.log", timeout=1200)
    results = json.loads(out.read_text())
    server_path = work / "http-server-path.json"
    _child(["-m", "tests.benchmarks.suite.http_site", "--server-path", "--seconds", str(plan.http_seconds),
            "--json", str(server_path)], work / "http-server-path.log", timeout=1800)
    results["server_path"] = json.loads(server_path.read_text())
    return results


PARTS = {"grpc": grpc_designs, "service": store_scale, "ingestion": ingestion, "http": http}


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kbsite-suite-"))

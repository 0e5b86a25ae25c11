"""Deployment drill: the site as an operator runs it, with one web process and one worker SIGKILLed mid-run.

    python -m tests.drills.deployment [--documents 200] [--searchers 4] [--database-url URL] [--seed N]

PostgreSQL (a database of the drill's own, made and dropped: kbsite_deployment_drill by default), the
loopback Qdrant server (Qdrant Edge behind gRPC, a process of its own), uvicorn with 3 worker processes
and 2 `manage.py ingest_worker`s. Documents are uploaded through the API, each on a new connection so
the kernel spreads them over the web processes, while searchers query without pause. Halfway through
the uploads one uvicorn worker and the ingest worker holding a document are killed with SIGKILL.

Checks: every search is answered (200) or refused with a clean 503 in the API's error shape, except
those in flight on the killed process, which are counted apart; every document uploaded once and
ready; Qdrant's points match every document exactly (the crash drill's checker); and no document was
held by two workers at once (the queue is sampled throughout: a document may change hands only from
the killed worker). It prints its figures and a sample of /metrics, and exits with 1 on a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from tests.drills.crash import Figures, check_points, make_documents, manage, wait_until
from tests.support.live_server import free_port
from tests.support.qdrant_grpc import LoopbackQdrantServer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/kbsite_deployment_drill"
WEB_PROCESSES = 3
INGEST_WORKERS = 2
START_SECONDS = 180
SETTLE_SECONDS = 900
# Short, so that the killed worker's document is taken over within the drill.
LEASE_SECONDS = 10
METRICS_TOKEN = "deployment-drill"
QUERIES = ("why does the tide rise", "how is bread leavened", "what is a knowledge base", "rivers and floods")


@dataclass
class Outcomes:
    """What happened to the searches and uploads, counted by the threads that made them."""

    searches: Counter[str] = field(default_factory=Counter)
    search_seconds: list[float] = field(default_factory=list)
    uploads: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _children(pid: int) -> list[int]:
    """uvicorn's worker processes: its children but multiprocessing's resource tracker."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as listing:
        children = [int(child) for child in listing.read().split()]
    workers = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"resource_tracker" not in command:
            workers.append(child)
    return workers


class Deployment:
    """The processes of one deployment: uvicorn's master with its workers, and the ingest workers."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with (self.workdir / log).open("a", encoding="utf-8") as output:
            return subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        self.web = self._spawn(
            [
                "-m",
                "uvicorn",
                "kbsite.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(WEB_PROCESSES),
                "--no-access-log",
            ],
            "web.log",
        )
        self.workers = [
            self._spawn(["manage.py", "ingest_worker", "--poll", "0.2"], f"worker-{n}.log")
            for n in range(INGEST_WORKERS)
        ]
        wait_until(self._serving, timeout=START_SECONDS, what="uvicorn's workers answering /api/v1/health")

    def _serving(self) -> bool:
        if self.web.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {self.web.returncode}; see {self.workdir / 'web.log'}")
        if len(_children(self.web.pid)) < WEB_PROCESSES:
            return False
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def web_processes(self) -> list[int]:
        return _children(self.web.pid)

    def stop(self) -> None:
        for process in [*self.workers, self.web]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.web]:
            if process is None:
                continue
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def search_until(
    stop: threading.Event, url: str, token: str, kb_id: str, outcomes: Outcomes, seed: int
) -> None:
    """Search without pause until `stop`; each answer is counted by what it was."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        body = {"query": rng.choice(QUERIES), "kb_ids": [kb_id], "mode": rng.choice(["hybrid", "semantic"])}
        started = time.monotonic()
        try:
            response = httpx.post(f"{url}/api/v1/search", json=body, headers=headers, timeout=60)
        except httpx.TransportError as error:
            with outcomes.lock:
                outcomes.searches[f"dropped ({type(error).__name__})"] += 1
            continue
        seconds = time.monotonic() - started
        with outcomes.lock:
            if response.status_code == 200:
                outcomes.searches["answered"] += 1
                outcomes.search_seconds.append(seconds)
            elif response.status_code == 503 and "detail" in response.json():
                outcomes.searches["refused with 503"] += 1
            else:
                outcomes.searches[f"HTTP {response.status_code}"] += 1
                outcomes.problems.append(f"a search answered {response.status_code}: {response.text[:200]}")


def upload(url: str, token: str, kb_id: str, kind: str, title: str, text: str, outcomes: Outcomes) -> None:
    """Upload one document; a connection the killed process dropped is tried again (a duplicate then means it landed)."""
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(5):
        try:
            if kind == "text":
                response = httpx.post(
                    f"{url}/api/v1/kbs/{kb_id}/documents/text",
                    json={"title": title, "text": text},
                    headers=headers,
                    timeout=60,
                )
            else:
                data = text if kind == "md" else f"<html><body><pre>{text}</pre></body></html>"
                name = title.lower().replace(" ", "-")
                response = httpx.post(
                    f"{url}/api/v1/kbs/{kb_id}/documents",
                    files={"file": (f"{name}.{kind}", data.encode())},
                    headers=headers,
                    timeout=60,
                )
        except httpx.TransportError:
            with outcomes.lock:
                outcomes.uploads["dropped, sent again"] += 1
            continue
        with outcomes.lock:
            if response.status_code == 202:
                outcomes.uploads["accepted"] += 1
            elif response.status_code == 409:
                outcomes.uploads["already there (an earlier try landed)"] += 1
            else:
                outcomes.uploads[f"HTTP {response.status_code}"] += 1
                outcomes.problems.append(f"an upload answered {response.status_code}: {response.text[:200]}")
        return
    with outcomes.lock:
        outcomes.problems.append(f"{title} could not be uploaded in five tries")


class QueueWatcher(threading.Thread):
    """Samples which worker holds each document in work; a change of hands is legal only from a killed worker."""

    def __init__(self, database_url: str) -> None:
        super().__init__(name="queue-watcher", daemon=True)
        self.database_url = database_url
        self.holders: dict[str, list[str]] = {}
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            while not self.stopping.is_set():
                rows = connection.execute(
                    "SELECT id, claimed_by FROM knowledge_document WHERE status = 'processing' AND claimed_by <> ''"
                ).fetchall()
                for pk, holder in rows:
                    seen = self.holders.setdefault(str(pk), [])
                    if not seen or seen[-1] != holder:
                        seen.append(holder)
                self.samples += 1
                self.stopping.wait(0.05)

    def double_holds(self, killed_pids: set[int]) -> list[str]:
        """Documents that went from one live worker to another: both could have been working on it."""
        found = []
        for pk, holders in self.holders.items():
            for before, after in zip(holders, holders[1:]):
                if int(before.split(":")[1]) not in killed_pids:
                    found.append(f"document {pk} went from {before} to {after} while {before} was alive")
        return found


def _database(url: str, *, create: bool) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            connection.execute(f'CREATE DATABASE "{name}"')


def run(*, documents: int, searchers: int, seed: int, workdir: Path, database_url: str) -> int:
    """Run the drill, print its figures; 1 when it found a problem, else 0."""
    _database(database_url, create=True)
    qdrant = LoopbackQdrantServer().start()
    try:
        return _drill(documents, searchers, seed, workdir, database_url, qdrant)
    finally:
        qdrant.__exit__()
        from django.db import connections

        connections.close_all()
        _database(database_url, create=False)


def _drill(
    documents: int, searchers: int, seed: int, workdir: Path, database_url: str, qdrant: LoopbackQdrantServer
) -> int:
    rng = random.Random(seed)
    figures = Figures(seed=seed)
    outcomes = Outcomes()
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "KBSITE_"))},
        "DJANGO_SETTINGS_MODULE": "kbsite.settings",
        "DATABASE_URL": database_url,
        "QDRANT_URL": qdrant.url,
        "QDRANT_GRPC_PORT": str(qdrant.grpc_port),
        "KBSITE_VAR_DIR": str(workdir / "var"),
        "KBSITE_SEARCH_RATE_LIMIT": "off",
        "KBSITE_UPLOAD_RATE_LIMIT": "off",
        "KBSITE_INGEST_LEASE_SECONDS": str(LEASE_SECONDS),
        "KBSITE_INGEST_POLL_SECONDS": "0.2",
        "KBSITE_METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    # The checker reads the queue and Qdrant with the deployment's own settings.
    os.environ.update(env)
    import django

    django.setup()
    deployment = Deployment(env, workdir)
    watcher = QueueWatcher(database_url)
    stop_searching = threading.Event()
    killed_pids: set[int] = set()
    started = time.monotonic()
    try:
        manage(env, "migrate", "--no-input")
        manage(env, "bootstrap", "--no-demo")
        token = manage(
            env, "create_api_token", "admin", "--name", "deployment drill", "--verbosity", "0"
        ).strip()
        deployment.start()
        print(
            f"up in {time.monotonic() - started:.0f} s: web processes {deployment.web_processes()}",
            flush=True,
        )
        headers = {"Authorization": f"Bearer {token}"}
        kb_id = httpx.post(
            f"{deployment.url}/api/v1/kbs",
            json={"name": f"Deployment drill {seed}"},
            headers=headers,
            timeout=60,
        ).json()["id"]
        watcher.start()
        search_threads = [
            threading.Thread(
                target=search_until, args=(stop_searching, deployment.url, token, kb_id, outcomes, seed + n)
            )
            for n in range(searchers)
        ]
        for thread in search_threads:
            thread.start()
        planned = make_documents(rng, documents)
        for number, (kind, title, text) in enumerate(planned):
            if number == len(planned) // 2:
                killed_pids |= kill_one_of_each(deployment, rng)
            upload(deployment.url, token, kb_id, kind, title, text, outcomes)
        uploaded_at = time.monotonic()
        from knowledge.models import Document, DocumentStatus

        def settled() -> bool:
            waiting = Document.objects.filter(knowledge_base_id=kb_id).exclude(
                status__in=[DocumentStatus.READY, DocumentStatus.FAILED]
            )
            return not waiting.exists()

        wait_until(settled, timeout=SETTLE_SECONDS, what="every document ready or failed")
        settled_at = time.monotonic()
        stop_searching.set()
        for thread in search_threads:
            thread.join()
        watcher.stopping.set()
        watcher.join()
        sample = scrape(deployment.url)
        memory = {
            "web": [rss_mb(pid) for pid in deployment.web_processes()],
            "worker": [rss_mb(w.pid) for w in deployment.workers if w.poll() is None],
        }
        # each process that recorded a metric has its file; the ingest workers' (the killed one's too) are not web
        ingest = {str(worker.pid) for worker in deployment.workers}
        served_by = {path.stem.split("_")[-1] for path in metrics_dir.glob("histogram_*.db")} - ingest
    finally:
        stop_searching.set()
        watcher.stopping.set()
        deployment.stop()
    rows = list(Document.objects.filter(knowledge_base_id=kb_id).values_list("id", "title", "chunk_count"))
    titles = Counter(title for _, title, _ in rows)
    figures.documents = len(rows)
    asyncio.run(check_points(kb_id, [str(pk) for pk, _, _ in rows], set(), figures))

    problems = [*outcomes.problems, *figures.problems, *watcher.double_holds(killed_pids)]
    if len(rows) != documents or any(times > 1 for times in titles.values()):
        problems.append(
            f"{len(rows)} document rows for {documents} uploads, titles repeated: "
            f"{[t for t, n in titles.items() if n > 1][:5]}"
        )
    dropped = sum(n for outcome, n in outcomes.searches.items() if outcome.startswith("dropped"))
    if dropped > searchers:
        problems.append(
            f"{dropped} searches dropped; only the {searchers} in flight on the killed process may be"
        )
    took = settled_at - started
    chunks = sum(count for _, _, count in rows)
    latencies = sorted(outcomes.search_seconds)
    print(
        "\n".join(
            [
                f"seed {seed}; {WEB_PROCESSES} web processes, {INGEST_WORKERS} ingest workers, {searchers} searchers",
                f"killed: pids {sorted(killed_pids)} (one web process, one ingest worker) with SIGKILL",
                f"web processes that recorded requests (metrics files): {len(served_by)}, the killed one and its "
                "replacement included",
                f"resident memory at the end: web processes {memory['web']} MB, ingest worker {memory['worker']} MB",
                f"uploads: {dict(outcomes.uploads)}",
                f"documents: {len(rows)} rows, {figures.ready} ready, {chunks} chunks; "
                f"all ready {settled_at - uploaded_at:.1f} s after the last upload",
                f"searches: {dict(outcomes.searches)}",
                f"search latency (answered): p50 {statistics.median(latencies) * 1000:.0f} ms, "
                f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms"
                if latencies
                else "no search answered",
                f"queue sampled {watcher.samples} times; documents that changed hands: "
                f"{sum(1 for h in watcher.holders.values() if len(h) > 1)}",
                f"points checked {figures.points_checked}",
                f"ingestion: {chunks / (settled_at - started):.1f} chunks/s over the whole run with {INGEST_WORKERS} workers",
                f"took {took:.0f} s",
                f"problems found {len(problems)}",
                *(f"  {problem}" for problem in problems[:20]),
                "a sample of /metrics:",
                *sample,
            ]
        ),
        flush=True,
    )
    return 1 if problems else 0


def kill_one_of_each(deployment: Deployment, rng: random.Random) -> set[int]:
    """SIGKILL one uvicorn worker and the ingest worker holding a document (else either); their pids."""
    from knowledge.models import Document, DocumentStatus

    web = rng.choice(deployment.web_processes())
    holders = set(
        Document.objects.filter(status=DocumentStatus.PROCESSING).values_list("claimed_by", flat=True)
    )
    busy = [w for w in deployment.workers if any(h.split(":")[1:2] == [str(w.pid)] for h in holders)]
    worker = (busy or deployment.workers)[0]
    os.kill(web, signal.SIGKILL)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    print(
        f"killed web process {web} and ingest worker {worker.pid} (holding a document: {bool(busy)})",
        flush=True,
    )
    return {web, worker.pid}


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def scrape(url: str) -> list[str]:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=60)
    response.raise_for_status()
    wanted = (
        "kbsite_documents{",
        "kbsite_oldest_pending",
        "kbsite_ingested_chunks_total",
        "kbsite_search_seconds_count",
        "kbsite_embedding_batch_texts_count",
        "kbsite_qdrant_errors_total",
        'kbsite_request_seconds_count{method="POST",route="api/v1/search"',
    )
    return [f"  {line}" for line in response.text.splitlines() if line.startswith(wanted)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--searchers", type=int, default=4, help="threads searching without pause")
    parser.add_argument("--seed", type=int, default=None, help="of the documents and the victims (printed)")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a PostgreSQL database the drill makes and drops (default: %(default)s)",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    with tempfile.TemporaryDirectory(prefix="kbsite-deployment-drill-") as folder:
        print(f"deployment drill: {args.documents} documents, seed {seed}, in {folder}", flush=True)
        status = run(
            documents=args.documents,
            searchers=args.searchers,
            seed=seed,
            workdir=Path(folder),
            database_url=args.database_url,
        )
    sys.exit(status)


if __name__ == "__main__":
    main()

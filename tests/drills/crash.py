"""Crash drill: SIGKILL the embedded server at random moments while documents ingest, then check every point.

    python -m tests.drills.crash [--documents 200] [--kills 20] [--seed N] [--database-url URL]

A site of its own in a temporary folder (SQLite there unless --database-url names another database,
which the drill fills): uvicorn serving kbsite with its in-process worker on the embedded store.
Documents of mixed sizes and formats are uploaded through the API in waves; after each wave the
server is killed with SIGKILL at a random moment while it works, and started again. A few documents
are deleted along the way. Once every document is ready the server is stopped and the drill opens
the store itself to check, for every document, Qdrant's exact count against its chunk_count, that
a scroll returns chunk indexes 0..n-1 once each, that no point belongs to a deleted or failed
document, and that the knowledge base's count is the sum of its documents'. It prints its figures
and exits with 1 when it found a problem.
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
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "corpus"
START_SECONDS = 120
SETTLE_SECONDS = 900
POLL_SECONDS = 0.1


@dataclass
class Figures:
    seed: int
    documents: int = 0
    deleted: int = 0
    ready: int = 0
    kills: int = 0
    interrupted: int = 0
    pickup_seconds: list[float] = field(default_factory=list)
    pickup_from: str = "the restarted server answering"
    points_checked: int = 0
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        pickup = (
            f"median {statistics.median(self.pickup_seconds):.1f} s, longest {max(self.pickup_seconds):.1f} s"
            if self.pickup_seconds
            else "none to pick up"
        )
        lines = [
            f"seed {self.seed}",
            f"kills {self.kills} (SIGKILL of the server), documents in work at a kill {self.interrupted}",
            f"interrupted documents taken up again, counted from {self.pickup_from}: {pickup}",
            f"documents {self.documents} uploaded, {self.deleted} deleted, {self.ready} ready",
            f"points checked {self.points_checked}",
            f"problems found {len(self.problems)}",
            *(f"  {problem}" for problem in self.problems[:20]),
        ]
        return "\n".join(lines)


def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> object:
    """The condition's first true value, polled; RuntimeError naming `what` once `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not happen within {timeout:.0f}s")


class Site:
    """kbsite under uvicorn on a fixed loopback port, its output appended to a log; killed and started at will."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        """Start the server; returns the monotonic time at which it answered its health check."""
        with self.log.open("a", encoding="utf-8") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "kbsite.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._serving, timeout=START_SECONDS, what="the server answering /api/v1/health")
        return time.monotonic()

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def make_documents(rng: random.Random, count: int) -> list[tuple[str, str, str]]:
    """(format, title, text) of mixed sizes: a paragraph (one chunk), a corpus text (a few), or several (dozens)."""
    texts = [path.read_text(encoding="utf-8") for path in sorted(CORPUS.glob("*.md"))]
    paragraphs = [p for text in texts for p in text.split("\n\n") if len(p) > 80]
    documents = []
    for n in range(count):
        size = rng.choices(["small", "medium", "large"], weights=[6, 3, 1])[0]
        if size == "small":
            body = rng.choice(paragraphs)
        else:
            body = "\n\n".join(rng.choices(texts, k=1 if size == "medium" else rng.randint(3, 6)))
        # Each one unique: the same content twice in a KB is refused.
        text = f"# Drill document {n}\n\nWritten for crash drill document {n}.\n\n{body}"
        documents.append(
            (rng.choices(["text", "md", "html"], weights=[6, 3, 1])[0], f"Drill document {n}", text)
        )
    return documents


class Uploader:
    def __init__(self, site: Site, token: str) -> None:
        self.site = site
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = httpx.request(
            method, f"{self.site.url}/api/v1{path}", headers=self.headers, timeout=60, **kwargs
        )
        response.raise_for_status()
        return response

    def upload(self, kb_id: str, kind: str, title: str, text: str) -> str:
        if kind == "text":
            response = self.call("POST", f"/kbs/{kb_id}/documents/text", json={"title": title, "text": text})
        else:
            name = title.lower().replace(" ", "-")
            data = text if kind == "md" else f"<html><body><pre>{text}</pre></body></html>"
            response = self.call(
                "POST", f"/kbs/{kb_id}/documents", files={"file": (f"{name}.{kind}", data.encode())}
            )
        return response.json()["id"]


def run(*, documents: int, kills: int, seed: int, workdir: Path, database_url: str | None) -> Figures:
    rng = random.Random(seed)
    figures = Figures(seed=seed)
    for name in ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH"):
        os.environ.pop(name, None)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kbsite.settings",
        "KBSITE_VAR_DIR": str(workdir),
        "KBSITE_SEARCH_RATE_LIMIT": "off",
        "KBSITE_UPLOAD_RATE_LIMIT": "off",
        "KBSITE_IN_PROCESS_WORKER": "auto",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    # The drill reads the queue and, once the server is gone, the store with the site's own settings.
    os.environ.update(env)
    import django

    django.setup()
    from knowledge.models import Document, DocumentStatus

    manage(env, "migrate", "--no-input")
    manage(env, "bootstrap", "--no-demo")
    token = manage(env, "create_api_token", "admin", "--name", "crash drill", "--verbosity", "0").strip()
    site = Site(env, free_port(), workdir / "server.log")
    api = Uploader(site, token)
    planned = make_documents(rng, documents)
    # A quarter first, so that the first kill surely lands on work; then one wave after each restart.
    first, rest = planned[: len(planned) // 4], planned[len(planned) // 4 :]
    waves = [first] + [rest[i * len(rest) // kills : (i + 1) * len(rest) // kills] for i in range(kills)]
    if not kills:
        waves = [planned]
    uploaded: list[str] = []
    deleted: set[str] = set()

    def unfinished() -> int:
        return Document.objects.exclude(status__in=[DocumentStatus.READY, DocumentStatus.FAILED]).count()

    try:
        site.start()
        kb_id = api.call("POST", "/kbs", json={"name": f"Crash drill {seed}"}).json()["id"]
        for wave_number, wave in enumerate(waves):
            uploaded += [api.upload(kb_id, kind, title, text) for kind, title, text in wave]
            if uploaded and rng.random() < 0.5:
                # Deleted at any point of its life: pending, being indexed, or ready.
                victim = rng.choice([d for d in uploaded if d not in deleted])
                api.call("DELETE", f"/kbs/{kb_id}/documents/{victim}")
                deleted.add(victim)
            if wave_number < kills:
                kill_and_restart(site, rng, figures, unfinished)
        wait_until(lambda: not unfinished(), timeout=SETTLE_SECONDS, what="every document settled")
    finally:
        site.stop()
    figures.documents, figures.deleted = len(uploaded), len(deleted)
    asyncio.run(check_points(kb_id, uploaded, deleted, figures))
    return figures


def kill_and_restart(site: Site, rng: random.Random, figures: Figures, unfinished: Callable[[], int]) -> None:
    """SIGKILL the server at a random moment of its work, start it again, and time how soon it resumes."""
    from knowledge.models import Document, DocumentStatus

    wait_until(
        lambda: Document.objects.filter(status=DocumentStatus.PROCESSING).exists() or not unfinished(),
        timeout=SETTLE_SECONDS,
        what="a document in work",
    )
    # Something is in work; the kill comes up to a second and a half later, wherever the work then is.
    time.sleep(rng.uniform(0, 1.5))
    site.kill()
    figures.kills += 1
    stranded = dict(Document.objects.filter(status=DocumentStatus.PROCESSING).values_list("id", "claimed_by"))
    figures.interrupted += len(stranded)
    ready_at = site.start()

    def taken_up() -> bool:
        now = {
            pk: (status, holder)
            for pk, status, holder in Document.objects.filter(pk__in=list(stranded)).values_list(
                "id", "status", "claimed_by"
            )
        }
        return all(
            pk not in now
            or now[pk][0] == DocumentStatus.READY
            or (now[pk][0] == DocumentStatus.PROCESSING and now[pk][1] != holder)
            for pk, holder in stranded.items()
        )

    wait_until(taken_up, timeout=SETTLE_SECONDS, what="the interrupted documents taken up again")
    if stranded:
        figures.pickup_seconds.append(time.monotonic() - ready_at)


async def check_points(kb_id: str, uploaded: list[str], deleted: set[str], figures: Figures) -> None:
    """Hold every document row against the KB's points in Qdrant; what does not match goes to figures.problems."""
    from asgiref.sync import sync_to_async
    from qdrant_client import models

    from knowledge.models import Document, DocumentStatus
    from knowledge.services.knowledge_bases import KnowledgeBaseIndexes
    from search.qdrant import qdrant_service
    from search.services.collections import tenant_filter

    problems = figures.problems
    rows = await sync_to_async(
        lambda: {
            str(pk): (status, count)
            for pk, status, count in Document.objects.filter(knowledge_base_id=kb_id).values_list(
                "id", "status", "chunk_count"
            )
        }
    )()
    for pk in deleted:
        if pk in rows:
            problems.append(f"document {pk} was deleted but its row remains")
    figures.ready = sum(1 for status, _ in rows.values() if status == DocumentStatus.READY)
    for pk in set(uploaded) - deleted:
        status, _ = rows.get(pk, (None, 0))
        if status != DocumentStatus.READY:
            problems.append(f"document {pk} is {status}, not ready")

    index = await KnowledgeBaseIndexes().active_index(kb_id=kb_id)
    client, collection = qdrant_service.client, index.collection
    tenant = models.Filter(must=[tenant_filter(index.tenant)])
    indexes: dict[str, list[int]] = defaultdict(list)
    offset = None
    while True:
        points, offset = await client.scroll(
            collection,
            scroll_filter=tenant,
            limit=512,
            offset=offset,
            with_payload=["document_id", "chunk_index"],
            with_vectors=False,
        )
        for point in points:
            indexes[point.payload["document_id"]].append(point.payload["chunk_index"])
        figures.points_checked += len(points)
        if offset is None:
            break
    for document_id, found in indexes.items():
        status, _ = rows.get(document_id, (None, 0))
        if status != DocumentStatus.READY:
            problems.append(f"{len(found)} points belong to {document_id}, which is {status or 'deleted'}")
    for pk, (status, chunk_count) in rows.items():
        if status != DocumentStatus.READY:
            continue
        exact = await client.count(
            collection,
            count_filter=models.Filter(
                must=[
                    tenant_filter(index.tenant),
                    models.FieldCondition(key="document_id", match=models.MatchValue(value=pk)),
                ]
            ),
            exact=True,
        )
        if exact.count != chunk_count:
            problems.append(
                f"document {pk}: Qdrant counts {exact.count} points, its chunk_count is {chunk_count}"
            )
        repeated = [index for index, times in Counter(indexes.get(pk, [])).items() if times > 1]
        if sorted(set(indexes.get(pk, []))) != list(range(chunk_count)) or repeated:
            problems.append(f"document {pk}: chunk indexes are not 0..{chunk_count - 1} once each")
    total = (await client.count(collection, exact=True)).count
    expected = sum(count for status, count in rows.values() if status == DocumentStatus.READY)
    if total != expected:
        problems.append(f"the knowledge base holds {total} points, its documents count {expected}")
    qdrant_service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--seed", type=int, default=None, help="of the random moments and documents (printed)"
    )
    parser.add_argument(
        "--database-url", help="a database the drill may fill (default: SQLite in a temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its server.log)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    workdir = Path(tempfile.mkdtemp(prefix="kbsite-crash-drill-"))
    print(
        f"crash drill: {args.documents} documents, {args.kills} kills, seed {seed}, in {workdir}", flush=True
    )
    started = time.monotonic()
    figures = run(
        documents=args.documents, kills=args.kills, seed=seed, workdir=workdir, database_url=args.database_url
    )
    print(figures.report())
    print(f"took {time.monotonic() - started:.0f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if figures.problems else 0)


if __name__ == "__main__":
    main()

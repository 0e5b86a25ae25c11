"""The crash drill, short: real SIGKILLs of the server or of ingest workers mid-ingestion lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from knowledge.models import Document, DocumentStatus
from knowledge.services.documents import DocumentService
from tests.drills import crash
from tests.factories import make_document, make_kb
from tests.integration.test_concurrent_workers import worker_database_url
from tests.support.live_server import site_environment
from tests.support.qdrant_grpc import LoopbackQdrantServer

pytestmark = [pytest.mark.integration, pytest.mark.drill]

DOCUMENTS = 16
KILLS = 3
SEED = 9
# Each restart loads Django and the model: tens of seconds on a busy two-core machine.
DRILL_TIMEOUT_SECONDS = 1500
SERVER_PATH_LEASE_SECONDS = 5


def test_killing_the_embedded_server_mid_ingestion_leaves_every_document_ready_and_whole(tmp_path):
    with site_environment(tmp_path) as env:
        database = ["--database-url", env["DATABASE_URL"]] if "DATABASE_URL" in env else []
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.drills.crash",
                "--documents",
                str(DOCUMENTS),
                "--kills",
                str(KILLS),
                "--seed",
                str(SEED),
                *database,
            ],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=DRILL_TIMEOUT_SECONDS,
            check=False,
        )
    report = done.stdout + done.stderr
    print(report)

    assert done.returncode == 0, report
    assert re.search(rf"^kills {KILLS} ", report, re.M), report
    assert re.search(r"^problems found 0$", report, re.M), report
    checked = int(re.search(r"^points checked (\d+)$", report, re.M).group(1))
    assert checked >= DOCUMENTS / 2, report


def start_ingest_worker(server: LoopbackQdrantServer) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kbsite.settings",
        "DATABASE_URL": worker_database_url(),
        "QDRANT_URL": server.url,
        "QDRANT_GRPC_PORT": str(server.grpc_port),
        "KBSITE_IN_PROCESS_WORKER": "false",
        # Here a killed worker's documents wait out its lease: a short one keeps the drill short.
        "KBSITE_INGEST_LEASE_SECONDS": str(SERVER_PATH_LEASE_SECONDS),
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "ingest_worker", "--poll", "0.2"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="worker processes share the queue only through a database server: set DATABASE_URL to PostgreSQL",
)
def test_killing_ingest_workers_on_a_qdrant_server_leaves_every_document_ready_and_whole(qdrant_server):
    rng = random.Random(SEED)
    figures = crash.Figures(seed=SEED, pickup_from="the kill (the lease lapsing, a worker free)")
    kb = make_kb(name="Server-path crash drill", chunk_size=48, chunk_overlap=8)
    uploaded = [
        str(make_document(kb=kb, title=title, text=text).pk)
        for _, title, text in crash.make_documents(rng, DOCUMENTS)
    ]
    deleted = {uploaded[0]}
    workers = [start_ingest_worker(qdrant_server) for _ in range(2)]
    try:

        def in_work() -> dict:
            return dict(
                Document.objects.filter(status=DocumentStatus.PROCESSING).values_list("id", "claimed_by")
            )

        def unsettled() -> bool:
            return Document.objects.exclude(status__in=[DocumentStatus.READY, DocumentStatus.FAILED]).exists()

        rounds = iter(range(1, 100))

        def documents_in_work() -> dict:
            """The documents in work; when the workers have finished everything, more for them first,
            so that every kill lands mid-ingestion however fast the machine is."""
            found = in_work()
            if not found and not unsettled():
                round_ = next(rounds)
                uploaded.extend(
                    str(make_document(kb=kb, title=f"{title}, round {round_}", text=f"Round {round_}.\n\n{text}").pk)
                    for _, title, text in crash.make_documents(rng, DOCUMENTS // 2)
                )
            return found

        for kill in range(KILLS):
            crash.wait_until(documents_in_work, timeout=crash.SETTLE_SECONDS, what="a document in work")
            time.sleep(rng.uniform(0, 1.5))
            victim = rng.randrange(len(workers))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            figures.kills += 1
            killed_at = time.monotonic()
            stranded = {
                pk: holder for pk, holder in in_work().items() if f":{workers[victim].pid}:" in holder
            }
            figures.interrupted += len(stranded)
            workers[victim] = start_ingest_worker(qdrant_server)
            if kill == 0:
                DocumentService().delete_document(document=Document.objects.get(pk=uploaded[0]))

            def taken_up(stranded=stranded) -> bool:
                now = dict(Document.objects.filter(pk__in=list(stranded)).values_list("id", "claimed_by"))
                return all(now.get(pk, "gone") != holder for pk, holder in stranded.items())

            crash.wait_until(
                taken_up, timeout=crash.SETTLE_SECONDS, what="the killed worker's documents taken up"
            )
            if stranded:
                figures.pickup_seconds.append(time.monotonic() - killed_at)
        crash.wait_until(lambda: not unsettled(), timeout=crash.SETTLE_SECONDS, what="every document settled")
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    figures.documents, figures.deleted = len(uploaded), len(deleted)
    asyncio.run(crash.check_points(str(kb.pk), uploaded, deleted, figures))
    print(figures.report())

    assert figures.kills == KILLS
    assert figures.problems == []
    assert figures.points_checked >= DOCUMENTS / 2

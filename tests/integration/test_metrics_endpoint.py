"""The /metrics endpoint scraped from a real uvicorn with two worker processes, a worker beside it, on the server path.

Every figure comes from what the test did: searches by mode, the document's chunks, its status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live_server import BASE_DIR, live_server, manage, site_environment
from tests.support.qdrant_grpc import LoopbackQdrantServer

pytestmark = [pytest.mark.integration, pytest.mark.server]

METRICS_TOKEN = "scrape-me-0123456789"
CONDITION_SECONDS = 120
TEXT = "# Tides\n\nHigh tide comes about every twelve hours and twenty-five minutes.\n\n" * 30
SEARCHES = {"semantic": 3, "keyword": 2}


def call(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(condition, *, what: str):
    deadline = time.monotonic() + CONDITION_SECONDS
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)  # a poll's pause, not a wait for a result
    pytest.fail(f"timed out waiting for {what}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, API token) of a site with two web processes and one ingest_worker sharing a metrics folder."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with (
        LoopbackQdrantServer() as qdrant,
        site_environment(
            tmp_path / "var",
            QDRANT_URL=qdrant.url,
            QDRANT_GRPC_PORT=str(qdrant.grpc_port),
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            KBSITE_METRICS_TOKEN=METRICS_TOKEN,
            KBSITE_INGEST_POLL_SECONDS="0.2",
        ) as env,
    ):
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", "--username", "admin", env=env)
        token = (
            manage("create_api_token", "admin", "--name", "metrics test", env=env).strip().splitlines()[-1]
        )
        with (tmp_path / "worker.log").open("w") as worker_log:
            worker = subprocess.Popen(
                [sys.executable, "manage.py", "ingest_worker"],
                cwd=BASE_DIR,
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
        try:
            with live_server(env, tmp_path / "server.log", workers=2) as server:
                yield server.url, token
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def test_metrics_count_what_every_process_did_and_need_a_token_or_staff(site: tuple[str, str]) -> None:
    url, token = site
    api = f"{url}/api/v1"
    status, body = call(f"{api}/kbs", token=token, body={"name": "Metrics"})
    assert status == 201, body
    kb = json.loads(body)["id"]
    status, body = call(f"{api}/kbs/{kb}/documents/text", token=token, body={"title": "Tides", "text": TEXT})
    assert status == 202, body
    document = json.loads(body)["id"]

    def ready() -> dict | None:
        answer = json.loads(call(f"{api}/kbs/{kb}/documents/{document}", token=token)[1])
        assert answer["status"] != "failed", answer
        return answer if answer["status"] == "ready" else None

    chunk_count = wait_for(ready, what="the document to be ready")["chunk_count"]
    for mode, times in SEARCHES.items():
        for attempt in range(times):
            # each query its own words: a repeated one is answered from the query-embedding cache
            status, body = call(
                f"{api}/search",
                token=token,
                body={"query": f"when is high tide ({mode} {attempt})", "kb_ids": [kb], "mode": mode},
            )
            assert status == 200, body

    assert call(f"{url}/metrics")[0] == 403
    assert call(f"{url}/metrics", token="not-the-token")[0] == 403
    status, body = call(f"{url}/metrics", token=METRICS_TOKEN)
    assert status == 200
    scraped = samples(body.decode())
    print(body.decode())

    for mode, times in SEARCHES.items():
        assert scraped[("kbsite_search_seconds_count", (("mode", mode),))] == times
    assert scraped[("kbsite_documents", (("status", "ready"),))] == 1
    assert scraped[("kbsite_documents", (("status", "pending"),))] == 0
    assert scraped[("kbsite_oldest_pending_document_age_seconds", ())] == 0
    # the worker process embedded and wrote the chunks; a web process reports them
    assert scraped[("kbsite_ingested_chunks_total", ())] == chunk_count
    assert scraped[("kbsite_embedding_batch_texts_sum", (("kind", "document"),))] == chunk_count
    assert scraped[("kbsite_embedding_batch_texts_count", (("kind", "query"),))] >= SEARCHES["semantic"]
    search_requests = scraped[
        ("kbsite_request_seconds_count", (("method", "POST"), ("route", "api/v1/search"), ("status", "2xx")))
    ]
    assert search_requests == sum(SEARCHES.values())

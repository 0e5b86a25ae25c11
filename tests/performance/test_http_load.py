"""100 clients searching a real uvicorn server for 30 s over HTTP: every request answered 200.

The server is the embedded default (SQLite, embedded Qdrant, the in-process worker) seeded with the
test corpus through manage.py before it starts; the load comes from tests/benchmarks/http_load.py
in a process of its own, so that the clients do not share the server's or pytest's event loop.
Latencies are printed (run with -s), not asserted: they depend on the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.factories import CORPUS_DIR
from tests.support.live_server import BASE_DIR, live_server, manage, site_environment

pytestmark = pytest.mark.performance

ADMIN = "admin"
CLIENTS = 100
SECONDS = 30
LEAST_REQUESTS = 1_000
# The run's length, plus the slowest request under way at its end, plus start-up of the script.
SCRIPT_TIMEOUT = SECONDS + 120
LOAD_SCRIPT = BASE_DIR / "tests" / "benchmarks" / "http_load.py"


@pytest.fixture
def corpus_site(tmp_path):
    """(url, token, kb_id): a server whose KB `corpus` holds the test corpus, ready, in default chunks."""
    with site_environment(tmp_path / "var", KBSITE_ADMIN_PASSWORD="http-load-password") as env:
        yield from _seeded_site(tmp_path, env)


def _seeded_site(tmp_path, env):
    manage("migrate", "--no-input", env=env)
    manage("bootstrap", "--no-demo", "--username", ADMIN, env=env)
    token = manage("create_api_token", ADMIN, "--name", "http load", env=env).strip()
    files = sorted(str(path) for path in CORPUS_DIR.glob("*.md"))
    manage("ingest", *files, "--kb", "corpus", "--create", "--owner", ADMIN, env=env)
    with live_server(env, tmp_path / "server.log") as server:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as api:
            kbs = api.get("/kbs").raise_for_status().json()["items"]
            kb_id = next(kb["id"] for kb in kbs if kb["slug"] == "corpus")
            stats = api.get(f"/kbs/{kb_id}/stats").raise_for_status().json()
        assert stats["documents"]["ready"] == len(files), stats
        yield server, token, kb_id


def _figure(output: str, label: str) -> int:
    found = re.search(rf"^{label}: (\d+)$", output, re.MULTILINE)
    assert found, f"the load script printed no '{label}:' line:\n{output}"
    return int(found.group(1))


def test_100_clients_searching_for_30_seconds_all_get_answers(corpus_site, show):
    server, token, kb_id = corpus_site
    done = subprocess.run(
        [
            sys.executable,
            str(LOAD_SCRIPT),
            "--url",
            server.url,
            "--token",
            token,
            "--kb",
            kb_id,
            "--clients",
            str(CLIENTS),
            "--seconds",
            str(SECONDS),
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    show(f"\nHTTP load, {CLIENTS} clients for {SECONDS} s:\n{done.stdout}{done.stderr}")
    logged = [line for line in server.log.read_text(errors="replace").splitlines() if " ERROR " in line]
    assert done.returncode == 0, "The load script failed. The server logged:\n" + "\n".join(logged[:20])
    assert _figure(done.stdout, "errors") == 0
    assert _figure(done.stdout, "requests") >= LEAST_REQUESTS

"""The Procfile and the systemd units of docs/DEPLOY.md, run as written: a site serves, a worker indexes, /metrics answers.

It also prints the resident memory of each web and worker process (the sizing figures of docs/DEPLOY.md).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live_server import BASE_DIR, free_port, manage, site_environment
from tests.support.qdrant_grpc import LoopbackQdrantServer

pytestmark = [pytest.mark.integration, pytest.mark.server]

UNITS = BASE_DIR / "deploy" / "systemd"
METRICS_TOKEN = "process-files-test"
CONDITION_SECONDS = 300


def call(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_for(condition, *, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + CONDITION_SECONDS
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if process.poll() is not None:
            pytest.fail(f"the processes exited with {process.returncode} before {what}")
        time.sleep(0.2)  # a poll's pause, not a wait for a result
    pytest.fail(f"timed out waiting for {what}")


def descendants(pid: int) -> list[tuple[int, str, int]]:
    """(pid, command line, resident MB) of every process under `pid`."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        proc = Path(f"/proc/{child}")
        try:
            command = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
            rss = next(
                int(line.split()[1]) // 1024
                for line in proc.joinpath("status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (FileNotFoundError, StopIteration):
            continue
        found.append((int(child), command, rss))
        found.extend(descendants(int(child)))
    return found


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[dict[str, str]]:
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
            WEB_CONCURRENCY="2",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        ) as env,
    ):
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", "--username", "admin", env=env)
        env["TOKEN"] = manage("create_api_token", "admin", "--verbosity", "0", env=env).strip()
        yield env


def exercise(url: str, token: str, process: subprocess.Popen) -> None:
    """Upload a document, wait until a worker made it ready, search it, scrape the metrics."""
    wait_for(
        lambda: call(f"{url}/api/v1/health")[0] == 200, what="the web processes answering", process=process
    )
    api = f"{url}/api/v1"
    kb = json.loads(call(f"{api}/kbs", token=token, body={"name": "Deploy"})[1])["id"]
    text = "# Tides\n\nHigh tide comes about every twelve hours and twenty-five minutes.\n"
    status, body = call(f"{api}/kbs/{kb}/documents/text", token=token, body={"title": "Tides", "text": text})
    assert status == 202, body
    document = json.loads(body)["id"]
    wait_for(
        lambda: json.loads(call(f"{api}/kbs/{kb}/documents/{document}", token=token)[1])["status"] == "ready",
        what="an ingest worker indexing the document",
        process=process,
    )
    status, body = call(f"{api}/search", token=token, body={"query": "when is high tide", "kb_ids": [kb]})
    assert status == 200 and json.loads(body)["results"], body
    status, body = call(f"{url}/metrics", token=METRICS_TOKEN)
    assert status == 200 and 'kbsite_documents{status="ready"} 1.0' in body.decode(), body


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def print_memory(root: int) -> None:
    for pid, command, rss in descendants(root):
        if "uvicorn" in command or "spawn_main" in command or "ingest_worker" in command:
            role = "worker" if "ingest_worker" in command else "web"
            print(f"sizing: {role} process {pid}: {rss} MB resident")


def test_the_procfile_as_written_runs_the_site_under_honcho(environment: dict[str, str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", "Procfile", "start", "-p", str(port)],
        cwd=BASE_DIR,
        env=environment,
        start_new_session=True,
    )
    try:
        exercise(f"http://127.0.0.1:{port}", environment["TOKEN"], process)
        print_memory(process.pid)
    finally:
        stop(process)


def unit_command(unit: str, env: dict[str, str]) -> list[str]:
    """A unit's ExecStart with its paths moved to this checkout and its ${VARIABLES} expanded, as systemd would."""
    text = (UNITS / unit).read_text()
    assert "EnvironmentFile=/etc/kbsite/kbsite.env" in text
    assert "WorkingDirectory=/srv/kbsite" in text
    line = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)
    line = line.replace("/srv/kbsite/.venv/bin/python", sys.executable)
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in shlex.split(line)]


def test_the_systemd_units_commands_run_the_site(environment: dict[str, str]) -> None:
    web_command = unit_command("kbsite-web.service", environment)
    port = free_port()
    web_command[web_command.index("--port") + 1] = str(port)  # the unit's 8000 may be taken here
    web = subprocess.Popen(web_command, cwd=BASE_DIR, env=environment)
    worker = subprocess.Popen(
        unit_command("kbsite-worker@.service", environment), cwd=BASE_DIR, env=environment
    )
    try:
        exercise(f"http://127.0.0.1:{port}", environment["TOKEN"], web)
    finally:
        stop(worker)
        stop(web)
    assert worker.returncode == 0, "an ingest worker stops cleanly on SIGTERM, as systemd sends it"

"""A kbsite of its own in subprocesses: manage.py to seed it, then uvicorn on a free loopback port.

Each site keeps the embedded Qdrant store under its own KBSITE_VAR_DIR, and its database there too
(SQLite), or, when the tests run on PostgreSQL, in a PostgreSQL database made for it and dropped
after. The embedded store may be opened by one process at a time, so everything that touches it
(`ingest` without `--enqueue`) runs before the server starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings

BASE_DIR = Path(__file__).resolve().parents[2]
SERVER_START_SECONDS = 60
SERVER_STOP_SECONDS = 30
# Settings that would send the site to another database or Qdrant than its own temporary ones.
FOREIGN_SETTINGS = ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY", "KBSITE_IN_PROCESS_WORKER")


@dataclass(frozen=True)
class LiveServer:
    url: str
    log: Path
    #: The uvicorn process (with more than one worker, their supervisor).
    pid: int | None = None


@contextmanager
def site_environment(var_dir: Path, **extra: str) -> Iterator[dict[str, str]]:
    """The environment of a site kept in `var_dir`: production settings, embedded defaults, no rate limit."""
    env = {name: value for name, value in os.environ.items() if name not in FOREIGN_SETTINGS}
    env.update(
        DJANGO_SETTINGS_MODULE="kbsite.settings",
        KBSITE_VAR_DIR=str(var_dir),
        KBSITE_SEARCH_RATE_LIMIT="off",
        PYTHONUNBUFFERED="1",
    )
    # The models made from the built-in one are the same for every site: made once, not once a site.
    cache_dir = settings.EMBEDDING.get("OPTIONS", {}).get("cache_dir")
    if cache_dir:
        env.setdefault("EMBEDDING_CACHE_DIR", str(cache_dir))
    env.update(extra)
    with _site_database() as database_url:
        if database_url:
            env["DATABASE_URL"] = database_url
        yield env


@contextmanager
def _site_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database when the tests run on PostgreSQL (else None: SQLite in var_dir)."""
    database = settings.DATABASES["default"]
    if "postgresql" not in database["ENGINE"]:
        yield None
        return
    server = {
        "host": database.get("HOST") or "localhost",
        "port": database.get("PORT") or 5432,
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
    }
    name = f"kbsite_live_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    credentials = quote(server["user"] or "", safe="") + (
        ":" + quote(server["password"], safe="") if server["password"] else ""
    )
    try:
        yield f"postgres://{credentials}@{server['host']}:{server['port']}/{name}"
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(*args: str, env: dict[str, str]) -> str:
    """Run a manage.py command in the site's environment and return what it printed on stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}", pytrace=False)
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        try:
            # The pause between two polls, which also notices a server that died.
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"The server exited with {process.returncode}:\n{log.read_text()}", pytrace=False)
    pytest.fail(
        f"The server did not answer {url} within {SERVER_START_SECONDS}s:\n{log.read_text()}", pytrace=False
    )


@contextmanager
def live_server(env: dict[str, str], log: Path, *, workers: int = 1) -> Iterator[LiveServer]:
    """uvicorn serving kbsite.asgi (with its in-process ingestion worker), its output in `log`, stopped on exit.

    No access log: a fuzzing or load run would write a line per request.
    """
    port = free_port()
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "kbsite.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--workers",
                str(workers),
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, f"{url}/api/v1/health", log)
        yield LiveServer(url=url, log=log, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""A kbsite server of its own (uvicorn, SQLite, embedded Qdrant in a temporary folder) and a Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = Path("/usr/bin/chromium")
# Without them Chromium reaches out to Google's services, which the closed network refuses noisily.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "browser-test-password"
SERVER_START_SECONDS = 60
# Settings that would send the server to another database or Qdrant than its own temporary ones.
FOREIGN_SETTINGS = ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY", "KBSITE_IN_PROCESS_WORKER")


@dataclass(frozen=True)
class Server:
    url: str
    username: str
    password: str


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Add the server's output to the report of a failed browser test: the browser seldom says why."""
    report = yield
    log = getattr(item, "kbsite_server_log", None)
    if report.failed and log is not None and log.exists():
        report.sections.append(("kbsite server output", log.read_text(encoding="utf-8", errors="replace")))
    return report


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_env(var_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in FOREIGN_SETTINGS}
    env.update(
        DJANGO_SETTINGS_MODULE="kbsite.settings",
        KBSITE_VAR_DIR=str(var_dir),
        KBSITE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        PYTHONUNBUFFERED="1",
    )
    return env


def _manage(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}", pytrace=False)


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


@pytest.fixture
def kbsite_server(request, tmp_path) -> Iterator[Server]:
    """uvicorn serving kbsite.asgi, with its ingestion worker, on a free port of the loopback."""
    env = _server_env(tmp_path / "var")
    _manage("migrate", "--no-input", env=env)
    _manage("bootstrap", "--no-demo", "--username", ADMIN_USERNAME, env=env)
    port = _free_port()
    log = tmp_path / "server.log"
    request.node.kbsite_server_log = log
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
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, f"{url}/admin/login/", log)
        yield Server(url=url, username=ADMIN_USERNAME, password=ADMIN_PASSWORD)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(tmp_path):
    """A page of a headless Chromium from Debian's package, with a profile of its own."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: `pip install -e '.[test]'` (or `pip install playwright`). "
            "Do not run `playwright install`: the test drives Debian's chromium.",
            pytrace=False,
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()

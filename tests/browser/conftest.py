"""A kbsite server of its own (uvicorn, embedded Qdrant in a temporary folder) and a Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.live_server import live_server, manage, site_environment

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


@pytest.fixture
def kbsite_server(request, tmp_path) -> Iterator[Server]:
    """uvicorn serving kbsite.asgi, with its ingestion worker, on a free port of the loopback."""
    with site_environment(tmp_path / "var", KBSITE_ADMIN_PASSWORD=ADMIN_PASSWORD) as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", "--username", ADMIN_USERNAME, env=env)
        request.node.kbsite_server_log = tmp_path / "server.log"
        with live_server(env, request.node.kbsite_server_log) as server:
            yield Server(url=server.url, username=ADMIN_USERNAME, password=ADMIN_PASSWORD)


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

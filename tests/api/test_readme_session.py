"""The README's curl session, run as a reader would paste it, against a live kbsite of its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.support.live_server import BASE_DIR, live_server, manage, site_environment

pytestmark = pytest.mark.browser  # a live uvicorn server, like the browser tests


def readme_session() -> str:
    readme = (BASE_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    return next(block for block in blocks if block.startswith("TOKEN=$("))


def test_the_readme_api_session_runs_as_pasted(tmp_path) -> None:
    session = readme_session()
    (tmp_path / "var").mkdir()
    with site_environment(tmp_path / "site", KBSITE_ADMIN_PASSWORD="readme-pw") as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", env=env)
        with live_server(env, tmp_path / "server.log") as server:
            # The reader's machine: the project's venv, the server on port 8000, a var/ folder at hand.
            script = re.sub(r"(?<![\w/])\.venv/bin/python", sys.executable, session)
            script = script.replace(" manage.py ", f" {BASE_DIR / 'manage.py'} ")
            # The session reaches the server through the PORT the reader gave `make run`, as pasted.
            assert "http://127.0.0.1:${PORT:-8000}/api/v1" in script
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                env={**env, "PORT": str(urlsplit(server.url).port)},
                capture_output=True,
                text=True,
                timeout=120,
            )

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "ready"
    answer = json.loads(lines[-1])
    assert answer["mode"] == "hybrid"
    assert "twelve hours" in answer["results"][0]["text"]

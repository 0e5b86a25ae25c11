"""`manage.py check` as an operator runs it: quiet on a fresh install, clean with the README's production
environment, and warning about the public key when a deployment has none of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kbsite.secret_key import write_secret_key_once
from tests.support.live_server import BASE_DIR

pytestmark = pytest.mark.integration


def clean_environment(var_dir: Path) -> dict[str, str]:
    """This machine's environment without any kbsite or Django setting, the site's files in `var_dir`."""
    prefixes = ("DJANGO_", "KBSITE_", "QDRANT_", "DATABASE_URL", "EMBEDDING_", "CHUNK_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    env.update(DJANGO_SETTINGS_MODULE="kbsite.settings", KBSITE_VAR_DIR=str(var_dir))
    return env


def run_check(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "check", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def readme_production_block() -> str:
    readme = (BASE_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    return next(block for block in blocks if block.startswith("export DJANGO_SECRET_KEY="))


def test_the_readme_production_environment_passes_check_deploy_with_nothing_to_report(tmp_path) -> None:
    script = readme_production_block()
    script = re.sub(r"(?<![\w/])\.venv/bin/python", sys.executable, script)
    script = script.replace(" manage.py ", f" {BASE_DIR / 'manage.py'} ")

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=clean_environment(tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout, done.stdout + done.stderr


def test_a_deployment_without_a_key_of_its_own_is_warned_by_check_deploy(tmp_path) -> None:
    env = clean_environment(tmp_path / "var") | {"DJANGO_DEBUG": "false"}

    output = run_check("--deploy", env=env)

    assert "knowledge.W001" in output and "DJANGO_SECRET_KEY is unset" in output


def test_a_fresh_install_says_nothing_about_the_key_on_an_ordinary_command(tmp_path) -> None:
    output = run_check(env=clean_environment(tmp_path / "var"))

    assert "System check identified no issues" in output and "W001" not in output


def test_the_key_written_into_var_is_read_at_start_and_silences_the_warning(tmp_path) -> None:
    var_dir = tmp_path / "var"
    write_secret_key_once(var_dir / "secret_key")

    output = run_check("--deploy", env=clean_environment(var_dir))

    # Django's own check would flag the public default key too (it starts with "django-insecure-").
    assert "knowledge.W001" not in output and "security.W009" not in output
    assert "security.W004" in output, "check --deploy did not run"


@pytest.mark.django_db
def test_with_https_on_pages_redirect_plain_http_but_health_probes_do_not(client, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True

    page = client.get("/accounts/login/")
    health = client.get("/api/v1/health")

    assert page.status_code == 301 and page["Location"] == "https://testserver/accounts/login/"
    assert health.status_code == 200

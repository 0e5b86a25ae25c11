"""The deployment drill, short: 3 web processes and 2 ingest workers, one of each SIGKILLed, lose and duplicate nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings

# It makes a PostgreSQL database of its own whatever DATABASE_URL says: one database pass runs it.
pytestmark = [pytest.mark.integration, pytest.mark.server, pytest.mark.drill, pytest.mark.database_free]

DOCUMENTS = 20
SEARCHERS = 1
SEED = 22
POSTGRES = "postgres://postgres@127.0.0.1:5432"
# Seven processes load Django and the model: minutes on a busy two-core machine.
DRILL_TIMEOUT_SECONDS = 1500


def test_a_deployment_losing_a_web_process_and_a_worker_answers_and_indexes_everything_once() -> None:
    try:
        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("the deployment drill needs PostgreSQL on 127.0.0.1:5432 (user postgres)")
    database = f"{POSTGRES}/kbsite_deployment_drill_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.drills.deployment",
            "--documents",
            str(DOCUMENTS),
            "--searchers",
            str(SEARCHERS),
            "--seed",
            str(SEED),
            "--database-url",
            database,
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=DRILL_TIMEOUT_SECONDS,
        check=False,
    )
    report = done.stdout + done.stderr
    print(report)

    assert done.returncode == 0, report
    assert re.search(r"^problems found 0$", report, re.M), report
    assert re.search(rf"^documents: {DOCUMENTS} rows, {DOCUMENTS} ready,", report, re.M), report
    answered = int(re.search(r"'answered': (\d+)", report).group(1))
    assert answered > 0, report
    assert re.search(r"^killed web process \d+ and ingest worker \d+", report, re.M), report

"""The crash drill, short: real SIGKILLs of the embedded server while documents ingest lose and duplicate nothing."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.live_server import site_environment

pytestmark = [pytest.mark.integration, pytest.mark.drill]

DOCUMENTS = 16
KILLS = 3
SEED = 9
# Each restart loads Django and the model: tens of seconds on a busy two-core machine.
DRILL_TIMEOUT_SECONDS = 1500


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

"""A knowledge base's page with many documents, filtered and not, next to the API's list of the same documents.

    python -m tests.benchmarks.kb_page [--documents 5000] [--requests 40]

A site of its own (one KB of `--documents` rows, each with two tags of 20, no worker running) is served by
uvicorn; the owner's page `/kbs/<id>/` unfiltered, filtered by a tag and filtered by a status, and the
API's `GET /kbs/<id>/documents?limit=25` (the reference) are asked in turn, one request at a time. Each
one's median and p90 are printed with its ratio to the API's median, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SEED = """
from django.contrib.auth import get_user_model
from knowledge.models import Document, DocumentStatus
from knowledge.services.knowledge_bases import KnowledgeBaseService
owner = get_user_model().objects.create_user(username="owner", password="bench-pw")
kb = KnowledgeBaseService().create_knowledge_base(name="Many", slug="many", owner=owner)
Document.objects.bulk_create(
    [Document(knowledge_base=kb, title=f"Note {n}", source_name=f"note-{n}.txt", content_hash=f"{n:064x}",
              text="", status=DocumentStatus.FAILED if n % 50 == 0 else DocumentStatus.READY,
              error="Damaged." if n % 50 == 0 else "", tags=[f"t{n % 20}", f"t{(n + 7) % 20}"],
              metadata={"n": n}) for n in range(DOCUMENTS)],
    batch_size=1000,
)
print(kb.pk)
"""


def timed(call) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=40, help="requests per kind")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    import httpx

    from tests.support.live_server import live_server, manage, site_environment

    root = Path(tempfile.mkdtemp(prefix="kbsite-kb-page-"))
    with site_environment(root / "var", KBSITE_IN_PROCESS_WORKER="false") as env:
        manage("migrate", "--no-input", env=env)
        kb_id = (
            manage("shell", "-c", SEED.replace("DOCUMENTS", str(args.documents)), env=env)
            .strip()
            .splitlines()[-1]
        )
        token = manage("create_api_token", "owner", "--name", "bench", env=env).strip().splitlines()[-1]
        with live_server(env, root / "server.log") as server:
            page = httpx.Client(base_url=server.url, follow_redirects=True, timeout=60)
            login = page.get("/accounts/login/")
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            page.post(
                "/accounts/login/",
                data={"username": "owner", "password": "bench-pw", "csrfmiddlewaretoken": csrf},
            )
            api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            kinds = {
                "API list (reference)": lambda: api.get(
                    f"/api/v1/kbs/{kb_id}/documents", params={"limit": 25}
                ),
                "page, unfiltered": lambda: page.get(f"/kbs/{kb_id}/"),
                "page, one tag": lambda: page.get(f"/kbs/{kb_id}/", params={"tag": "t3"}),
                "page, failed only": lambda: page.get(f"/kbs/{kb_id}/", params={"status": "failed"}),
                "page, tag, page 20": lambda: page.get(f"/kbs/{kb_id}/", params={"tag": "t3", "page": 20}),
            }
            for call in kinds.values():
                call().raise_for_status()
            times: dict[str, list[float]] = {name: [] for name in kinds}
            for _ in range(args.requests):
                for name, call in kinds.items():
                    times[name].append(timed(call))
    reference = statistics.median(times["API list (reference)"])
    print(f"{args.documents} documents, {args.requests} requests each")
    for name, values in times.items():
        median, p90 = statistics.median(values), statistics.quantiles(values, n=10)[-1]
        print(
            f"{name:22} median {median:7.1f} ms  p90 {p90:7.1f} ms  {median / reference:5.2f}x the API's median"
        )


if __name__ == "__main__":
    main()

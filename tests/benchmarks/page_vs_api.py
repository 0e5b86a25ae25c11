"""The search page's server time next to the API's for the same search, on one live uvicorn server.

    python -m tests.benchmarks.page_vs_api [--requests 60]

A site of its own (the test corpus in one KB, a superuser with a token) is served by uvicorn; the
same query is then asked alternately of `GET /search/?q=…` (signed in with a session) and
`POST /api/v1/search` (a token), one request at a time so each is measured alone, and each side's
median and p90 latency are printed with the page's ratio to the API. The issue's bar: at most 1.10.
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
QUERIES = [
    "how do bees tell each other where flowers are",
    "why does the sea rise and fall twice a day",
    "what makes a volcano erupt",
    "how does TCP resend lost packets",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per side")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    import httpx

    from tests.factories import CORPUS_DIR
    from tests.support.live_server import live_server, manage, site_environment

    root = Path(tempfile.mkdtemp(prefix="kbsite-page-vs-api-"))
    with site_environment(root / "var", KBSITE_ADMIN_PASSWORD="bench-pw") as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", env=env)
        manage("ingest", *map(str, sorted(CORPUS_DIR.glob("*.md"))), "--kb", "corpus", "--create", env=env)
        token = manage("create_api_token", "admin", "--name", "bench", env=env).strip().splitlines()[-1]
        with live_server(env, root / "server.log") as server:
            page = httpx.Client(base_url=server.url, follow_redirects=True, timeout=30)
            login = page.get("/accounts/login/")
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            page.post("/accounts/login/", data={"username": "admin", "password": "bench-pw", "csrfmiddlewaretoken": csrf})
            api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

            def ask_page(query: str) -> float:
                started = time.perf_counter()
                response = page.get("/search/", params={"q": query, "mode": "hybrid"})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200 and 'class="result' in response.text, response.text[:500]
                return elapsed

            def ask_api(query: str) -> float:
                started = time.perf_counter()
                response = api.post("/api/v1/search", json={"query": query, "mode": "hybrid", "limit": 10})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200 and response.json()["results"], response.text[:500]
                return elapsed

            for query in QUERIES:  # warm both paths: model, templates, connections
                ask_page(query), ask_api(query)
            pages, apis = [], []
            for n in range(args.requests):
                query = QUERIES[n % len(QUERIES)]
                first, second = (ask_page, ask_api) if n % 2 else (ask_api, ask_page)
                times = {first: first(query), second: second(query)}
                pages.append(times[ask_page])
                apis.append(times[ask_api])

    def summary(values: list[float]) -> tuple[float, float]:
        ordered = sorted(values)
        return 1000 * statistics.median(ordered), 1000 * ordered[int(0.9 * (len(ordered) - 1))]

    (page_p50, page_p90), (api_p50, api_p90) = summary(pages), summary(apis)
    print(f"{args.requests} requests each, alternating, one at a time, on {os.cpu_count()} cores")
    print(f"{'':12} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"{'API':12} {api_p50:8.1f} {api_p90:8.1f}")
    print(f"{'search page':12} {page_p50:8.1f} {page_p90:8.1f}")
    print(f"page / API: p50 {page_p50 / api_p50:.2f}, p90 {page_p90 / api_p90:.2f} (bar: 1.10)")


if __name__ == "__main__":
    main()

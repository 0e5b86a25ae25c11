"""Many clients searching a running kbsite over HTTP for a while: throughput, latency percentiles and errors.

    python tests/benchmarks/http_load.py --url http://127.0.0.1:8000 --token kbs_… --kb KB_ID \
        [--clients 100] [--seconds 30]

Each client loops POST /api/v1/search with varied queries until the time is up (a request under
way then is let finish). Prints the requests made, requests per second, p50/p95/p99/max latency,
the status codes and the first errors; exits 1 if any request failed (not 200, or no answer).
Point it only at a server of your own: it sends as fast as the server answers.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

try:  # uvloop when installed (it is, with kbsite): the clients spend less of the machine on themselves.
    from uvloop import run as run_loop
except ImportError:
    run_loop = asyncio.run

TOPICS = [
    "honeybee waggle dances",
    "sourdough starter feeding",
    "lava flows and magma chambers",
    "TCP congestion control and packet loss",
    "chlorophyll and the light reactions",
    "bebop solos and chord changes",
    "adjusting bicycle brakes and chains",
    "spring and neap tides",
    "oven temperature for bread crust",
    "tectonic plates at subduction zones",
    "how foragers find flowers",
    "retransmission after a timeout",
]
PHRASINGS = [
    "{}",
    "how does {} work",
    "explain {} to a beginner",
    "what goes wrong with {}",
    "the history of {}",
    "why does {} matter",
]
ERRORS_SHOWN = 5


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def fail(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_SHOWN:
            self.errors.append(message)


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def http_client(url: str, **options) -> httpx.AsyncClient:
    """A client of its own for one simulated user, sharing the process's TLS context.

    httpx loads the certificate bundle into a new context for each client otherwise: 34 ms of CPU each,
    so 100 clients made as a timed load began spent its first 3 s on themselves, and those seconds
    showed up as the server's slowest answers (p99 2.5-4.8 s against a steady-state maximum near 0.7 s).
    """
    return httpx.AsyncClient(base_url=url, verify=_tls(), **options)


def query_for(client: int, turn: int) -> str:
    """A different question on each turn of each client, cycling through topics and phrasings."""
    topic = TOPICS[(client + turn) % len(TOPICS)]
    phrasing = PHRASINGS[(client * 7 + turn) % len(PHRASINGS)]
    return f"{phrasing.format(topic)} ({client}.{turn})"


async def search(http: httpx.AsyncClient, kb: str, query: str, tally: Tally, mode: str | None = None) -> None:
    started = time.perf_counter()
    body = {"query": query, "kb_ids": [kb], "limit": 10} | ({"mode": mode} if mode else {})
    try:
        response = await http.post("/api/v1/search", json=body)
    except httpx.HTTPError as exc:
        tally.statuses[type(exc).__name__] += 1
        tally.fail(f"{type(exc).__name__}: {exc} (query {query!r})")
        return
    tally.latencies.append(time.perf_counter() - started)
    tally.statuses[str(response.status_code)] += 1
    if response.status_code != 200:
        tally.fail(f"HTTP {response.status_code}: {response.text[:300]} (query {query!r})")


async def client_loop(
    http: httpx.AsyncClient, kb: str, client: int, deadline: float, tally: Tally, mode: str | None = None
) -> None:
    turn = 0
    while time.perf_counter() < deadline:
        await search(http, kb, query_for(client, turn), tally, mode)
        turn += 1


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report(tally: Tally, elapsed: float, clients: int) -> None:
    total = sum(tally.statuses.values())
    print(f"clients: {clients}")
    print(f"duration: {elapsed:.1f} s")
    print(f"requests: {total}")
    print(f"requests per second: {total / elapsed:.1f}")
    if tally.latencies:
        ordered = sorted(tally.latencies)
        figures = " ".join(
            f"{name}={percentile(ordered, fraction) * 1000:.1f}"
            for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
        )
        print(f"latency ms: {figures} max={ordered[-1] * 1000:.1f}")
    print("statuses: " + ", ".join(f"{status}={count}" for status, count in sorted(tally.statuses.items())))
    print(f"errors: {tally.error_count}")
    for error in tally.errors:
        print(f"  {error}")


async def run(
    url: str, token: str, kb: str, clients: int, seconds: float, timeout: float, warmup: int,
    mode: str | None = None,
) -> Tally:
    """The load of `clients` for `seconds`, reported; `mode` (semantic, hybrid, keyword) or the API's default."""
    headers = {"Authorization": f"Bearer {token}"}

    def connect() -> httpx.AsyncClient:
        return http_client(url, headers=headers, timeout=timeout)

    # A few searches first, uncounted, as a server that has been up a while has seen.
    warm = Tally()
    async with connect() as http:
        for turn in range(warmup):
            await search(http, kb, query_for(-1, turn), warm, mode)
    if warm.error_count:
        print("warm-up failed:", *warm.errors, sep="\n  ")
        return warm

    async def one_client(client: int) -> None:
        # A connection pool of its own, as separate applications have: one pool shared by a
        # hundred tasks made httpx itself the bottleneck (a third of the throughput measured).
        async with connect() as http:
            await client_loop(http, kb, client, deadline, tally, mode)

    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(one_client(client) for client in range(clients)))
    report(tally, time.perf_counter() - started, clients)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="an API token (manage.py create_api_token USER)")
    parser.add_argument("--kb", required=True, help="id of a knowledge base the token's user may read")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (default: %(default)s)")
    parser.add_argument(
        "--seconds", type=float, default=30, help="how long they search (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds one request may take (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="uncounted searches first (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    tally = run_loop(run(args.url, args.token, args.kb, args.clients, args.seconds, args.timeout, args.warmup))
    return 1 if tally.error_count or not tally.statuses else 0


if __name__ == "__main__":
    sys.exit(main())

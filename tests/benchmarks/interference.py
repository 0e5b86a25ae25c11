"""Search on a live server alone and while the same server indexes, signs people in and reads uploads.

    python -m tests.benchmarks.interference [--seconds 15] [--clients 8]

A site of its own (uvicorn, one process, embedded Qdrant, the test database's engine) gets a knowledge
base of at least 2,000 chunks of real prose that every Python install carries: the language
reference's topics (`pydoc_data`) and the standard library's docstrings. `--clients` clients then
search it without pause, for `--seconds` a row, alone and during:

  (a) the indexing of a 1 MB text upload,
  (b) two sign-ins a second on the members' login page,
  (c) a 20 MB PDF upload being stored and read,
  (d) the reindexing of every document of another knowledge base (POST …/reindex: `reindex --recreate`
      needs the server stopped on the embedded store, which only one process may open).

Each row is compared with the searches alone just before it (its own "alone" window, printed beside
it) and with the first alone row: on a shared machine the same server's rate alone drifted by a
fifth from minute to minute, so one reference taken minutes earlier measured the machine as much as
the server. The verdict is against the window just before.

Then 100 connections on search against 100 on the health endpoint, in alternating windows (health,
search, search, health: the same mean time for both) for the same reason, and the indexing rate of (a)'s
upload with nobody searching and while the searches run, next to the embedder alone on the same
chunks in this process. Each figure is printed with its same-run reference and the issue's target.
For the 100-connection rows it also prints the CPU time a request cost the server (its model's threads,
the engine's and the rest: event loop, database thread) and this process, which generates the load on
the same machine (Linux: read from /proc).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import os
import re
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIN_CHUNKS = 2000
KB_TEXT_CHARS = 1_100_000  # about 2,150 chunks at the default chunk settings (16-token minimum)
OTHER_KB_TEXT_CHARS = 100_000
UPLOAD_CHARS = 1_000_000
PDF_BYTES = 19 * 1024 * 1024  # under the 20 MB upload limit, with room for the form around it
PDF_PAGES = 1_900  # below KBSITE_MAX_PDF_PAGES
SIGN_INS_PER_SECOND = 2
HTTP_CONNECTIONS = 100
HTTP_ROUNDS = 2  # windows of health and of search at 100 connections, in that order then the other, half of --seconds each
PASSWORD = "interference-pw"


def stdlib_prose() -> Iterator[tuple[str, str]]:
    """(title, text) of real English prose: pydoc's language topics, then stdlib docstrings module by module."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"Python topic {name}", topics[name]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] in {"site-packages", "dist-packages", "test", "idlelib", "lib2to3"} or "tests" in parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
        text = "\n\n".join(inspect.cleandoc(doc) for doc in docs if doc and len(doc) > 80)
        if len(text) > 2_000:
            yield f"Python module {'/'.join(parts)}", text


def take_chars(documents: Iterator[tuple[str, str]], chars: int) -> list[tuple[str, str]]:
    taken, total = [], 0
    for title, text in documents:
        taken.append((title, text))
        total += len(text)
        if total >= chars:
            return taken
    raise SystemExit(f"This Python's standard library holds less prose than the benchmark needs ({chars} chars).")


def write_files(folder: Path, documents: list[tuple[str, str]]) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for n, (title, text) in enumerate(documents):
        path = folder / f"{n:04d}-{re.sub(r'[^A-Za-z0-9]+', '-', title)[:60]}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    return paths


def pdf_of_about(size: int, prose: str) -> bytes:
    """A text PDF of PDF_PAGES pages and at most `size` bytes, its pages cut from `prose`.

    A page's objects add to its text, so a first build shows how much; the second, scaled by it, fits.
    """
    pdf = _pdf_of_text(size, prose)
    if len(pdf) > size:
        pdf = _pdf_of_text(int(size * size / len(pdf) * 0.99), prose)
    return pdf


def _pdf_of_text(text_bytes: int, prose: str) -> bytes:
    from tests.files import make_pdf

    per_page = text_bytes // PDF_PAGES
    lines = [prose[i : i + 90] for i in range(0, len(prose), 90)]
    pages, cursor = [], 0
    for _ in range(PDF_PAGES):
        page, length = [], 0
        while length < per_page:
            line = lines[cursor % len(lines)].encode("latin-1", "replace").decode("latin-1")
            page.append(line)
            length += len(line) + 8
            cursor += 1
        pages.append("\n".join(page))
    return make_pdf(pages)


@dataclass
class Row:
    name: str
    searches: int
    seconds: float
    p50: float
    p99: float
    errors: int
    note: str = ""
    #: The searches alone just before this row, on the same server.
    reference: Row | None = None
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.searches / self.seconds


class Site:
    """The API of the live server, as the token's user, plus the members' login page."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url
        self.api = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    async def kb_id(self, slug: str) -> str:
        response = await self.api.get(f"/api/v1/kbs/{slug}")  # paths take a slug as well as an id
        response.raise_for_status()
        return response.json()["id"]

    async def chunks(self, kb: str) -> int:
        response = await self.api.get(f"/api/v1/kbs/{kb}/documents", params={"limit": 500})
        response.raise_for_status()
        return sum(document["chunk_count"] for document in response.json()["items"])

    async def documents(self, kb: str) -> list[dict]:
        response = await self.api.get(f"/api/v1/kbs/{kb}/documents", params={"limit": 500})
        response.raise_for_status()
        return response.json()["items"]

    async def upload(self, kb: str, name: str, data: bytes, content_type: str) -> dict:
        response = await self.api.post(f"/api/v1/kbs/{kb}/documents", files={"file": (name, data, content_type)})
        assert response.status_code == 202, response.text[:500]
        return response.json()

    async def document(self, kb: str, document: str) -> dict:
        response = await self.api.get(f"/api/v1/kbs/{kb}/documents/{document}")
        response.raise_for_status()
        return response.json()

    async def delete(self, kb: str, document: str) -> None:
        response = await self.api.delete(f"/api/v1/kbs/{kb}/documents/{document}")
        assert response.status_code in (204, 404), response.text[:500]

    async def wait_for(self, kb: str, document: str, condition, what: str, timeout: float = 600) -> dict:
        """Poll the document until `condition(document)` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = await self.document(kb, document)
            if condition(state):
                return state
            if state["status"] == "failed":
                raise SystemExit(f"The document failed while waiting for {what}: {state['error']}")
            await asyncio.sleep(0.25)
        raise SystemExit(f"Timed out waiting for {what}.")

    async def idle(self, kbs: list[str], timeout: float = 600) -> None:
        """Wait until no document of these KBs is queued or being indexed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {d["status"] for kb in kbs for d in await self.documents(kb)}
            if not states & {"pending", "processing", "indexing", "queued"}:
                return
            await asyncio.sleep(0.5)
        raise SystemExit("The site's worker did not settle.")


async def searches(url: str, token: str, kb: str, clients: int, seconds: float, name: str, note: str = "") -> Row:
    """`clients` clients searching without pause for `seconds`."""
    from tests.benchmarks.http_load import Tally, client_loop, http_client, percentile

    tally = Tally()
    headers = {"Authorization": f"Bearer {token}"}

    async def one(client: int) -> None:
        async with http_client(url, headers=headers, timeout=120) as http:
            await client_loop(http, kb, client, deadline, tally)

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(one(client) for client in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(tally.latencies) or [float("nan")]
    for error in tally.errors:
        print(f"  [{name}] {error}", flush=True)
    return Row(name, len(tally.latencies), elapsed, percentile(ordered, 0.5), percentile(ordered, 0.99),
               tally.error_count, note, latencies=tally.latencies)


async def sign_in(url: str) -> float:
    import httpx

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as page:
        login = await page.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        response = await page.post(
            "/accounts/login/", data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": csrf}
        )
    assert response.status_code == 302, f"sign-in answered {response.status_code}: {response.text[:300]}"
    return time.perf_counter() - started


async def signing_in(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    """Start SIGN_INS_PER_SECOND sign-ins a second, each on a new session, until `stop`."""
    running: set[asyncio.Task] = set()

    async def one() -> None:
        latencies.append(await sign_in(url))

    while not stop.is_set():
        task = asyncio.ensure_future(one())
        running.add(task)
        task.add_done_callback(running.discard)
        try:
            await asyncio.wait_for(stop.wait(), timeout=1 / SIGN_INS_PER_SECOND)
        except TimeoutError:
            pass
    await asyncio.gather(*running)


def embedder_alone(texts: list[str], seconds: float) -> float:
    """Chunks a second that the site's embedder makes in this process, in the ingestion's batches."""
    from knowledge.ingestion.pipeline import IngestionSettings
    from search.embedding.service import EmbeddingConfig

    embedder = EmbeddingConfig.from_settings().build_embedder()
    batch = IngestionSettings.from_settings().batch_size
    embedder.embed(texts[:batch])  # loads the model
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % max(1, len(texts) - batch)
        embedder.embed(texts[start : start + batch])
        done += batch
    return done / (time.perf_counter() - started)


async def indexing_rate(site: Site, kb: str, document: str, seconds: float, poll: float = 0.1) -> float:
    """Chunks a second the worker indexes of `document`, from a batch stored to the last one stored within `seconds`.

    `chunks_done` moves a batch (64 chunks, two seconds or more) at a time: a window opened and closed at
    any moment would be off by up to a batch, some 13 % of 15 s, so it opens and closes on the moves.
    """

    async def done() -> int:
        return (await site.document(kb, document))["progress"]["chunks_done"]

    before = await done()
    while (first := await done()) == before:
        await asyncio.sleep(poll)
    started = last_at = time.perf_counter()
    last = first
    while time.perf_counter() < started + seconds:
        await asyncio.sleep(poll)
        count = await done()
        if count != last:
            last, last_at = count, time.perf_counter()
    if last == first:
        raise SystemExit(f"no batch of the upload was stored in {seconds:g} s")
    return (last - first) / (last_at - started)


MODEL_THREADS = "kb-query-"  # the queries' model threads, as the OS names them (search.priority.name_this_thread)
ENGINE_THREADS = "edge-"


def cpu_seconds(pid: int | None) -> dict[str, float]:
    """CPU seconds used so far: the server's in all (its ended threads too), its model's and engine's threads, this process."""
    used = {"client": time.process_time()}
    if pid is None or not Path(f"/proc/{pid}/stat").exists():
        return used
    tick = os.sysconf("SC_CLK_TCK")

    def name_and_seconds(stat: Path) -> tuple[str, float]:
        text = stat.read_text()
        fields = text[text.rindex(")") + 2 :].split()  # from the state on: utime and stime are the 12th and 13th
        return text[text.index("(") + 1 : text.rindex(")")], (int(fields[11]) + int(fields[12])) / tick

    used["server"] = name_and_seconds(Path(f"/proc/{pid}/stat"))[1]
    used["model"] = used["engine"] = 0.0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            name, seconds = name_and_seconds(stat)
        except OSError:  # the thread ended meanwhile
            continue
        part = "model" if name.startswith(MODEL_THREADS) else "engine" if name.startswith(ENGINE_THREADS) else None
        if part:
            used[part] += seconds
    return used


def cpu_per_request(seconds: Counter[str], requests: int) -> str:
    """What `requests` cost, from the CPU seconds each part spent on them (`cpu_seconds` differences), in ms a request."""
    spent = {part: used * 1000 / max(1, requests) for part, used in seconds.items()}
    if "server" not in spent:
        return f"this load generator {spent['client']:.2f} ms (the server's CPU is read from Linux's /proc only)"
    rest = spent["server"] - spent["model"] - spent["engine"]
    # With one search thread, Edge searches on the thread that calls it: the engine's time is in the rest.
    engine = f"{spent['engine']:.2f}" if spent["engine"] else "on the calling thread, in the rest"
    return (f"server {spent['server']:.2f} ms (model {spent['model']:.2f}, engine {engine}, "
            f"the rest {rest:.2f}), this load generator {spent['client']:.2f} ms")


async def health_row(url: str, seconds: float) -> Row:
    from tests.benchmarks.http_load import percentile
    from tests.benchmarks.suite.http_site import health_load

    tally, elapsed = await health_load(url, HTTP_CONNECTIONS, seconds)
    ordered = sorted(tally.latencies) or [float("nan")]
    return Row("health", len(tally.latencies), elapsed, percentile(ordered, 0.5), percentile(ordered, 0.99),
               tally.error_count, latencies=tally.latencies)


def combined(name: str, windows: list[Row]) -> Row:
    """One row of several windows: their requests over their seconds, percentiles of all their latencies."""
    from tests.benchmarks.http_load import percentile

    ordered = sorted(latency for window in windows for latency in window.latencies) or [float("nan")]
    return Row(name, sum(w.searches for w in windows), sum(w.seconds for w in windows), percentile(ordered, 0.5),
               percentile(ordered, 0.99), sum(w.errors for w in windows), latencies=ordered)


async def http_rows(url: str, server_pid: int | None, token: str, kb: str, seconds: float) -> tuple[Row, str, Row, str]:
    """Health and search at HTTP_CONNECTIONS, HTTP_ROUNDS windows each (health then search, then search then
    health, ...), with the CPU a request cost in each: a machine whose speed drifts steadily from minute to
    minute then weighs on both alike."""
    health_windows, search_windows = [], []
    health_cpu, search_cpu = Counter(), Counter()
    for round_ in range(HTTP_ROUNDS):
        for endpoint in ("health", "search") if round_ % 2 == 0 else ("search", "health"):
            before = cpu_seconds(server_pid)
            if endpoint == "health":
                health_windows.append(await health_row(url, seconds / HTTP_ROUNDS))
            else:
                search_windows.append(await searches(url, token, kb, HTTP_CONNECTIONS, seconds / HTTP_ROUNDS, "search"))
            after = cpu_seconds(server_pid)
            (health_cpu if endpoint == "health" else search_cpu).update({part: after[part] - before[part] for part in after})
    health, search = combined("health", health_windows), combined("search", search_windows)
    return health, cpu_per_request(health_cpu, health.searches), search, cpu_per_request(search_cpu, search.searches)


async def measure(
    url: str, server_pid: int | None, token: str, args, upload_text: str, pdf: bytes, chunk_texts: list[str]
) -> None:
    site = Site(url, token)
    kb = await site.kb_id("prose")
    other = await site.kb_id("other")
    uploads = await site.kb_id("uploads")
    chunks = await site.chunks(kb)
    print(f"KB: {chunks} chunks; other KB: {await site.chunks(other)} chunks", flush=True)
    assert chunks >= MIN_CHUNKS, f"the KB holds {chunks} chunks, fewer than {MIN_CHUNKS}"

    def search(name: str, note: str = "") -> asyncio.Future:
        return asyncio.ensure_future(searches(url, token, kb, args.clients, args.seconds, name, note))

    await searches(url, token, kb, args.clients, 3, "warm-up")
    alone = await search("alone")
    print(f"[alone] {alone.rate:.1f}/s p50 {alone.p50 * 1000:.0f} ms p99 {alone.p99 * 1000:.0f} ms", flush=True)
    rows = [alone]

    # (a) indexing a 1 MB text upload: first with nobody searching, then with the searches. The embedder
    # alone is timed just before, as the server idles: on a shared machine the same measurement drifted
    # from 19.6 to 24.5 chunks/s between runs, so a reference taken minutes apart from the rate it divides
    # measured the machine more than the server.
    # The searches' own reference is taken first, before the upload (which starts indexing at once).
    reference = await search("alone before (a)")
    alone_rate = await asyncio.to_thread(embedder_alone, chunk_texts, args.seconds)
    document = await site.upload(uploads, "upload.txt", upload_text.encode(), "text/plain")
    await site.wait_for(uploads, document["id"], lambda d: d["progress"]["chunks_done"] > 0, "indexing to start")
    idle_rate = await indexing_rate(site, uploads, document["id"], args.seconds)
    row = search("(a) indexing 1 MB text")
    busy_rate = await indexing_rate(site, uploads, document["id"], args.seconds)
    row = await row
    row.reference = reference
    rows.append(row)
    await site.delete(uploads, document["id"])
    await site.idle([uploads])

    # (b) two sign-ins a second.
    reference = await search("alone before (b)")
    stop, sign_ins = asyncio.Event(), []
    signing = asyncio.ensure_future(signing_in(url, stop, sign_ins))
    row = await search("(b) 2 sign-ins/s")
    stop.set()
    await signing
    ordered = sorted(sign_ins)
    row.note = f"{len(sign_ins)} sign-ins, median {ordered[len(ordered) // 2] * 1000:.0f} ms"
    row.reference = reference
    rows.append(row)

    # (c) a 20 MB PDF upload sent, stored and read while the searches run.
    reference = await search("alone before (c)")
    row = search("(c) 20 MB PDF upload")
    pdf_document = await site.upload(uploads, "large.pdf", pdf, "application/pdf")
    row = await row
    pdf_state = await site.document(uploads, pdf_document["id"])
    row.note = f"PDF {len(pdf) / 2**20:.0f} MB, status then: {pdf_state['status']}"
    row.reference = reference
    rows.append(row)
    await site.delete(uploads, pdf_document["id"])
    await site.idle([uploads])

    # (d) every document of the other KB chunked and embedded again.
    reference = await search("alone before (d)")
    for other_document in await site.documents(other):
        response = await site.api.post(f"/api/v1/kbs/{other}/documents/{other_document['id']}/reindex")
        assert response.status_code == 202, response.text[:300]
    row = await search("(d) reindex other KB")
    row.reference = reference
    rows.append(row)
    await site.idle([other])

    # 100 connections: health and search, alternating, on the same server, with the CPU each request cost.
    health, health_cpu, http_search, search_cpu = await http_rows(url, server_pid, token, kb, args.seconds)
    await site.api.aclose()

    print()
    print(f"{'what else the server did':<26} {'searches/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99 x':>6} {'rate x':>6} {'errors':>6}  target p99 <= 2x, rate >= 0.6x against the alone window just "
          f"before; [alone just before: searches/s, p99 ms; and the ratios against the first alone row]")
    for row in rows:
        reference = row.reference or alone
        p99_ratio, rate_ratio = row.p99 / reference.p99, row.rate / reference.rate
        verdict = "" if row is alone else ("ok" if p99_ratio <= 2 and rate_ratio >= 0.6 else "MISSED")
        before = "" if row is alone else (
            f"[{reference.rate:.1f}/s, {reference.p99 * 1000:.0f} ms; against the first: "
            f"p99 {row.p99 / alone.p99:.2f} x, rate {row.rate / alone.rate:.2f} x] "
        )
        print(f"{row.name:<26} {row.rate:>10.1f} {row.p50 * 1000:>8.0f} {row.p99 * 1000:>8.0f} "
              f"{p99_ratio:>6.2f} {rate_ratio:>6.2f} {row.errors:>6}  {verdict} {before}{row.note}")
    ratio = http_search.rate / health.rate
    print(f"\nHTTP, {HTTP_CONNECTIONS} connections, {HTTP_ROUNDS} alternating windows each: search {http_search.rate:.0f}/s (p99 {http_search.p99 * 1000:.0f} ms)"
          f" vs health {health.rate:.0f}/s (p99 {health.p99 * 1000:.0f} ms): {ratio:.3f} x"
          f"  target >= 0.35 x {'ok' if ratio >= 0.35 else 'MISSED'}")
    print(f"  CPU a request, health: {health_cpu}")
    print(f"  CPU a request, search: {search_cpu}")
    print(f"indexing, nobody searching: {idle_rate:.1f} chunks/s vs embedder alone {alone_rate:.1f} chunks/s: "
          f"{idle_rate / alone_rate:.2f} x  target >= 0.9 x {'ok' if idle_rate / alone_rate >= 0.9 else 'MISSED'}")
    print(f"indexing, {args.clients} clients searching: {busy_rate:.1f} chunks/s: {busy_rate / alone_rate:.2f} x the "
          f"embedder alone  target >= 0.25 x {'ok' if busy_rate / alone_rate >= 0.25 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each row (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="clients searching without pause (default: %(default)s)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from tests.benchmarks.http_load import run_loop
    from tests.support.live_server import live_server, manage, site_environment

    prose = stdlib_prose()
    kb_documents = take_chars(prose, KB_TEXT_CHARS)
    other_documents = take_chars(prose, OTHER_KB_TEXT_CHARS)
    # The upload goes to a KB of its own, so it may repeat the prose of the others.
    upload_text = "\n\n".join(f"{title}\n\n{text}" for title, text in take_chars(stdlib_prose(), UPLOAD_CHARS))
    upload_text = upload_text[:UPLOAD_CHARS]
    pdf = pdf_of_about(PDF_BYTES, upload_text)
    root = Path(tempfile.mkdtemp(prefix="kbsite-interference-"))
    started = time.perf_counter()
    with site_environment(root / "var", KBSITE_ADMIN_PASSWORD=PASSWORD, KBSITE_UPLOAD_RATE_LIMIT="off") as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", env=env)
        manage("ingest", *write_files(root / "prose", kb_documents), "--kb", "prose", "--create", env=env)
        manage("ingest", *write_files(root / "other", other_documents), "--kb", "other", "--create", env=env)
        manage("ingest", *write_files(root / "seed", [("seed", "A knowledge base for uploads.")]),
               "--kb", "uploads", "--create", env=env)
        token = manage("create_api_token", "admin", "--name", "bench", env=env).strip().splitlines()[-1]
        print(f"site built in {time.perf_counter() - started:.0f} s", flush=True)
        from django.conf import settings

        from search.chunking import TokenChunker
        from search.embedding.service import EmbeddingConfig

        embedder = EmbeddingConfig.from_settings().build_embedder()
        chunker = TokenChunker(token_spans=embedder.token_spans, size=settings.CHUNKING["SIZE"],
                               overlap=settings.CHUNKING["OVERLAP"], max_size=embedder.max_chunk_tokens)
        chunk_texts = [chunk.content for chunk in chunker.split(upload_text[:200_000])]
        with live_server(env, root / "server.log") as server:
            run_loop(measure(server.url, server.pid, token, args, upload_text, pdf, chunk_texts))


if __name__ == "__main__":
    main()

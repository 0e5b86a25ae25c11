"""The built-in model in process against the same model behind an OpenAI-compatible endpoint, in one run.

    python -m tests.benchmarks.embedders [--documents 30] [--queries 200] [--rounds 3] [--batch 32]

Starts the test embeddings server (tests/support/embeddings_server.py, the built-in model over
`POST /v1/embeddings`) on a free port, makes two knowledge bases of the same documents on a fresh
embedded site in a temporary folder, one per embedder, and measures, alternating the two:
ingestion in chunks per second (through the ingestion pipeline, documents' batches of --batch) and
semantic search latency (p50 and p99, one search at a time, the query cache off). The difference is
the protocol's overhead: JSON, HTTP and a second process. Text: SciFact abstracts when
../shared/bench is there (read for measuring only), else the test corpus. Prints numbers; no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCIFACT = next(
    (
        folder / "shared" / "bench" / "scifact2101-train"
        for folder in (ROOT.parent, ROOT.parent.parent)
        if (folder / "shared" / "bench" / "scifact2101-train" / "corpus.jsonl").is_file()
    ),
    ROOT.parent / "shared" / "bench" / "scifact2101-train",
)
ENDPOINT = "minilm-endpoint"


def load_texts(folder: Path, documents: int, per_document: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(title, text) of each document, and query texts."""
    corpus = folder / "corpus.jsonl"
    if corpus.is_file():
        abstracts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
        queries = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open(encoding="utf-8")]
        texts = [
            (f"SciFact abstracts {i}", "\n\n".join(abstracts[i * per_document : (i + 1) * per_document]))
            for i in range(min(documents, len(abstracts) // per_document))
        ]
        return texts, queries
    files = sorted((ROOT / "tests" / "data" / "corpus").glob("*.md"))
    texts = [(path.stem, path.read_text(encoding="utf-8")) for path in files][:documents]
    sentences = [s.strip() for _, text in texts for s in text.split(".") if len(s.split()) > 4]
    return texts, sentences


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=30)
    parser.add_argument("--per-document", type=int, default=5, help="abstracts per document")
    parser.add_argument("--queries", type=int, default=200, help="searches per embedder per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternate the embedders this often; medians win"
    )
    parser.add_argument("--batch", type=int, default=32, help="texts per embedding call, the same for both")
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="a BEIR-style folder")
    args = parser.parse_args()

    from tests.support.embeddings_server import EmbeddingsServer

    threads = str(min(os.cpu_count() or 1, 4))
    with EmbeddingsServer(threads=int(threads)) as server:
        os.environ.update(
            KBSITE_VAR_DIR=tempfile.mkdtemp(prefix="kbsite-bench-embedders-"),
            DJANGO_SETTINGS_MODULE="kbsite.settings",
            EMBEDDING_THREADS=threads,
            EMBEDDING_DOCUMENT_BATCH_SIZE=str(args.batch),
            EMBEDDING_QUERY_CACHE_SIZE="0",
            # The endpoint's process runs at normal priority: so does the built-in model's, to compare like with like.
            EMBEDDING_DOCUMENT_NICENESS="0",
            KBSITE_BENCH_EMBEDDER_KEY=server.api_key,
            EMBEDDERS_JSON=json.dumps(
                {
                    ENDPOINT: {
                        "BASE_URL": server.url,
                        "MODEL": "all-MiniLM-L6-v2",
                        "BATCH_SIZE": args.batch,
                        "API_KEY_ENV": "KBSITE_BENCH_EMBEDDER_KEY",
                    }
                }
            ),
        )
        for name in ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH"):
            os.environ.pop(name, None)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        asyncio.run(measure(args, server))


async def measure(args: argparse.Namespace, server) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from knowledge.ingestion.pipeline import IngestionService, IngestionSettings
    from knowledge.models import Document, DocumentStatus
    from knowledge.services.documents import DocumentService
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from knowledge.services.permissions import PermissionService
    from search.embedding.registry import embedders
    from search.services.search import SearchMode, SearchService

    class Unrecorded:
        async def record_search(self, **search) -> None:
            return None

    texts, queries = load_texts(args.corpus, args.documents, args.per_document)
    user = await sync_to_async(get_user_model().objects.create_superuser)(
        username="bench", email=None, password=None
    )
    built_in_name = embedders.default.model_id
    kbs = {}
    for name in (built_in_name, ENDPOINT):
        kb = await sync_to_async(KnowledgeBaseService().create_knowledge_base)(
            name=f"Bench {name}", owner=user, embedding_model=name
        )
        for title, text in texts:
            await sync_to_async(DocumentService().add_text_document)(kb=kb, title=title, text=text)
        kbs[name] = kb
    for name in kbs:  # models loaded and connections open before anything is timed
        await embedders.service(name).embed_documents(["warm up"])
        await embedders.service(name).embed_query("warm up")
    ingestion = IngestionService(config=IngestionSettings.from_settings(batch_size=args.batch * 2))
    search = SearchService(PermissionService(), Unrecorded())

    rates: dict[str, list[float]] = {name: [] for name in kbs}
    latencies: dict[str, list[float]] = {name: [] for name in kbs}
    p99s: dict[str, list[float]] = {name: [] for name in kbs}
    chunks = {}
    for round_number in range(args.rounds):
        for name, kb in kbs.items():
            if round_number:
                await sync_to_async(DocumentService().queue_for_reindex)(
                    documents=Document.objects.filter(knowledge_base=kb)
                )
            ids = [pk async for pk in Document.objects.filter(knowledge_base=kb).values_list("pk", flat=True)]
            started = time.perf_counter()
            done = [await ingestion.ingest_now(document_id=pk, worker_id="bench") for pk in ids]
            seconds = time.perf_counter() - started
            failed = [d for d in done if d.status != DocumentStatus.READY]
            if failed:
                raise SystemExit(f"{name}: {len(failed)} documents failed: {failed[0].error}")
            chunks[name] = sum(d.chunk_count for d in done)
            rates[name].append(chunks[name] / seconds)
        for name, kb in kbs.items():
            # Other queries each round while there are enough; the query cache is off, so every search embeds.
            asked = (
                queries[round_number * args.queries : (round_number + 1) * args.queries]
                or queries[: args.queries]
            )
            round_latencies = []
            for query in asked:
                started = time.perf_counter()
                await search.asearch(
                    query=query[:500], kb_ids=[kb.id], user_id=user.id, mode=SearchMode.SEMANTIC
                )
                round_latencies.append((time.perf_counter() - started) * 1000)
            latencies[name] += round_latencies
            p99s[name].append(percentile(round_latencies, 0.99))

    print(
        f"corpus: {len(texts)} documents, {chunks[built_in_name]} chunks per knowledge base; batch {args.batch}; "
        f"{args.rounds} rounds, {len(latencies[built_in_name]) // args.rounds} searches per round"
    )
    for name in kbs:
        label = "built-in, in process" if name == built_in_name else f"endpoint {server.url}"
        print(
            f"{name:<24} ({label}): ingestion median {statistics.median(rates[name]):.1f} chunks/s "
            f"(rounds {', '.join(f'{r:.1f}' for r in rates[name])}); search p50 "
            f"{percentile(latencies[name], 0.5):.1f} ms, p99 {percentile(latencies[name], 0.99):.1f} ms "
            f"(per round p99 {', '.join(f'{p:.1f}' for p in p99s[name])})"
        )
    built_in, endpoint = statistics.median(rates[built_in_name]), statistics.median(rates[ENDPOINT])
    print(
        f"protocol overhead, ingestion: {100 * (built_in / endpoint - 1):+.1f}% time per chunk (target < 15%)"
    )
    p99_in, p99_out = percentile(latencies[built_in_name], 0.99), percentile(latencies[ENDPOINT], 0.99)
    p50_in, p50_out = percentile(latencies[built_in_name], 0.5), percentile(latencies[ENDPOINT], 0.5)
    print(
        f"protocol overhead, search: p50 {p50_out - p50_in:+.1f} ms ({100 * (p50_out / p50_in - 1):+.1f}%), "
        f"p99 {p99_out - p99_in:+.1f} ms ({100 * (p99_out / p99_in - 1):+.1f}%)"
    )
    print(f"endpoint served {server.stats()}")


if __name__ == "__main__":
    main()

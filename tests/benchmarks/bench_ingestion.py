"""Ingestion throughput end to end through the worker, next to the embedder's own speed on the same chunks.

    python tests/benchmarks/bench_ingestion.py [--documents 40] [--corpus PATH] [--embedder NAME]

Runs on a fresh embedded site in a temporary folder (SQLite, Qdrant on disk), or on whatever
DATABASE_URL and QDRANT_URL name. The text is SciFact abstracts from ../shared when present
(read for measuring only, never stored in the project), else the test corpus.
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
SCIFACT = ROOT.parent / "shared" / "bench" / "scifact2101-train" / "corpus.jsonl"


def load_texts(corpus: Path, documents: int, per_document: int) -> list[tuple[str, str]]:
    if corpus.is_file():
        abstracts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
        return [
            (f"SciFact abstracts {i}", "\n\n".join(abstracts[i * per_document : (i + 1) * per_document]))
            for i in range(min(documents, len(abstracts) // per_document))
        ]
    files = sorted((ROOT / "tests" / "data" / "corpus").glob("*.md"))
    return [(path.stem, path.read_text(encoding="utf-8")) for path in files][:documents]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--per-document", type=int, default=5, help="abstracts per document")
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    parser.add_argument("--rounds", type=int, default=3, help="alternate both measurements this often; medians win")
    parser.add_argument(
        "--embedder",
        metavar="NAME",
        help="the embedding model to measure: the built-in one (default) or an endpoint named in EMBEDDERS_JSON",
    )
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="kbsite-bench-")
    os.environ.setdefault("KBSITE_VAR_DIR", workdir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from knowledge.ingestion.pipeline import IngestionService
    from knowledge.ingestion.worker import IngestionWorker
    from knowledge.models import Document, DocumentStatus
    from knowledge.services.documents import DocumentService
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from search.embedding.registry import embedders

    call_command("migrate", verbosity=0)
    texts = load_texts(args.corpus, args.documents, args.per_document)
    kb = KnowledgeBaseService().create_knowledge_base(name=f"Benchmark {time.time():.0f}", owner=None, embedding_model=args.embedder)
    for title, text in texts:
        DocumentService().add_text_document(kb=kb, title=title, text=text)
    embedding_service = embedders.service(kb.embedding_model)
    # The documents' model as the worker builds it: the service's own `embedder` is the queries' one,
    # on the threads set aside for queries.
    embedder = embedding_service.config.build_embedder()
    embedder.embed(["load the model before timing"])

    chunker = IngestionService().chunker_for(kb)
    batch = embedding_service.config.document_batch_size
    worker_seconds, embedder_seconds = [], []
    for round_number in range(args.rounds):
        if round_number:
            DocumentService().queue_for_reindex(documents=Document.objects.filter(knowledge_base=kb))
        started = time.perf_counter()
        asyncio.run(IngestionWorker(poll_seconds=0.1).run(until_idle=True))
        worker_seconds.append(time.perf_counter() - started)

        documents = list(Document.objects.filter(knowledge_base=kb))
        chunk_texts = sorted((chunk.content for d in documents for chunk in chunker.split(d.text)), key=len)
        started = time.perf_counter()
        for start in range(0, len(chunk_texts), batch):
            embedder.embed(chunk_texts[start : start + batch])
        embedder_seconds.append(time.perf_counter() - started)
    chunks_total = sum(d.chunk_count for d in documents)
    failed = [d for d in documents if d.status != DocumentStatus.READY]
    through_worker, embedder_only = statistics.median(worker_seconds), statistics.median(embedder_seconds)
    tokens = sum(len(embedder.token_spans(text)) for text in chunk_texts)

    print(f"corpus: {len(texts)} documents, {chunks_total} chunks of up to {kb.chunk_size} tokens "
          f"({tokens / max(len(chunk_texts), 1):.0f} tokens on average), {len(failed)} failed")
    print(f"end to end through the worker: {len(documents)} documents, {chunks_total} chunks, median of "
          f"{args.rounds} rounds {through_worker:.1f}s = {chunks_total / through_worker:.1f} chunks/s "
          f"(rounds: {', '.join(f'{s:.1f}s' for s in worker_seconds)})")
    print(f"embedder alone on the same chunks (batches of {batch}): median {embedder_only:.1f}s "
          f"= {len(chunk_texts) / embedder_only:.1f} chunks/s (rounds: {', '.join(f'{s:.1f}s' for s in embedder_seconds)})")
    print(f"worker throughput is {100 * embedder_only / through_worker:.0f}% of the embedder's")


if __name__ == "__main__":
    main()

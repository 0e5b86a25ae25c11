"""Retrieval quality on SciFact (2,101 abstracts, 188 claims with relevance labels) through kbsite's own pipeline.

    python tests/benchmarks/eval_scifact.py [--chunk-size 200] [--chunk-overlap 40]

Each abstract becomes a document, ingested by the worker as uploads are; each claim is searched
with SearchService; chunks are folded into their documents (best chunk's score) and the first ten
documents are scored with nDCG@10 and Recall@10. The data is read from ../shared and never stored
in the project (CC BY-NC). Reference, exact cosine over whole abstracts cut at 256 tokens:
nDCG@10 0.781, Recall@10 0.880.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT.parent / "shared" / "bench" / "scifact2101-train"


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    gains = sum(1 / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]) if doc in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), 10)))
    return gains / ideal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=BENCH)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--chunk-overlap", type=int, default=40)
    args = parser.parse_args()
    if not (args.bench / "corpus.jsonl").is_file():
        sys.exit(f"SciFact is not at {args.bench}; pass --bench.")

    os.environ.setdefault("KBSITE_VAR_DIR", tempfile.mkdtemp(prefix="kbsite-scifact-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from knowledge.models import Document
    from knowledge.services.documents import DocumentService
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from knowledge.services.permissions import PermissionService
    from knowledge.worker import IngestionWorker
    from search.services.audit import SearchAuditService
    from search.services.search import SearchService

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser(f"eval{time.time_ns()}", password="x")
    kb = KnowledgeBaseService().create_knowledge_base(
        name=f"SciFact {time.time():.0f}", owner=user, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap
    )
    corpus = [json.loads(line) for line in (args.bench / "corpus.jsonl").open(encoding="utf-8")]
    documents = DocumentService()
    for row in corpus:
        documents.add_text_document(kb=kb, title=row["_id"], text=row["text"], source_name=f"{row['_id']}.txt")

    started = time.perf_counter()
    asyncio.run(IngestionWorker(poll_seconds=0.1).run(until_idle=True))
    indexing = time.perf_counter() - started
    titles = dict(Document.objects.filter(knowledge_base=kb).values_list("id", "title"))
    chunks = sum(Document.objects.filter(knowledge_base=kb).values_list("chunk_count", flat=True))

    queries = {row["_id"]: row["text"] for row in map(json.loads, (args.bench / "queries.jsonl").open())}
    relevant: dict[str, set[str]] = {}
    with (args.bench / "qrels.tsv").open() as qrels:
        for row in csv.DictReader(qrels, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])

    service = SearchService(PermissionService(), SearchAuditService())

    async def rank(query: str) -> list[str]:
        results = await service.semantic_search(query=query, kb_ids=[kb.id], user_id=user.id, limit=40)
        best: dict[str, float] = {}
        for result in results:
            doc = titles[result.document_id]
            best[doc] = max(best.get(doc, -1.0), result.score)
        return sorted(best, key=best.get, reverse=True)

    async def run_queries() -> dict[str, list[str]]:
        return {qid: await rank(queries[qid]) for qid in relevant}

    started = time.perf_counter()
    ranked = asyncio.run(run_queries())
    searching = time.perf_counter() - started
    ndcg = sum(ndcg_at_10(ranked[q], relevant[q]) for q in relevant) / len(relevant)
    recall = sum(len(set(ranked[q][:10]) & relevant[q]) / len(relevant[q]) for q in relevant) / len(relevant)
    print(f"indexed {len(corpus)} abstracts as {chunks} chunks ({args.chunk_size} tokens, overlap "
          f"{args.chunk_overlap}) in {indexing:.0f}s = {chunks / indexing:.1f} chunks/s")
    print(f"{len(relevant)} queries in {searching:.1f}s ({1000 * searching / len(relevant):.1f} ms each, one at a time)")
    print(f"nDCG@10 {ndcg:.3f}  Recall@10 {recall:.3f}   (reference, whole abstracts: 0.781 / 0.880)")


if __name__ == "__main__":
    main()

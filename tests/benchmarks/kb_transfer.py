"""Throughput of export_kb and import_kb, next to the ingestion's own write path in the same run.

    python -m tests.benchmarks.kb_transfer [--chunks 5000] [--per-document 25]

On a fresh embedded store (Qdrant Edge) in a temporary folder and a SQLite database there: a knowledge
base of N synthetic chunks (seeded unit vectors, short synthetic text, BM25 vectors encoded as
ingestion does) written through ChunkService.upsert_chunks (the reference: points/s of the ingestion's
writes, without embedding); then ExportService to an archive, the KB deleted, ImportService from the
archive. Prints chunks/s of each and the archive's size, and the embedder's own rate on 256 such
chunks: what an import with --re-embed (or the original ingestion) spends on the model alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIMENSIONS = 384
WORDS = (
    "honeybee dance sourdough starter lava flow packet loss chlorophyll bebop solo bicycle chain spring "
    "tide oven temperature tectonic plate protein binding receptor cell membrane glacier retreat river delta"
).split()


async def seed(kb, chunks: int, per_document: int, rng: np.random.Generator) -> float:
    """Ready documents and their points; returns the seconds spent writing points."""
    from asgiref.sync import sync_to_async

    from knowledge.models import Document, DocumentStatus
    from search.chunking import TextChunk
    from search.keywords import KeywordSettings, keyword_encoder
    from search.services.chunks import ChunkService

    service, encoder, writing = (
        ChunkService(),
        keyword_encoder(KeywordSettings.from_dict(kb.keyword_settings)),
        0.0,
    )
    for number in range(0, chunks, per_document):
        count = min(per_document, chunks - number)
        contents = [" ".join(rng.choice(WORDS, size=60)) for _ in range(count)]
        text = "\n\n".join(contents)
        starts = np.cumsum([0] + [len(c) + 2 for c in contents])
        document = await sync_to_async(Document.objects.create)(
            knowledge_base=kb,
            title=f"Document {number // per_document}",
            content_hash=f"{number:064d}",
            text=text,
            status=DocumentStatus.READY,
            chunk_count=count,
        )
        vectors = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = [
            TextChunk(
                index=i,
                content=c,
                char_start=int(starts[i]),
                char_end=int(starts[i]) + len(c),
                token_count=60,
            )
            for i, c in enumerate(contents)
        ]
        started = time.perf_counter()
        await service.upsert_chunks(
            kb_id=kb.id,
            document_id=document.id,
            title=document.title,
            chunks=batch,
            vectors=vectors.tolist(),
            keyword_vectors=encoder.encode_documents(contents),
        )
        writing += time.perf_counter() - started
    return writing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--per-document", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kbsite-kb-transfer-"))
    os.environ["KBSITE_VAR_DIR"] = str(workdir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    os.environ.pop("QDRANT_URL", None)
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from asgiref.sync import async_to_sync
    from django.core.management import call_command

    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from knowledge.transfer.export import ExportService
    from knowledge.transfer.import_ import ImportService
    from search.embedding import embedding_service
    from search.qdrant import qdrant_service
    from search.services.chunks import ChunkService

    call_command("migrate", verbosity=0)
    kb = KnowledgeBaseService().create_knowledge_base(name="Transfer benchmark", owner=None)
    writing = asyncio.run(seed(kb, args.chunks, args.per_document, np.random.default_rng(args.seed)))
    archive = workdir / "kb.zip"

    # What --re-embed (or ingestion) spends on the model alone, on 256 texts of the same length.
    texts = [" ".join(np.random.default_rng(n).choice(WORDS, size=60)) for n in range(256)]
    embedding_service.embedder.embed(texts[:16])
    started = time.perf_counter()
    asyncio.run(embedding_service.embed_documents(texts))
    embedding_rate = len(texts) / (time.perf_counter() - started)

    try:
        exported = async_to_sync(ExportService().export_knowledge_base)(kb=kb, path=archive)
        KnowledgeBaseService().delete_knowledge_base(kb=kb)
        imported = async_to_sync(ImportService().import_knowledge_base)(path=archive)
        count = async_to_sync(ChunkService().count_chunks)(kb_id=imported.kb.id)
        size = archive.stat().st_size
    finally:
        qdrant_service.close()
        shutil.rmtree(workdir, ignore_errors=True)

    assert exported.chunks == imported.chunks == count == args.chunks, (
        exported.chunks,
        imported.chunks,
        count,
    )
    print(f"{args.chunks} chunks in documents of {args.per_document}, {DIMENSIONS} dimensions")
    print(
        f"reference, ChunkService.upsert_chunks (ingestion's writes): {args.chunks / writing:,.0f} chunks/s"
    )
    print(
        f"export_kb: {exported.chunks / exported.seconds:,.0f} chunks/s ({exported.seconds:.2f} s), "
        f"archive {size / 2**20:.1f} MB"
    )
    print(
        f"import_kb: {imported.chunks / imported.seconds:,.0f} chunks/s ({imported.seconds:.2f} s, "
        "checksums and checks included)"
    )
    print(f"the embedder alone (what --re-embed adds per chunk): {embedding_rate:,.0f} chunks/s")


if __name__ == "__main__":
    main()

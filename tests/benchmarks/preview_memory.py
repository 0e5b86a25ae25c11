"""The server's memory during a chunk preview of a large text cut small, next to the same chunking in-process.

    python -m tests.benchmarks.preview_memory [--megabytes 4.9] [--chunk-size 16]

Issue 25 found a preview of 4.9 MB of text took the server from 0.52 to 1.05 GB, since it chunked in
the server's process. The preview now chunks in the extraction's child. In one process, with the
embedder already loaded (as a server has it): the growth of this process's peak memory (VmHWM, reset
between the two) during ChunkPreviewService.preview, and during the same chunking done here, as the
preview did before (the reference). Prints both, with their seconds and the chunk count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs sets the peak resident size back to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=4.9)
    parser.add_argument("--chunk-size", type=int, default=16)
    options = parser.parse_args()
    os.environ["KBSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="kbsite-preview-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    # Measure the whole chunking, not its refusal: under load the default 120 s could end it, 16-token
    # chunks of 4.9 MB need more than the default 1024 MB child, and make more than 20,000 chunks.
    os.environ.setdefault("KBSITE_EXTRACTION_SECONDS", "900")
    os.environ.setdefault("KBSITE_EXTRACTION_MEMORY_MB", "4096")
    os.environ.setdefault("KBSITE_MAX_CHUNKS_PER_DOCUMENT", "10000000")
    import django

    django.setup()
    from knowledge.ingestion.preview import ChunkPreviewService
    from knowledge.models import KnowledgeBase
    from search.chunking import TokenChunker
    from search.embedding import embedding_service
    from tests.factories import corpus

    block = "\n\n".join(text for _, text in corpus()).encode()
    data = block * max(1, int(options.megabytes * 1_000_000 // len(block)))
    embedder = embedding_service.embedder
    embedder.token_spans("Load the tokenizer first, as a running server has it.")
    kb = KnowledgeBase(chunk_size=options.chunk_size, chunk_overlap=0)

    reset_peak()
    before, started = peak_rss_mb(), time.monotonic()
    preview = ChunkPreviewService().preview(kb=kb, user_id=1, filename="big.txt", data=data)
    child_growth, child_seconds = peak_rss_mb() - before, time.monotonic() - started

    reset_peak()
    before, started = peak_rss_mb(), time.monotonic()
    chunker = TokenChunker(
        token_spans=embedder.token_spans, size=kb.chunk_size, overlap=0, max_size=embedder.max_chunk_tokens
    )
    chunks = chunker.split(data.decode())
    here_growth, here_seconds = peak_rss_mb() - before, time.monotonic() - started

    print(
        f"text: {len(data) / 1e6:.1f} MB, chunks of {kb.chunk_size} tokens: {preview.chunk_count} (in-process: {len(chunks)})"
    )
    print(
        f"preview in the extraction child: server peak memory +{child_growth:.0f} MB, {child_seconds:.1f} s"
    )
    print(f"reference, chunked in-process:   server peak memory +{here_growth:.0f} MB, {here_seconds:.1f} s")


if __name__ == "__main__":
    main()

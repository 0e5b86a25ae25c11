"""Folder ingestion's throughput and memory next to the embedder alone on the same chunks, and an unchanged re-sync.

    python -m tests.benchmarks.folder_ingest [--small 600] [--medium 60] [--notes 10000] [--corpus PATH]

Each folder is loaded with `manage.py ingest FOLDER --kb SLUG --create` on a fresh embedded site
in a temporary folder (SQLite, Qdrant on disk); then the same chunks go through the embedder
alone, in the same run, so the ratio travels between machines. The notes folder is then synced
twice with `manage.py sync_folder`: the second sync finds nothing changed and must embed nothing.
The text is SciFact abstracts from ../shared when present (read for measuring only, never
stored in the project), else generated prose. Peak memory is this process's resident peak
during each step (the kernel's high-water mark, reset before each).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCIFACT = ROOT.parent / "shared" / "bench" / "scifact2101-train" / "corpus.jsonl"
MEDIUM_BYTES = 50 * 1024
_WORDS = (
    "harbour ferry tide lantern orchard meadow river bridge signal market winter garden library "
    "engine copper valley north letter season station island forest quiet early distant gentle"
).split()


def load_abstracts(corpus: Path) -> list[str]:
    if corpus.is_file():
        return [json.loads(line)["text"] for line in corpus.open(encoding="utf-8") if json.loads(line)["text"]]
    rng = random.Random(21)
    return [
        " ".join(
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
            for _ in range(rng.randint(6, 12))
        )
        for _ in range(2000)
    ]


def write_folders(base: Path, abstracts: list[str], small: int, medium: int, notes: int) -> dict[str, Path]:
    folders = {name: base / name for name in ("small", "medium", "notes")}
    for folder in folders.values():
        folder.mkdir()
    for i in range(small):
        (folders["small"] / f"abstract-{i:04d}.txt").write_text(abstracts[i % len(abstracts)], encoding="utf-8")
    for i in range(medium):
        parts, size, j = [], 0, i * 40
        while size < MEDIUM_BYTES:
            parts.append(abstracts[j % len(abstracts)])
            size += len(parts[-1]) + 2
            j += 1
        (folders["medium"] / f"paper-{i:03d}.md").write_text("\n\n".join(parts)[:MEDIUM_BYTES], encoding="utf-8")
    rng = random.Random(10_000)
    for i in range(notes):
        # A hundred sub-folders, as a notes export has them; each note a sentence or two.
        sub = folders["notes"] / f"{i % 100:02d}"
        sub.mkdir(exist_ok=True)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16)))
        (sub / f"note-{i:05d}.md").write_text(f"# Note {i}\n\n{sentence.capitalize()}.\n", encoding="utf-8")
    return folders


def reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(step: Callable[[], object]) -> tuple[float, float]:
    """Seconds and peak resident MB of one step."""
    reset_peak()
    started = time.perf_counter()
    step()
    return time.perf_counter() - started, peak_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=600, help="small files, one abstract each")
    parser.add_argument("--medium", type=int, default=60, help="files of 50 KB")
    parser.add_argument("--notes", type=int, default=10_000, help="short notes in the folder synced")
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kbsite-folder-bench-"))
    os.environ.setdefault("KBSITE_VAR_DIR", str(workdir / "var"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import logging

    from django.core.management import call_command, get_commands

    # One line per file read would drown the figures.
    logging.getLogger("knowledge").setLevel(logging.WARNING)

    from knowledge.ingestion.extraction import extract_text
    from knowledge.ingestion.pipeline import IngestionService
    from knowledge.models import Document
    from knowledge.services.knowledge_bases import KnowledgeBaseService
    from search.embedding import embedding_service

    call_command("migrate", verbosity=0)
    abstracts = load_abstracts(args.corpus)
    folders = write_folders(workdir, abstracts, args.small, args.medium, args.notes)
    embedder = embedding_service.embedder
    embedder.embed(["load the model before timing"])
    embedded = {"texts": 0}
    embed = embedder.embed

    def counting_embed(texts):
        embedded["texts"] += len(texts)
        return embed(texts)

    embedder.embed = counting_embed
    batch = embedding_service.config.document_batch_size
    source = "SciFact abstracts" if args.corpus.is_file() else "generated prose"
    print(f"text: {source}; work folder {workdir}")

    for name, count in (("small", args.small), ("medium", args.medium), ("notes", args.notes)):
        if not count:
            continue
        slug = f"bench-{name}"
        kb = KnowledgeBaseService().create_knowledge_base(name=slug, slug=slug, owner=None)
        chunker = IngestionService().chunker_for(kb)
        # The same chunks ingest makes: these files are the benchmark's own, read here without a sandbox.
        kb_texts = [
            chunk.content
            for path in sorted(folders[name].rglob("*.*"))
            for chunk in chunker.split(extract_text(data=path.read_bytes(), filename=path.name).text)
        ]

        def embed_alone(kb_texts=kb_texts) -> None:
            for start in range(0, len(kb_texts), batch):
                embed(kb_texts[start : start + batch])

        # The embedder alone runs before and after the ingest, and the ratio takes their mean: on a
        # shared machine the load changes within minutes.
        alone_before, _ = timed(embed_alone)
        seconds, peak = timed(
            lambda name=name, slug=slug: call_command(
                "ingest", str(folders[name]), kb=slug, recursive=True, stdout=io.StringIO()
            )
        )
        alone_after, alone_peak = timed(embed_alone)
        alone_seconds = (alone_before + alone_after) / 2
        files = Document.objects.filter(knowledge_base=kb, status="ready").count()
        made = sum(Document.objects.filter(knowledge_base=kb).values_list("chunk_count", flat=True))
        chunks = len(kb_texts)
        print(
            f"{name}: {count} files ({files} ready), {made} chunks: ingest {seconds:.1f}s = "
            f"{files / seconds:.1f} files/s, {made / seconds:.1f} chunks/s, peak {peak:.0f} MB | embedder alone "
            f"on the same {chunks} chunks {alone_before:.1f}s before, {alone_after:.1f}s after = "
            f"{chunks / alone_seconds:.1f} chunks/s, peak {alone_peak:.0f} MB | ingest at "
            f"{alone_seconds / seconds:.2f}x the embedder's rate"
        )

    if args.notes and "sync_folder" in get_commands():
        for round_name in ("first sync (after ingest)", "second sync (unchanged)"):
            embedded["texts"] = 0
            out = io.StringIO()
            seconds, peak = timed(
                lambda out=out: call_command("sync_folder", str(folders["notes"]), kb="bench-notes", stdout=out)
            )
            print(
                f"{round_name} of {args.notes} notes: {seconds:.1f}s, {embedded['texts']} embeddings made, "
                f"peak {peak:.0f} MB; it said: {out.getvalue().strip().splitlines()[-1]}"
            )


if __name__ == "__main__":
    main()

"""manage.py eval_retrieval: score search quality per mode on a BEIR-style data set, indexed in a throwaway KB."""

from __future__ import annotations

import json
from pathlib import Path

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.evaluation.retrieval import (
    CUTOFF,
    DEFAULT_DEPTH,
    BeirDataset,
    EvaluationIndex,
    ModeScores,
    RetrievalEvaluationService,
    parse_modes,
)
from knowledge.management.progress import Progress
from search.errors import KbsiteError, SearchError
from search.plurals import counted
from search.qdrant import qdrant_service
from search.services.search import MAX_LIMIT, SearchMode


class Command(BaseCommand):
    help = (
        "Index a BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv or qrels.tsv) into a throwaway "
        "knowledge base through the real ingestion path, search every labelled query in each mode, and print "
        f"nDCG@{CUTOFF}, Recall@{CUTOFF}, MRR@{CUTOFF} and the mean search latency. The knowledge base and its "
        "owner are deleted afterwards unless --keep."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="The BEIR-style folder.")
        parser.add_argument(
            "--split", default="train", help="Which qrels/<split>.tsv to read (default: train)."
        )
        parser.add_argument(
            "--modes",
            default=",".join(mode.value for mode in SearchMode),
            help="Comma-separated search modes to score (default: all of them).",
        )
        parser.add_argument("--keep", action="store_true", help="Keep the knowledge base and print its slug.")
        parser.add_argument(
            "--json",
            dest="json_file",
            type=Path,
            metavar="FILE",
            help="Also write the figures and counts as JSON.",
        )
        parser.add_argument(
            "--chunk-size", type=int, metavar="N", help="Tokens per chunk (default: the site's)."
        )
        parser.add_argument(
            "--chunk-overlap", type=int, metavar="N", help="Tokens shared by consecutive chunks."
        )
        parser.add_argument(
            "--embedder",
            metavar="NAME",
            help="The embedding model to index and search with: the built-in one (default) or an endpoint named in "
            "EMBEDDERS_JSON, to measure a model on your own labelled queries before switching to it.",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_DEPTH,
            metavar="N",
            help=f"Chunks each search asks for, folded into documents (default {DEFAULT_DEPTH}; enough to fill "
            f"{CUTOFF} documents).",
        )

    def handle(
        self,
        *args,
        path: Path,
        split: str,
        modes: str,
        keep: bool,
        json_file: Path | None,
        chunk_size: int | None,
        chunk_overlap: int | None,
        limit: int,
        embedder: str | None,
        verbosity: int,
        **options,
    ) -> None:
        if not CUTOFF <= limit <= MAX_LIMIT:
            raise CommandError(f"--limit must be from {CUTOFF} to {MAX_LIMIT} chunks, not {limit}.")
        try:
            wanted = parse_modes(modes)
            dataset = BeirDataset.load(path, split=split)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        # One event loop for the whole run, so one Qdrant client serves every step.
        index, scores = async_to_sync(self._evaluate)(
            dataset=dataset,
            modes=wanted,
            depth=limit,
            keep=keep,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            embedder=embedder,
            verbosity=verbosity,
        )
        self._print_table(scores)
        if json_file is not None:
            json_file.write_text(self._as_json(dataset, split, index, scores, limit), encoding="utf-8")
            if verbosity >= 1:
                self.stdout.write(f"Wrote the figures to {json_file}.")

    async def _evaluate(
        self,
        *,
        dataset: BeirDataset,
        modes: list[SearchMode],
        depth: int,
        keep: bool,
        chunk_size: int | None,
        chunk_overlap: int | None,
        embedder: str | None,
        verbosity: int,
    ) -> tuple[EvaluationIndex, list[ModeScores]]:
        try:
            await qdrant_service.check_available()
        except SearchError as exc:
            raise CommandError(f"{exc.message}\nNothing was indexed.") from exc
        service = RetrievalEvaluationService()
        try:
            index = await service.acreate_index(
                dataset=dataset, chunk_size=chunk_size, chunk_overlap=chunk_overlap, embedding_model=embedder
            )
        except KbsiteError as exc:
            raise CommandError(exc.message) from exc
        try:
            return index, await self._index_and_search(service, index, dataset, modes, depth, verbosity)
        finally:
            if keep:
                self.stdout.write(
                    f"Kept the knowledge base {index.kb.slug!r} and its owner {index.owner.get_username()!r}."
                )
            else:
                await service.adelete(index)

    async def _index_and_search(
        self,
        service: RetrievalEvaluationService,
        index: EvaluationIndex,
        dataset: BeirDataset,
        modes: list[SearchMode],
        depth: int,
        verbosity: int,
    ) -> list[ModeScores]:
        await service.aadd_corpus(index, dataset)
        total = len(index.corpus_ids)
        progress = Progress(self.stdout, total=total, unit="documents", verbosity=verbosity)
        # In a log, a line per tenth rather than one per document.
        every = max(total // 10, 1)

        def advance(done: int, total: int, corpus_id: str) -> None:
            progress.advance(1, detail=corpus_id)
            if not progress.on_terminal and (done % every == 0 or done == total):
                progress.line(f"Indexed {done} of {counted(total, 'document')}")

        await service.aindex(index, on_progress=advance)
        progress.finish()
        for failure in index.failed:
            self.stderr.write(f"Not indexed: {failure}")
        if not index.chunks:
            raise CommandError("No document of the corpus could be indexed; the reasons are above.")
        if verbosity >= 1:
            self.stdout.write(
                f"Indexed {counted(index.documents, 'document')} as {counted(index.chunks, 'chunk')} "
                f"({index.kb.chunk_size} tokens, overlap {index.kb.chunk_overlap}) with {index.kb.embedding_model} "
                f"in {index.seconds:.0f}s; "
                f"searching {counted(len(dataset.queries), 'query', 'queries')}."
            )
        scores = []
        for mode in modes:
            scores.append(await service.aevaluate(index, dataset, mode=mode, depth=depth))
            if scores[-1].fell_back:
                fell_back = scores[-1].fell_back
                self.stderr.write(f"{counted(fell_back, f'{mode} search')} ran in another mode.")
        return scores

    def _print_table(self, scores: list[ModeScores]) -> None:
        heading = f"{'mode':<10}{f'nDCG@{CUTOFF}':>10}{f'Recall@{CUTOFF}':>11}{f'MRR@{CUTOFF}':>9}{'latency ms':>12}"
        self.stdout.write(heading)
        for score in scores:
            self.stdout.write(
                f"{score.mode:<10}{score.ndcg:>10.3f}{score.recall:>11.3f}{score.mrr:>9.3f}{score.latency_ms:>12.1f}"
            )

    @staticmethod
    def _as_json(
        dataset: BeirDataset, split: str, index: EvaluationIndex, scores: list[ModeScores], depth: int
    ) -> str:
        return json.dumps(
            {
                "dataset": dataset.name,
                "split": split,
                "corpus": len(dataset.corpus),
                "documents": index.documents,
                "chunks": index.chunks,
                "not_indexed": len(index.failed) + index.skipped,
                "queries": len(dataset.queries),
                "embedder": index.kb.embedding_model,
                "chunk_size": index.kb.chunk_size,
                "chunk_overlap": index.kb.chunk_overlap,
                "chunks_per_search": depth,
                "indexing_seconds": round(index.seconds, 1),
                "modes": {score.mode: score.as_dict() for score in scores},
            },
            indent=2,
        )

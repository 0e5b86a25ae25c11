"""Retrieval quality of kbsite's own pipeline on a BEIR-style data set: index it in a throwaway KB, search it, score.

Each corpus document becomes a text document of a new knowledge base, owned by a new superuser, and
goes through ingestion as an upload would; each query with relevance labels is searched in each
mode; chunk hits fold into their documents (a document scores its best chunk) and the first ten
documents are scored with nDCG@10 (linear gains, ideal over the labelled documents), Recall@10
and MRR@10. The evaluation's searches are not audited: the audit is people's search history.

Reference on SciFact-2101 train (2,101 abstracts, 188 claims; data read from outside the project,
CC BY-NC): exact cosine of all-MiniLM-L6-v2 over whole abstracts cut at 256 tokens gave nDCG@10
0.781, Recall@10 0.880; BM25 (bm25s) 0.782 / 0.907; their reciprocal-rank fusion 0.805 / 0.915.
kbsite over chunks of 200 tokens (overlap 40), 5,879 chunks, BM25 with the default KeywordSettings:
semantic 0.802 / 0.888 (as the script this command replaced, tests/benchmarks/eval_scifact.py,
measured), keyword 0.772 / 0.902, hybrid 0.819 / 0.920; MRR@10 0.777, 0.732, 0.787.
"""

from __future__ import annotations

import csv
import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from uuid import UUID

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from knowledge.errors import DuplicateDocument, KnowledgeError
from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.worker import new_worker_id
from knowledge.models import DocumentStatus, KnowledgeBase
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService
from knowledge.services.permissions import PermissionService
from search.services.search import SearchMode, SearchService

#: Documents scored per query: the @10 of every figure.
CUTOFF = 10
#: Chunks asked of each search: a document often has several among the best, and ten documents are scored.
DEFAULT_DEPTH = 40

IndexProgress = Callable[[int, int, str], None]


class EvaluationError(KnowledgeError):
    code = "evaluation_error"


@dataclass(frozen=True)
class CorpusDocument:
    id: str
    title: str
    text: str

    @property
    def indexed_text(self) -> str:
        # BEIR retrievers read the title with the text; kbsite indexes a document's text only.
        return f"{self.title}\n\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirDataset:
    """A corpus, the queries that have relevance labels, and the labels: {query id: {document id: grade}}."""

    name: str
    corpus: list[CorpusDocument]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, path: Path, *, split: str = "train") -> BeirDataset:
        """Read `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` (or `qrels.tsv`) from a folder."""
        if not path.is_dir():
            raise EvaluationError(
                f"{path} is not a folder: give the folder holding corpus.jsonl and queries.jsonl."
            )
        qrels_file = next(
            (p for p in (path / "qrels" / f"{split}.tsv", path / "qrels.tsv") if p.is_file()), None
        )
        if qrels_file is None:
            raise EvaluationError(
                f"{path} has no relevance labels: expected qrels/{split}.tsv (choose the split with --split) or qrels.tsv."
            )
        qrels = _read_qrels(qrels_file)
        queries = {row["_id"]: row["text"] for row in _read_jsonl(path / "queries.jsonl", ("_id", "text"))}
        qrels = {qid: grades for qid, grades in qrels.items() if qid in queries}
        if not qrels:
            raise EvaluationError(
                f"{qrels_file} labels no query of queries.jsonl as having a relevant document: nothing to score."
            )
        corpus = [
            CorpusDocument(
                id=str(row["_id"]), title=str(row.get("title") or "").strip(), text=str(row["text"])
            )
            for row in _read_jsonl(path / "corpus.jsonl", ("_id", "text"))
        ]
        if not corpus:
            raise EvaluationError(f"{path / 'corpus.jsonl'} holds no documents.")
        return cls(name=path.name, corpus=corpus, queries={qid: queries[qid] for qid in qrels}, qrels=qrels)


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    if not path.is_file():
        raise EvaluationError(
            f"{path} is missing: a BEIR folder holds corpus.jsonl, queries.jsonl and qrels."
        )
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}, line {number}, is not JSON: {exc.msg}.") from None
            if not isinstance(row, dict) or any(key not in row for key in required):
                raise EvaluationError(f"{path}, line {number}, needs the keys {', '.join(required)}.")
            rows.append(row)
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Positive grades only: a 0 says "judged, not relevant", which scores like not judged."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as lines:
        reader = csv.DictReader(lines, delimiter="\t")
        if not {"query-id", "corpus-id", "score"} <= set(reader.fieldnames or ()):
            raise EvaluationError(f"{path} needs a header line: query-id, corpus-id, score (tab-separated).")
        for row in reader:
            try:
                grade = int(row["score"])
            except (TypeError, ValueError):
                raise EvaluationError(
                    f"{path}, line {reader.line_num}: score {row['score']!r} is not a whole number."
                ) from None
            if grade > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = grade
    return qrels


def ndcg(ranked: Sequence[str], grades: dict[str, int], k: int = CUTOFF) -> float:
    gain = sum(grades.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sum(
        grade / math.log2(rank + 2) for rank, grade in enumerate(sorted(grades.values(), reverse=True)[:k])
    )
    return gain / ideal


def recall(ranked: Sequence[str], grades: dict[str, int], k: int = CUTOFF) -> float:
    return len(set(ranked[:k]) & grades.keys()) / len(grades)


def reciprocal_rank(ranked: Sequence[str], grades: dict[str, int], k: int = CUTOFF) -> float:
    return next((1 / (rank + 1) for rank, doc in enumerate(ranked[:k]) if doc in grades), 0.0)


@dataclass
class EvaluationIndex:
    """The throwaway knowledge base, its owner, and which corpus ids each of its documents stands for."""

    kb: KnowledgeBase
    owner: AbstractBaseUser
    # Identical texts are one document (kbsite refuses duplicates): it stands for each of their ids.
    corpus_ids: dict[UUID, list[str]] = field(default_factory=dict)
    skipped: int = 0
    chunks: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def documents(self) -> int:
        return len(self.corpus_ids)


@dataclass(frozen=True)
class ModeScores:
    mode: str
    ndcg: float
    recall: float
    mrr: float
    latency_ms: float
    queries: int
    #: Searches that ran in another mode than asked (a KB without keyword vectors is searched by meaning).
    fell_back: int = 0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "mode": self.mode,
            f"ndcg@{CUTOFF}": self.ndcg,
            f"recall@{CUTOFF}": self.recall,
            f"mrr@{CUTOFF}": self.mrr,
            "latency_ms": self.latency_ms,
            "queries": self.queries,
            "fell_back": self.fell_back,
        }


class _Unrecorded:
    """Stands in for the search audit: evaluation searches are nobody's history."""

    async def record_search(self, **search) -> None:
        return None


def parse_modes(text: str) -> list[SearchMode]:
    modes = [name.strip().lower() for name in text.split(",") if name.strip()]
    allowed = ", ".join(mode.value for mode in SearchMode)
    unknown = [name for name in modes if name not in {mode.value for mode in SearchMode}]
    if unknown or not modes:
        raise EvaluationError(
            f"Unknown search mode {', '.join(unknown) or repr(text)}: choose from {allowed}."
        )
    return [SearchMode(name) for name in dict.fromkeys(modes)]


class RetrievalEvaluationService:
    def __init__(
        self,
        *,
        documents: DocumentService | None = None,
        knowledge_bases: KnowledgeBaseService | None = None,
        ingestion: IngestionService | None = None,
        search: SearchService | None = None,
    ) -> None:
        self.documents = documents or DocumentService()
        self.knowledge_bases = knowledge_bases or KnowledgeBaseService()
        self.ingestion = ingestion or IngestionService()
        self.search = search or SearchService(PermissionService(), _Unrecorded())

    def create_index(
        self,
        *,
        dataset: BeirDataset,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        embedding_model: str | None = None,
    ) -> EvaluationIndex:
        """A new superuser (who cannot log in) owning a new, empty KB of `embedding_model` (default: the built-in)."""
        tag = uuid.uuid4().hex[:8]
        owner = get_user_model().objects.create_superuser(username=f"eval-{tag}", email=None, password=None)
        try:
            kb = self.knowledge_bases.create_knowledge_base(
                name=f"Evaluation {dataset.name} {tag}",
                owner=owner,
                description=f"Throwaway knowledge base of manage.py eval_retrieval on {dataset.name}.",
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                embedding_model=embedding_model,
            )
        except BaseException:
            owner.delete()
            raise
        return EvaluationIndex(kb=kb, owner=owner)

    def add_corpus(self, index: EvaluationIndex, dataset: BeirDataset) -> EvaluationIndex:
        """Queue every corpus document for ingestion; one kbsite refuses is recorded and passed over."""
        for row in dataset.corpus:
            if not row.indexed_text.strip():
                index.skipped += 1
                continue
            try:
                added = self.documents.add_text_document(
                    kb=index.kb, title=row.title or row.id, text=row.indexed_text, source_name=f"{row.id}.txt"
                )
            except DuplicateDocument as exc:
                index.corpus_ids[UUID(exc.detail["document_id"])].append(row.id)
            except KnowledgeError as exc:
                index.failed.append(f"{row.id}: {exc.message}")
            else:
                index.corpus_ids.setdefault(added.document.id, []).append(row.id)
        return index

    acreate_index = sync_to_async(create_index)
    aadd_corpus = sync_to_async(add_corpus)

    async def aindex(
        self, index: EvaluationIndex, *, on_progress: IndexProgress | None = None
    ) -> EvaluationIndex:
        """Ingest the KB's documents here, one after another, as `manage.py ingest` does."""
        worker_id, total, started = new_worker_id(), len(index.corpus_ids), time.perf_counter()
        for done, document_id in enumerate(index.corpus_ids, 1):
            document = await self.ingestion.ingest_until_settled(document_id=document_id, worker_id=worker_id)
            if document is None or document.status != DocumentStatus.READY:
                reason = "taken by another worker" if document is None else document.error
                index.failed.append(f"{', '.join(index.corpus_ids[document_id])}: {reason}")
            else:
                index.chunks += document.chunk_count
            if on_progress is not None:
                on_progress(done, total, index.corpus_ids[document_id][0])
        index.seconds = time.perf_counter() - started
        return index

    async def aevaluate(
        self, index: EvaluationIndex, dataset: BeirDataset, *, mode: SearchMode, depth: int = DEFAULT_DEPTH
    ) -> ModeScores:
        """Search every labelled query in `mode`, one at a time, and score the first ten documents found."""
        ndcgs, recalls, ranks, latencies, fell_back = [], [], [], [], 0
        for qid, query in dataset.queries.items():
            started = time.perf_counter()
            response = await self.search.asearch(
                query=query, kb_ids=[index.kb.id], user_id=index.owner.pk, mode=mode, limit=depth
            )
            latencies.append(time.perf_counter() - started)
            fell_back += response.mode != mode
            ranked = self._documents_ranked(index, response.results)
            grades = dataset.qrels[qid]
            ndcgs.append(ndcg(ranked, grades))
            recalls.append(recall(ranked, grades))
            ranks.append(reciprocal_rank(ranked, grades))
        return ModeScores(
            mode=mode.value,
            ndcg=fmean(ndcgs),
            recall=fmean(recalls),
            mrr=fmean(ranks),
            latency_ms=1000 * fmean(latencies),
            queries=len(latencies),
            fell_back=fell_back,
        )

    @staticmethod
    def _documents_ranked(index: EvaluationIndex, results) -> list[str]:
        best: dict[UUID, float] = {}
        for result in results:
            best[result.document_id] = max(best.get(result.document_id, -math.inf), result.score)
        ranked = sorted(best, key=best.__getitem__, reverse=True)
        return [corpus_id for document_id in ranked for corpus_id in index.corpus_ids.get(document_id, ())]

    async def adelete(self, index: EvaluationIndex) -> None:
        """Drop the KB's collection, the KB with its documents, then its owner."""
        await self.knowledge_bases.adelete_knowledge_base(kb=index.kb)
        await index.owner.adelete()

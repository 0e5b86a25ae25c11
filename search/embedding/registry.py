"""Which embedding service embeds for which model: the built-in default, and the endpoints settings.EMBEDDERS names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from search.embedding.service import EmbeddingConfig, EmbeddingService, embedding_service
from search.errors import UnknownEmbedder

OPENAI_COMPATIBLE_BACKEND = "search.embedding.openai_compatible.OpenAICompatibleEmbedder"
OPENAI_COMPATIBLE = "openai-compatible"


@dataclass(frozen=True)
class EndpointSettings:
    """One OpenAI-compatible embedder as settings.EMBEDDERS[name] describes it (the API key stays in its variable)."""

    name: str
    base_url: str
    model: str
    dimensions: int | None = None
    batch_size: int = 32
    timeout: float = 30.0
    api_key_env: str | None = None
    max_tokens: int = 256
    rate_limit_retries: int = 5
    longest_retry_after: float = 60.0

    @classmethod
    def from_setting(cls, name: str, conf: Mapping[str, Any]) -> EndpointSettings:
        """Read one entry; ValueError says what is wrong with it."""
        if not isinstance(conf, Mapping):
            raise ValueError(f"EMBEDDERS[{name!r}] must be an object of settings, not {conf!r}.")
        kind = conf.get("TYPE", OPENAI_COMPATIBLE)
        if kind != OPENAI_COMPATIBLE:
            raise ValueError(f"EMBEDDERS[{name!r}] TYPE must be {OPENAI_COMPATIBLE!r}, not {kind!r}.")
        missing = [key for key in ("BASE_URL", "MODEL") if not conf.get(key)]
        if missing:
            raise ValueError(f"EMBEDDERS[{name!r}] needs {' and '.join(missing)}.")
        if not str(conf["BASE_URL"]).startswith(("http://", "https://")):
            raise ValueError(f"EMBEDDERS[{name!r}] BASE_URL must start with http:// or https://.")
        try:
            settings_ = cls(
                name=name,
                base_url=str(conf["BASE_URL"]),
                model=str(conf["MODEL"]),
                dimensions=int(conf["DIMENSIONS"]) if conf.get("DIMENSIONS") is not None else None,
                batch_size=int(conf.get("BATCH_SIZE", cls.batch_size)),
                timeout=float(conf.get("TIMEOUT", cls.timeout)),
                api_key_env=conf.get("API_KEY_ENV") or None,
                max_tokens=int(conf.get("MAX_TOKENS", cls.max_tokens)),
                rate_limit_retries=int(conf.get("RATE_LIMIT_RETRIES", cls.rate_limit_retries)),
                longest_retry_after=float(conf.get("LONGEST_RETRY_AFTER", cls.longest_retry_after)),
            )
        except (TypeError, ValueError):
            raise ValueError(
                f"EMBEDDERS[{name!r}]: DIMENSIONS, BATCH_SIZE, MAX_TOKENS and RATE_LIMIT_RETRIES must be whole "
                "numbers, TIMEOUT and LONGEST_RETRY_AFTER numbers of seconds."
            ) from None
        if settings_.batch_size < 1 or settings_.timeout <= 0 or (settings_.dimensions or 1) < 1:
            raise ValueError(f"EMBEDDERS[{name!r}]: BATCH_SIZE, TIMEOUT and DIMENSIONS must be above 0.")
        if settings_.max_tokens < 3:
            raise ValueError(f"EMBEDDERS[{name!r}]: MAX_TOKENS must be at least 3.")
        return settings_

    def embedding_config(self, base: EmbeddingConfig) -> EmbeddingConfig:
        """A service config for this endpoint: its HTTP calls wait on the network, so no CPU priority games."""
        return EmbeddingConfig(
            backend=OPENAI_COMPATIBLE_BACKEND,
            threads=1,
            query_workers=base.query_workers,
            query_batch_size=base.query_batch_size,
            document_workers=1,  # one request at a time: an endpoint's rate limit is the team's to share
            document_batch_size=self.batch_size,
            document_niceness=0,
            query_cache_size=base.query_cache_size,
            options={
                "name": self.name,
                "base_url": self.base_url,
                "model": self.model,
                "dimensions": self.dimensions,
                "batch_size": self.batch_size,
                "timeout": self.timeout,
                "api_key_env": self.api_key_env,
                "max_tokens": self.max_tokens,
                "rate_limit_retries": self.rate_limit_retries,
                "longest_retry_after": self.longest_retry_after,
            },
        )


def endpoints_from_settings() -> tuple[dict[str, EndpointSettings], list[str]]:
    """The endpoints settings.EMBEDDERS configures, and what is wrong with the entries left out."""
    endpoints, problems = {}, []
    for name, conf in (getattr(settings, "EMBEDDERS", None) or {}).items():
        try:
            endpoints[name] = EndpointSettings.from_setting(name, conf)
        except ValueError as exc:
            problems.append(str(exc))
    return endpoints, problems


class EmbedderRegistry:
    """One EmbeddingService (its own query and document threads) per configured model, built on first use."""

    def __init__(self, default: EmbeddingService) -> None:
        self._default = default
        self._endpoints: dict[str, EndpointSettings] = {}
        self._services: dict[str, EmbeddingService] = {}

    def configure(self, endpoints: Mapping[str, EndpointSettings]) -> None:
        self._endpoints = dict(endpoints)
        self._services = {}

    @property
    def default(self) -> EmbeddingService:
        """The built-in model's service: new knowledge bases use it unless told otherwise."""
        return self._default

    def names(self) -> list[str]:
        """Every model a knowledge base may be indexed with, the default first."""
        return [self._default.model_id, *(name for name in self._endpoints if name != self._default.model_id)]

    def has_endpoints(self) -> bool:
        return bool(self._endpoints)

    def describe(self, name: str) -> str:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return f"{name} (built in)"
        return f"{name} ({endpoint.model} at {endpoint.base_url})"

    def is_configured(self, name: str) -> bool:
        return name in self.names()

    def service(self, name: str, *, default: EmbeddingService | None = None) -> EmbeddingService:
        """The service that embeds for model `name`; `default`, when it embeds for `name`, is taken first (tests, evaluations)."""
        for candidate in (default, self._default):
            if candidate is not None and name == candidate.model_id:
                return candidate
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise UnknownEmbedder(
                f"No embedder named {name!r} is configured (the site has {', '.join(self.names())}): add it to "
                "EMBEDDERS_JSON, or move its knowledge bases to another with `manage.py reindex --recreate --model`.",
                detail={"embedder": name},
            )
        service = self._services.get(name)
        if service is None:
            service = self._services[name] = EmbeddingService(endpoint.embedding_config(self._default.config))
        return service


embedders = EmbedderRegistry(embedding_service)

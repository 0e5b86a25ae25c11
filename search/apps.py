from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Builds the process's services from settings; neither opens a connection nor loads a model.
        from search import checks  # noqa: F401  (registers the system checks)
        from search.embedding import EmbeddingConfig, embedding_service
        from search.qdrant import QdrantConfig, qdrant_service

        qdrant_service.configure(QdrantConfig.from_settings())
        embedding_service.configure(EmbeddingConfig.from_settings())

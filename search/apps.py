from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Builds the process's services from settings; neither opens a connection nor loads a model.
        from django.conf import settings
        from django.utils.module_loading import import_string

        from search import checks  # noqa: F401  (registers the system checks)
        from search.embedding import EmbeddingConfig, embedding_service
        from search.embedding.registry import embedders, endpoints_from_settings
        from search.qdrant import QdrantConfig, qdrant_service
        from search.services.audit import SearchAuditService
        from search.services.search import SearchService, configure_search_service

        qdrant_service.configure(QdrantConfig.from_settings())
        embedding_service.configure(EmbeddingConfig.from_settings())
        embedders.configure(endpoints_from_settings()[0])
        # The search app asks another app who may read what, named by a setting so imports stay one-way.
        permissions = import_string(settings.SEARCH["PERMISSION_SERVICE"])()
        configure_search_service(SearchService(permissions, SearchAuditService()))

"""manage.py upgrade_search_keys: give the chunks an earlier kbsite wrote the key searches filter on."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from knowledge.management.progress import Progress
from search.errors import KbsiteError
from search.qdrant import qdrant_service
from search.services.collections import CollectionService


class Command(BaseCommand):
    help = (
        "Once after upgrading to search keys: write each chunk's search key (made from its knowledge base's "
        "tenant key and its archived flag) where it has none. Nothing is embedded again; a run stopped part-way "
        "is finished by running it again. Restart the server afterwards: until then it searches those "
        "collections the slower way."
    )

    def handle(self, *args, verbosity: int, **options) -> None:
        try:
            written = asyncio.run(self._upgrade(verbosity=verbosity))
        except KbsiteError as exc:
            raise CommandError(f"{exc.message}\nRun upgrade_search_keys again once the cause is fixed.") from exc
        if written is not None:
            self.stdout.write(self.style.SUCCESS(f"Wrote the search keys of {written} chunks."))

    async def _upgrade(self, *, verbosity: int) -> int | None:
        service = CollectionService()
        missing = {
            alias: await service.count_without_search_key(collection=alias)
            for alias in await service.model_collections()
        }
        total = sum(missing.values())
        if not total:
            self.stdout.write(
                self.style.SUCCESS(f"Every chunk in {qdrant_service.config.describe()} has its search key: nothing to do.")
            )
            return None
        progress = Progress(self.stdout, total=total, unit="chunks", verbosity=verbosity)
        written = 0
        for alias, count in missing.items():
            if count:
                written += await service.write_search_keys(
                    collection=alias, on_progress=lambda step, tenant: progress.advance(step, detail=tenant)
                )
        progress.finish()
        return written

"""manage.py upgrade_fields: write the typed filter values of declared metadata fields into chunks an earlier kbsite wrote."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.models import KnowledgeBase
from knowledge.services.metadata_fields import MetadataFieldService, describe_fields
from search.errors import KbsiteError


class Command(BaseCommand):
    help = (
        "Once after upgrading to declared metadata fields (migration 0008 declares the fields documents carry): "
        "write each document's filter values into its chunks, index the declared fields and drop the indexes "
        "searches made before. Nothing is embedded again; running it again does no harm."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kb", action="append", default=[], help="Only this knowledge base (slug); repeatable."
        )

    def handle(self, *args, kb: list[str], verbosity: int, **options) -> None:
        try:
            total = asyncio.run(self._upgrade(slugs=kb, verbosity=verbosity))
        except KbsiteError as exc:
            raise CommandError(f"{exc.message}\nRun upgrade_fields again once the cause is fixed.") from exc
        self.stdout.write(self.style.SUCCESS(f"Wrote the filter values of {total} documents."))

    async def _upgrade(self, *, slugs: list[str], verbosity: int) -> int:
        kbs = KnowledgeBase.objects.order_by("slug")
        if slugs:
            kbs = kbs.filter(slug__in=slugs)
            missing = set(slugs) - {slug async for slug in kbs.values_list("slug", flat=True)}
            if missing:
                raise CommandError(f"There is no knowledge base {', '.join(sorted(missing))}.")
        service, total = MetadataFieldService(), 0
        async for kb in kbs:
            upgrade = await service.upgrade_chunks(kb=kb)
            total += upgrade.documents
            if verbosity >= 1:
                dropped = f"; dropped {', '.join(upgrade.dropped_indexes)}" if upgrade.dropped_indexes else ""
                self.stdout.write(
                    f"{kb.slug}: {upgrade.documents} documents, fields {describe_fields(kb.metadata_fields)}{dropped}"
                )
        return total

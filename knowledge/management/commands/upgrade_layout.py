"""manage.py upgrade_layout: move each knowledge base's own collection into its embedding model's shared collection."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.management.progress import Progress
from knowledge.management.prompts import confirm
from knowledge.services.store_upgrade import LayoutUpgradeReport, LayoutUpgradeService
from search.errors import KbsiteError
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Move the per-knowledge-base collections of an earlier kbsite into one shared collection per embedding "
        "model (knowledge bases as tenants). Nothing is embedded again; a run stopped part-way is resumed by "
        "running it again. Stop the server and the workers first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-input", "--noinput", action="store_false", dest="interactive", help="Do not ask for confirmation."
        )

    def handle(self, *args, interactive: bool, verbosity: int, **options) -> None:
        try:
            report = asyncio.run(self._upgrade(interactive=interactive, verbosity=verbosity))
        except KbsiteError as exc:
            raise CommandError(f"{exc.message}\nKnowledge bases not yet moved keep their own collection: "
                               "run upgrade_layout again once the cause is fixed.") from exc
        if report is None:
            return
        for alias in report.orphans:
            self.stderr.write(
                f"Left {alias}: no knowledge base in the database has its id. Delete that collection if you "
                "do not need it."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Moved {len(report.moved)} knowledge bases ({report.points} chunks) into shared collections "
                f"in {report.seconds:.1f}s."
            )
        )

    async def _upgrade(self, *, interactive: bool, verbosity: int) -> LayoutUpgradeReport | None:
        service = LayoutUpgradeService()
        legacy = await service.legacy_collections()
        if not legacy:
            self.stdout.write(
                self.style.SUCCESS(
                    f"{qdrant_service.config.describe()} holds no per-knowledge-base collection: nothing to do."
                )
            )
            return None
        total = await service.count_legacy_points(legacy)
        if interactive:
            # Nothing else runs on this loop yet: waiting for the answer here holds up no other work.
            confirm(
                f"Move {len(legacy)} per-knowledge-base collections ({total} chunks) into shared collections?",
                command="upgrade_layout",
            )
        progress = Progress(self.stdout, total=total, unit="chunks", verbosity=verbosity)
        report = await service.move_all(on_progress=lambda moved, slug: progress.advance(moved, detail=slug))
        progress.finish()
        return report

"""manage.py upgrade_store: move an embedded store from qdrant-client's local mode to Qdrant Edge."""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.management.prompts import confirm
from knowledge.models import Document, KnowledgeBase
from knowledge.services.store_upgrade import StoreUpgradeService
from search.plurals import counted
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Move the embedded store written by an earlier kbsite (qdrant-client's local mode) to Qdrant Edge: "
        "the old folder is kept aside, and every knowledge base is rebuilt from its documents' stored text. "
        "Stop the server first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-input", "--noinput", action="store_false", dest="interactive", help="Do not ask for confirmation.")

    def handle(self, *args, interactive: bool, verbosity: int, **options) -> None:
        service = StoreUpgradeService()
        config = qdrant_service.config
        if not config.is_local:
            raise CommandError(f"kbsite uses {config.describe()}: only an embedded store is upgraded.")
        if not service.needs_upgrade():
            self.stdout.write(self.style.SUCCESS(f"{config.describe()} is already a Qdrant Edge store: nothing to do."))
            return
        kbs, documents = KnowledgeBase.objects.count(), Document.objects.count()
        if interactive:
            confirm(
                f"Move {config.path} aside and rebuild {counted(kbs, 'knowledge base')} ({counted(documents, 'document')}) "
                "into Qdrant Edge? Searches return nothing until each is rebuilt.",
                command="upgrade_store",
            )
        kept = service.move_aside()
        self.stdout.write(f"The local-mode store is kept at {kept}.")
        try:
            call_command("reindex", recreate=True, interactive=False, verbosity=verbosity, stdout=self.stdout._out)
        except CommandError as exc:
            raise CommandError(
                f"{exc}\nThe old store is untouched at {kept}. Once the cause is fixed, `manage.py reindex "
                "--recreate` finishes the rebuild; or move that folder back to go back."
            ) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Upgraded {counted(kbs, 'knowledge base')} to Qdrant Edge at {config.path}. "
                f"Delete {kept} once you are satisfied."
            )
        )

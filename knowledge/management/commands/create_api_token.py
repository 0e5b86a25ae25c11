"""manage.py create_api_token: make a personal API token for a user and show it once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.services.tokens import ApiTokenService


class Command(BaseCommand):
    help = "Make a personal API token for USERNAME and print it. It is shown only this once; only its hash is kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="What the token is for (default: %(default)s).")

    def handle(self, *args, username: str, name: str, verbosity: int, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"There is no user {username!r}.")
        try:
            issued = ApiTokenService().create_token(user=user, name=name)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        if verbosity >= 1:
            self.stderr.write(f"API token {name!r} for {username} (shown only now; send it as 'Authorization: Bearer …'):")
        self.stdout.write(issued.secret)

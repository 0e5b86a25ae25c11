"""Prepare a fresh site: a secret key, an administrator to log in with and a demo knowledge base (after migrate)."""

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.services.site import SiteSetupService


class Command(BaseCommand):
    help = (
        "Write a secret key of this install's own into var/ unless DJANGO_SECRET_KEY is set or one is there; "
        "create the first superuser if there is none and say how to log in; on that first start, also queue "
        "a demo knowledge base of kbsite's own documentation. Safe to run on every start."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="Name of the superuser to create (default: admin).")
        parser.add_argument(
            "--password-env",
            default="KBSITE_ADMIN_PASSWORD",
            help="Environment variable holding the password; unset means generate one (default: %(default)s).",
        )
        parser.add_argument(
            "--url",
            default=f"http://127.0.0.1:{os.environ.get('PORT') or 8000}/",
            help="Where the site will be served (default: port $PORT, else 8000, on 127.0.0.1).",
        )
        parser.add_argument("--no-demo", action="store_true", help="Do not load the demo knowledge base.")

    def handle(self, *args, username: str, password_env: str, url: str, no_demo: bool, **options) -> None:
        service = SiteSetupService()
        if service.ensure_secret_key():
            self.stdout.write(
                f"Wrote a secret key of this install's own to {settings.SECRET_KEY_FILE} (readable by you only); "
                "every later command and the server read it from there."
            )
        try:
            account = service.ensure_admin(username=username, password=os.environ.get(password_env) or None)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        if account.created and account.password:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created the superuser {account.username!r}: log in as {account.username} with the password\n"
                    f"  {account.password}\n"
                    f"which is also saved, alone, in {service.password_file()}."
                )
            )
        elif account.created:
            self.stdout.write(self.style.SUCCESS(f"Created the superuser {account.username!r} (password from ${password_env})."))
        else:
            where = service.password_file()
            hint = (
                f"log in as {account.username} with the password saved in {where} (unless changed since)"
                if where.exists()
                else "use its password, or `manage.py changepassword`"
            )
            self.stdout.write(f"Superuser {account.username!r} exists; {hint}.")
        demo = None
        if account.created and not no_demo:
            owner = get_user_model().objects.get(username=account.username)
            demo = service.load_demo(owner=owner)
            if demo is not None:
                self.stdout.write(
                    f"Queued the demo knowledge base {demo.name!r}: the server indexes it in its first seconds."
                )
        # One next step, whatever happened above: the members' search page is where a new user starts.
        site = url.rstrip("/")
        what = f"search {demo.name!r}" if demo is not None else "search"
        self.stdout.write(
            self.style.SUCCESS(f"Next: open {site}/ and sign in as {account.username} to {what}; the admin is at {site}/admin/.")
        )

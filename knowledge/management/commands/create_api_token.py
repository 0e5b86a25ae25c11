"""manage.py create_api_token: make a personal API token for a user and show it once."""

import argparse
import re
from datetime import UTC, datetime, time, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from knowledge.errors import KnowledgeError
from knowledge.services.tokens import ApiTokenService, when

UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta:
    """`90d`, `12w`, `36h`: how long from now the token works."""
    match = re.fullmatch(r"(\d+)\s*([hdw])", text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write e.g. 90d (days), 12w (weeks) or 36h (hours)."
        )
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def moment(text: str) -> datetime:
    """`2027-03-31` (its midnight, UTC) or `2027-03-31T18:00` (UTC unless it names its zone)."""
    try:
        parsed = parse_datetime(text)
        if parsed is None:
            day = parse_date(text)
            parsed = datetime.combine(day, time()) if day else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: write e.g. 2027-03-31 or 2027-03-31T18:00."
        )
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Make a personal API token for USERNAME and print it. It is shown only this once; only its hash is kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="What the token is for (default: %(default)s).")
        expiry = parser.add_mutually_exclusive_group()
        expiry.add_argument(
            "--expires-in",
            type=duration,
            help="The token stops working after this long, e.g. 90d, 12w or 36h.",
        )
        expiry.add_argument(
            "--expires-at",
            type=moment,
            help="The token stops working at this date or time (UTC unless given), e.g. 2027-03-31.",
        )

    def handle(
        self,
        *args,
        username: str,
        name: str,
        expires_in: timedelta | None,
        expires_at: datetime | None,
        verbosity: int,
        **options,
    ) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"There is no user {username!r}.")
        if expires_in is not None:
            expires_at = timezone.now() + expires_in
        try:
            issued = ApiTokenService().create_token(user=user, name=name, expires_at=expires_at)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        if verbosity >= 1:
            lasts = f"expires {when(expires_at)}" if expires_at else "does not expire"
            self.stderr.write(
                f"API token {name!r} for {username}, {lasts} "
                "(shown only now; send it as 'Authorization: Bearer …'):"
            )
        self.stdout.write(issued.secret)

"""Asking an operator before a command starts, and refusing plainly when nobody can answer."""

from __future__ import annotations

from django.core.management.base import CommandError


def confirm(question: str, *, command: str) -> None:
    """Go on only on "y" or "yes"; with no terminal to answer on, say to use --no-input."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        # No terminal to answer on (cron, a container without -it, stdin from /dev/null).
        raise CommandError(
            f"{command} asks before it starts, and there is no terminal to answer on: "
            "run it again with --no-input to go ahead."
        ) from None
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("Nothing was done.")

"""Checks on text people type or upload that the database cannot store as it is."""

from __future__ import annotations

from knowledge.errors import InvalidInput

# PostgreSQL's text columns cannot hold U+0000; SQLite would store it and show it as a cut-off string.
NUL = "\x00"


def refuse_nul_characters(**fields: str | None) -> None:
    """Raise InvalidInput naming the first of the given fields (name=value) that holds a NUL character."""
    for name, value in fields.items():
        if value and NUL in value:
            raise InvalidInput(
                f"The {name.replace('_', ' ')} contains a NUL character (\\0), which kbsite cannot store: "
                "remove it and try again.",
                detail={"field": name},
            )

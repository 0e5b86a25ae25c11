"""Checks on text people type or upload that the database cannot store as it is."""

from __future__ import annotations

import re

from knowledge.errors import InvalidInput

# PostgreSQL's text columns cannot hold U+0000; SQLite would store it and show it as a cut-off string.
# A lone surrogate (U+D800 to U+DFFF, which JSON's "\ud800" escape and undecodable command-line bytes
# make) is no character at all: UTF-8 cannot encode it, so PostgreSQL, Qdrant and export_kb all fail on it.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_character(text: str) -> str | None:
    """What is wrong with `text` (a NUL character, a lone surrogate) as a phrase, or None if it can be stored."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "a NUL character (\\0)"
    return f"a lone surrogate (\\u{ord(found.group()):04x}), which is not a character: send valid UTF-8 text"


def refuse_unstorable_characters(**fields: str | None) -> None:
    """Raise InvalidInput naming the first of the given fields (name=value) that kbsite cannot store."""
    for name, value in fields.items():
        if value and (problem := unstorable_character(value)):
            raise InvalidInput(
                f"The {name.replace('_', ' ')} contains {problem}, which kbsite cannot store: "
                "remove it and try again.",
                detail={"field": name},
            )

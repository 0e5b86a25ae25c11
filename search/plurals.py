"""Counts written as people read them: "1 chunk", "2 chunks", "0 documents", for every message that prints one."""

from __future__ import annotations


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """The noun in the number `count` takes: `singular` for exactly one, else `plural` (default: singular + "s")."""
    return singular if count == 1 else (plural or f"{singular}s")


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`count` followed by its noun: counted(1, "chunk") is "1 chunk", counted(3, "knowledge base") "3 knowledge bases"."""
    return f"{count} {noun(count, singular, plural)}"

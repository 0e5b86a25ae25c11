"""Where a chunk sits among its document's pages: its range from the page starts, and how people read it."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def page_range(
    page_starts: Sequence[int] | None, *, char_start: int, char_end: int
) -> tuple[int | None, int | None]:
    """The first and last page (from 1) of the text [char_start, char_end); (None, None) without pages.

    A page begins at its start offset; an empty page shares its start with the next, and a
    character is on the last page beginning at or before it.
    """
    if not page_starts:
        return None, None
    first = max(bisect_right(page_starts, char_start), 1)
    last = max(bisect_right(page_starts, max(char_end - 1, char_start)), first)
    return first, last


def page_label(page_start: int | None, page_end: int | None) -> str:
    """The pages as people cite them, "p. 3" or "pp. 3–4"; empty when the page is not known."""
    if page_start is None:
        return ""
    if page_end is None or page_end == page_start:
        return f"p. {page_start}"
    return f"pp. {page_start}–{page_end}"

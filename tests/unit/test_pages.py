"""Page ranges of chunks from a document's page starts, and how they are written."""

from __future__ import annotations

import pytest

from search.pages import page_label, page_range

pytestmark = pytest.mark.unit

# Pages of ten characters; page 3 is blank and shares its start with page 4.
STARTS = [0, 10, 20, 20]


@pytest.mark.parametrize(
    ("char_start", "char_end", "pages"),
    [
        (0, 10, (1, 1)),
        (3, 11, (1, 2)),
        (10, 20, (2, 2)),
        (15, 25, (2, 4)),
        (20, 30, (4, 4)),
        (25, 26, (4, 4)),
    ],
)
def test_a_chunk_spans_the_pages_its_first_and_last_characters_are_on(char_start, char_end, pages) -> None:
    assert page_range(STARTS, char_start=char_start, char_end=char_end) == pages


@pytest.mark.parametrize("starts", [None, []])
def test_a_document_without_pages_gives_no_page(starts) -> None:
    assert page_range(starts, char_start=0, char_end=5) == (None, None)


def test_one_page_reads_p_and_several_pp_with_an_en_dash() -> None:
    assert (page_label(3, 3), page_label(3, 4), page_label(None, None)) == ("p. 3", "pp. 3–4", "")

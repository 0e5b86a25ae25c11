"""The search page's result list written out as HTML in Python, not by the template engine.

The page's server time is held to within 10 % of the API's for the same search (issue 12), and the
template engine spent more on ten results (a lookup, a localisation and an escape per value) than the
rest of the page together. Everything that comes from a document goes through `escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from urllib.parse import urlencode
from uuid import UUID

from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from knowledge.highlighting import marked_html
from search.plurals import counted
from search.services.search import SearchResult

PLACEHOLDER_ID = UUID(int=0)


def results_html(
    results: Sequence[SearchResult],
    *,
    kb_names: Mapping[UUID, str],
    back_query: str,
    further: Mapping[UUID, Sequence[SearchResult]] | None = None,
) -> SafeString:
    """One `<li class="result">` per result, numbered from 1 (`#result-N`, the "more" link's target).

    `further` gives, by document, the passages shown folded below its result (one result per document).
    """
    document_path = reverse("web:document", args=[PLACEHOLDER_ID])  # once per page, not once per result
    back = urlencode({"back": back_query})
    further = further or {}
    return mark_safe(
        "".join(
            _item(n, result, kb_names, document_path, back, further.get(result.document_id, ()))
            for n, result in enumerate(results, 1)
        )
    )


def _item(
    n: int,
    result: SearchResult,
    kb_names: Mapping[UUID, str],
    document_path: str,
    back: str,
    further: Sequence[SearchResult],
) -> str:
    href = escape(_document_link(document_path, result, back))
    return (
        f'<li class="result" id="result-{n}">'
        f'<h3><a href="{href}">{escape(result.title)}</a></h3>'
        f'<p class="result-meta"><span class="kb-name">{escape(kb_names.get(result.kb_id, ""))}</span>{_pages(result)}</p>'
        f'<p class="passage">{marked_html(result.content, result.highlights)}</p>'
        f"{_details(result)}{_further(further, document_path, back)}</li>"
    )


def _details(result: SearchResult) -> str:
    """Score, passage number and offsets: for the curious, folded away so the result line reads as prose."""
    where = f", characters {result.char_start}–{result.char_end}" if result.char_start is not None else ""
    return (
        '<details class="result-details"><summary>Details</summary>'
        f'<p>Score <span class="score">{result.score:.3f}</span>, passage {result.chunk_index + 1}{where}</p></details>'
    )


def _pages(result: SearchResult) -> str:
    """"p. 3" or "pp. 3–4" for a document with pages, else nothing."""
    return f' <span class="pages">{result.pages}</span>' if result.page_start is not None else ""


def _further(passages: Sequence[SearchResult], document_path: str, back: str) -> str:
    if not passages:
        return ""
    items = "".join(
        f'<li><p class="passage">{marked_html(hit.content, hit.highlights)}</p>'
        f'<p class="result-meta"><a href="{escape(_document_link(document_path, hit, back))}">Read it in the document</a>'
        f"{_pages(hit)}</p>{_details(hit)}</li>"
        for hit in passages
    )
    more = f"{counted(len(passages), 'more passage')} from this document"
    return f'<details class="further-passages"><summary>{more}</summary><ul>{items}</ul></details>'


def _document_link(document_path: str, result: SearchResult, back: str) -> str:
    """The document's page with the hit's passage marked, and the way back to these results."""
    path = document_path.replace(str(PLACEHOLDER_ID), str(result.document_id))
    where = f"start={result.char_start}&end={result.char_end}&" if result.char_end is not None else ""
    return f"{path}?{where}{back}#hit"

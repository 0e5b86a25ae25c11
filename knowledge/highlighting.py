"""Search hits cut into marked and unmarked pieces for templates, with Markdown's markers taken out."""

from __future__ import annotations

import re
from html import escape

from django.utils.safestring import mark_safe


def highlighted_parts(content: str, spans) -> list[tuple[str, bool]]:
    """`content` cut into (text, matched) pieces at the highlight spans, for the template to mark."""
    return [(content[start:end], matched) for start, end, matched in _pieces(content, spans)]


def _pieces(content: str, spans) -> list[tuple[int, int, bool]]:
    pieces, at = [], 0
    for start, end in spans:
        if start > at:
            pieces.append((at, start, False))
        pieces.append((start, end, True))
        at = end
    if at < len(content):
        pieces.append((at, len(content), False))
    return pieces


# Markdown's markers: a pattern with a `text` group keeps it and drops the rest; the others are replaced.
# Each comes with the characters it cannot match without: a pattern is only run on text holding one.
MARKDOWN_MARKERS = [
    # Whole lines that only shape the page: table separators, rules, code fences.
    (re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*(?::?-+:?)?[ \t]*(?:\n|$)", re.M), "", "|"),
    (re.compile(r"^[ \t]{0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})(?:\n|$)", re.M), "", "-*_"),
    (re.compile(r"^[ \t]{0,3}(?:```|~~~).*(?:\n|$)", re.M), "", "`~"),
    # Line starts: headings and quotes.
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.M), "", "#"),
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.M), "", ">"),
    # Table rows: the outer pipes go, the inner ones separate the cells.
    (re.compile(r"^[ \t]*\|[ \t]*", re.M), "", "|"),
    (re.compile(r"[ \t]*\|[ \t]*$", re.M), "", "|"),
    (re.compile(r"(?<=\S)[ \t]*(?<!\\)\|[ \t]*(?=\S)"), " · ", "|"),
    # Inline: images and links keep their text, emphasis and code their words.
    (re.compile(r"!?\[(?P<text>[^\]\n]*)\]\([^)\n]*\)"), None, "["),
    (re.compile(r"(?P<mark>\*\*|__)(?=\S)(?P<text>[^\n]+?)(?<=\S)(?P=mark)"), None, "*_"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(?P<text>[^\n*]+?)(?<=[^\s*])\*(?![\w*])"), None, "*"),
    (re.compile(r"(?<![\w_])_(?=[^\s_])(?P<text>[^\n_]+?)(?<=[^\s_])_(?![\w_])"), None, "_"),
    (re.compile(r"`(?P<text>[^`\n]+)`"), None, "`"),
]


# Text with none of these characters has no Markdown marker to take out: one scan instead of all of them.
MAYBE_MARKDOWN = re.compile(r"[#>|*_`\[]|^[ \t]*(?:-[ \t]*){3,}$|^[ \t]*~~~", re.M)


def markdown_edits(content: str) -> list[tuple[int, int, str]]:
    """The (start, end, replacement) edits that take Markdown's markers out of `content`, in order.

    Edits rather than a new string, so that spans into the raw content (the highlights) still apply.
    """
    if not MAYBE_MARKDOWN.search(content):
        return []
    edits = []
    for pattern, replacement, needs in MARKDOWN_MARKERS:
        if not any(char in content for char in needs):
            continue
        for match in pattern.finditer(content):
            if replacement is not None:
                edits.append((match.start(), match.end(), replacement))
            else:
                edits.append((match.start(), match.start("text"), ""))
                edits.append((match.end("text"), match.end(), ""))
    chosen, reached = [], 0
    for start, end, replacement in sorted(edits, key=lambda edit: (edit[0], -edit[1])):
        if start >= reached and (end > start or replacement):
            chosen.append((start, end, replacement))
            reached = end
    return chosen


def readable_parts(content: str, spans) -> list[tuple[str, bool]]:
    """`highlighted_parts` with Markdown's markers taken out of each piece: the marks stay on their words."""
    edits, next_edit, consumed, parts = markdown_edits(content), 0, 0, []
    for start, end, matched in _pieces(content, spans):
        pieces, at = [], max(start, consumed)
        while next_edit < len(edits) and edits[next_edit][0] < end:
            edit_start, edit_end, replacement = edits[next_edit]
            pieces.extend([content[at:edit_start], replacement])
            at, next_edit = max(at, edit_end), next_edit + 1
        pieces.append(content[at:end])
        consumed = max(end, at)
        text = "".join(pieces)
        if text:
            parts.append((text, matched))
    return parts


def marked_html(content: str, spans) -> str:
    """The readable text as HTML, each matched word in <mark>: one join instead of a template loop per piece."""
    # The standard library's escape: Django's is several times slower, and this runs for every result.
    return mark_safe(
        "".join(f"<mark>{escape(text)}</mark>" if matched else escape(text) for text, matched in readable_parts(content, spans))
    )

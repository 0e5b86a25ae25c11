"""Web pages: BeautifulSoup on lxml, the body as Markdown-style blocks, the title from <title> or the first <h1>."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from knowledge.ingestion.extraction import RawText, _clean_title

# Never shown as page text; the <head> goes once its <title> has been read.
_HTML_DROPPED = ("head", "script", "style", "noscript", "template", "svg", "nav", "footer")
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements a browser shows on lines of their own; text either side of them is never one paragraph.
_HTML_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "form", "header", "hr", "html", "li", "main",
        "ol", "p", "pre", "section", "summary", "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip

_WHITESPACE = re.compile(r"\s+")


def extract(data: bytes, filename: str) -> tuple[RawText, str | None]:
    # Given bytes, BeautifulSoup decodes them by the BOM, the <meta> charset or its own detection.
    soup = BeautifulSoup(data, "lxml")
    title = _clean_title(soup.title.get_text()) if soup.title else None
    for tag in soup.find_all(_HTML_DROPPED):
        tag.decompose()
    if title is None and (h1 := soup.find("h1")):
        title = _clean_title(_html_inline_text(h1))
    return "\n\n".join(_HtmlBlocks().collect(soup.body or soup)), title


def _is_html_text(node: object) -> bool:
    # Comments, CDATA, doctypes and processing instructions are strings too, but never shown.
    return isinstance(node, NavigableString) and not isinstance(node, PreformattedString)


def _html_inline_text(tag: Tag) -> str:
    """A heading's or table cell's text on one line, spaced as a browser shows it."""
    parts = []
    for node in tag.descendants:
        if isinstance(node, Tag) and (node.name == "br" or node.name in _HTML_BLOCKS):
            parts.append(" ")
        elif _is_html_text(node):
            parts.append(str(node))
    return " ".join("".join(parts).split())


class _HtmlBlocks:
    """Collects an HTML body as Markdown-style blocks: headings, paragraphs, list items and table rows."""

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._inline: list[str] = []
        self._prefix = ""

    def collect(self, root: Tag) -> list[str]:
        self._walk(root)
        self._flush()
        return self._blocks

    def _walk(self, parent: Tag) -> None:
        for node in parent.children:
            if isinstance(node, Tag):
                self._visit(node)
            elif _is_html_text(node):
                # Source line breaks are only spaces in HTML; <br> is the one that shows.
                self._inline.append(_WHITESPACE.sub(" ", node))

    def _visit(self, tag: Tag) -> None:
        if tag.name in _HTML_HEADINGS:
            self._flush()
            if text := _html_inline_text(tag):
                self._blocks.append("#" * int(tag.name[1]) + " " + text)
        elif tag.name == "tr":
            self._flush()
            cells = [_html_inline_text(cell) for cell in tag.find_all(["td", "th"], recursive=False)]
            if any(cells):
                self._blocks.append(" | ".join(cells))
        elif tag.name == "pre":
            self._flush()
            # Code keeps its layout: its spaces and line breaks are what it means.
            if (text := tag.get_text().strip("\n")).strip():
                self._blocks.append(text)
        elif tag.name == "br":
            self._inline.append("\n")
        elif tag.name in _HTML_BLOCKS:
            self._flush()
            if tag.name == "li":
                self._prefix = "- "
            self._walk(tag)
            self._flush()
            self._prefix = ""
        else:
            self._walk(tag)

    def _flush(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self._inline).split("\n"))
        text = "\n".join(lines).strip()
        self._inline = []
        # A list item's marker waits for its first text, which may sit in a <p> inside the <li>.
        if text:
            self._blocks.append(self._prefix + text)
            self._prefix = ""

"""Word documents (DOCX): python-docx on a copy unpacked under a cap, page by page where it has explicit breaks."""

from __future__ import annotations

import copy
import io
import re
import zipfile

import docx
from docx.oxml.text.run import CT_Br
from docx.table import Table
from docx.text.paragraph import Paragraph

from knowledge.ingestion.extraction import ExtractionError, RawText, _clean_title, _limits

_DOCX_HEADING = re.compile(r"Heading ([1-9])")
# What python-docx reads as a run's text (Run.text), in document order; a page break among them reads as "".
_DOCX_RUN_TEXT = "w:br | w:cr | w:noBreakHyphen | w:ptab | w:t | w:tab"
_DOCX_PAGE_BREAK = "w:r/w:br[@w:type='page'] | w:hyperlink/w:r/w:br[@w:type='page']"
# Each read of a zip member inflates at most about this much: the cap is checked between reads.
_ZIP_READ_BYTES = 64 * 1024


def extract(data: bytes, filename: str) -> tuple[RawText, str | None]:
    """The document's blocks, page by page if it has explicit page breaks (Word's own layout is not known)."""
    document = docx.Document(io.BytesIO(_unpacked_docx(data, filename)))
    pages: list[list[str]] = [[]]
    # The first "Title" and "Heading 1" paragraphs, which stand in for a missing document title.
    title_candidates: dict[str, str] = {}
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            pages[-1].extend(_docx_rows(item))
            continue
        style = _docx_style(item)
        # A paragraph at the top of a page (nothing read on it yet) is on a new page already.
        if pages[-1] and _docx_breaks_page_before(item):
            pages.append([])
        for position, text in enumerate(_docx_page_parts(item)):
            if position:
                pages.append([])
            if block := _docx_paragraph(item, style, text):
                pages[-1].append(block)
                if style in ("Title", "Heading 1"):
                    title_candidates.setdefault(style, block.split(" ", 1)[1])
    title = (
        _clean_title(document.core_properties.title)
        or title_candidates.get("Title")
        or title_candidates.get("Heading 1")
    )
    if len(pages) == 1:
        return "\n\n".join(pages[0]), title
    return ["\n\n".join(blocks) for blocks in pages], title


def _unpacked_docx(data: bytes, filename: str) -> bytes:
    """The DOCX re-packed without compression, after inflating it under a hard cap on the bytes produced.

    A zip's index may lie about its members' sizes, and zipfile inflates a whole member in one call
    before cutting it to its declared size: each member is streamed in small reads instead, counting
    what actually comes out and stopping one read past its declared size. python-docx then reads the
    stored copy, which holds nothing more to inflate.
    """
    max_unzipped = _limits().max_unzipped_bytes
    unpacked = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as archive, zipfile.ZipFile(unpacked, "w") as stored:
        members = archive.infolist()
        if sum(member.file_size for member in members) > max_unzipped:
            raise ExtractionError(
                f"{filename} expands to more than {max_unzipped / 1024**2:g} MB when unpacked "
                "(KBSITE_MAX_UNZIPPED_MB): split it into smaller files."
            )
        for member in members:
            # Read past the declared size, if there is more, to catch the lie rather than trust it.
            unbounded = copy.copy(member)
            unbounded.file_size = max_unzipped + 1
            parts: list[bytes] = []
            size = 0
            with archive.open(unbounded) as stream:
                while part := stream.read(_ZIP_READ_BYTES):
                    size += len(part)
                    # Declared sizes add up to at most the limit, so stopping at each one caps the total.
                    if size > member.file_size:
                        raise ExtractionError(
                            f"{filename} is not a valid Word document: its part {member.filename} unpacks to "
                            f"more than the {member.file_size:,} bytes its zip index declares (a damaged file, "
                            "or one built to exhaust the server). Open it in Word, save it again and upload the new copy."
                        )
                    parts.append(part)
            stored.writestr(member.filename, b"".join(parts))
    return unpacked.getvalue()


def _docx_style(paragraph: Paragraph) -> str:
    return paragraph.style.name if paragraph.style is not None else ""


def _docx_breaks_page_before(paragraph: Paragraph) -> bool:
    """Whether the paragraph starts a new page (w:pageBreakBefore), set on it or inherited from its style."""
    if (direct := paragraph.paragraph_format.page_break_before) is not None:
        return direct
    style = paragraph.style
    while style is not None:
        if (inherited := style.paragraph_format.page_break_before) is not None:
            return inherited
        style = style.base_style
    return False


def _docx_page_parts(paragraph: Paragraph) -> list[str]:
    """The paragraph's text cut at its explicit page breaks (`<w:br w:type="page"/>`), in order."""
    if not paragraph._p.xpath(_DOCX_PAGE_BREAK):
        return [paragraph.text]
    parts = [""]
    for run in paragraph._p.xpath("w:r | w:hyperlink/w:r"):
        for element in run.xpath(_DOCX_RUN_TEXT):
            if isinstance(element, CT_Br) and element.type == "page":
                parts.append("")
            else:
                parts[-1] += str(element)
    return parts


def _docx_paragraph(paragraph: Paragraph, style: str, text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    heading = _DOCX_HEADING.fullmatch(style)
    if style == "Title" or heading:
        # Markdown stops at six levels; Word goes to nine.
        level = min(int(heading.group(1)), 6) if heading else 1
        return "#" * level + " " + " ".join(text.split())
    # python-docx has no public API for numbering; a list item is numbered directly or by its style.
    properties = paragraph._p.pPr
    if style.startswith("List") or (properties is not None and properties.numPr is not None):
        return "- " + text
    return text


def _docx_rows(table: Table) -> list[str]:
    rows = []
    for row in table.rows:
        # A cell spanning several grid columns comes back once per column, as the same object.
        cells = [" ".join(cell.text.split()) for cell in dict.fromkeys(row.cells)]
        if any(cells):
            rows.append(" | ".join(cells))
    return rows

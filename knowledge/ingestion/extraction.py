"""Turns an uploaded file's bytes into normalised text with Markdown-style headings, or says why it cannot."""

from __future__ import annotations

import codecs
import copy
import io
import logging
import os
import re
import textwrap
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import docx
from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from charset_normalizer import from_bytes
from django.conf import settings
from docx.oxml.text.run import CT_Br
from docx.table import Table
from docx.text.paragraph import Paragraph
from pypdf import DocumentInformation, PasswordType, PdfReader
from pypdf.errors import DependencyError

from knowledge.errors import KnowledgeError

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: dict[str, str] = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}

# Checked in this order: a UTF-32 LE mark starts with the UTF-16 LE one.
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Real text has next to no control characters; binary data decoded as text is full of them.
_MAX_CONTROL_SHARE = 0.05

_LINE_BREAK = re.compile(r"\r\n?|[\v\f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_MARKDOWN_H1 = re.compile(r" {0,3}# +(.*?)(?: +#+)? *")
_MARKDOWN_FENCE = re.compile(r" {0,3}(```|~~~)")

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

_DOCX_HEADING = re.compile(r"Heading ([1-9])")
# What python-docx reads as a run's text (Run.text), in document order; a page break among them reads as "".
_DOCX_RUN_TEXT = "w:br | w:cr | w:noBreakHyphen | w:ptab | w:t | w:tab"
_DOCX_PAGE_BREAK = "w:r/w:br[@w:type='page'] | w:hyperlink/w:r/w:br[@w:type='page']"
# Each read of a zip member inflates at most about this much: the cap is checked between reads.
_ZIP_READ_BYTES = 64 * 1024

# What each format is called when a file turns out to be something else.
_FORMAT_NAMES = {
    "txt": "text file",
    "md": "Markdown file",
    "html": "web page",
    "pdf": "PDF",
    "docx": "Word document",
}

# Titles that tools put in a PDF's metadata when the author gave none.
_TOOL_TITLE = re.compile(
    r"(?:\w+ )?enscript output|untitled\b.*|no title|title|document\d*|microsoft \w+ - .*|slide \d+|\d+",
    re.IGNORECASE,
)
# A file name or path as tools record it ("report.dvi", "C:\\Temp\\x.doc"); not "Node.js" or "TCP/IP".
_FILE_NAME = re.compile(
    r"\S+\.(?:pdf|e?ps|dvi|tex|te?xt|md|markdown|html?|docx?|odt|rtf|pptx?|xlsx?)|(?:[A-Za-z]:)?[\\/]\S*|.*\\.*",
    re.IGNORECASE,
)
# A running header of a printed page, such as enscript's "Nov 29, 26 19:22  notes.txt  Page 1/3".
_PAGE_HEADER = re.compile(r"\bpage \d+\b", re.IGNORECASE)
_MAX_HEADING_WORDS = 10
_MAX_HEADING_CHARS = 80


class ExtractionError(KnowledgeError):
    code = "extraction_failed"


@dataclass(frozen=True)
class ExtractedText:
    text: str
    title: str | None
    format: str
    #: Where each page begins in `text` (page 1 first); None for a source without pages.
    page_starts: list[int] | None = None


# What an extractor reads: the whole text, or a paged source's text page by page.
RawText = str | list[str]


@dataclass(frozen=True)
class _Limits:
    max_chars: int
    max_pdf_pages: int
    max_unzipped_bytes: int


def format_for(filename: str) -> str | None:
    return SUPPORTED_FORMATS.get(os.path.splitext(filename)[1].lower())


def extract_text(*, data: bytes, filename: str) -> ExtractedText:
    """The file's text and title; any file that cannot be read raises ExtractionError saying what to do."""
    format_name = format_for(filename)
    if format_name is None:
        raise ExtractionError(_unsupported_message(filename))
    if program := describe_program(data):
        raise ExtractionError(program_message(filename, format_name, program))
    try:
        raw, title = _EXTRACTORS[format_name](data, filename)
    except (ExtractionError, MemoryError):
        raise
    except Exception as error:
        # The parsers fail on damaged input with whatever exception their code happens to hit.
        raise ExtractionError(
            f"{filename} is not a valid {format_name.upper()} file (it may be damaged): "
            "open it in the program that made it, save it again and upload the new copy."
        ) from error
    text, page_starts = _joined_pages(raw) if isinstance(raw, list) else (_normalise(raw), None)
    if not text:
        raise ExtractionError(f"{filename} contains no text.")
    max_chars = _limits().max_chars
    if len(text) > max_chars:
        raise _too_much_text(filename, max_chars)
    return ExtractedText(text=text, title=title, format=format_name, page_starts=page_starts)


def _limits() -> _Limits:
    ingestion = getattr(settings, "INGESTION", {})
    return _Limits(
        max_chars=int(ingestion.get("MAX_EXTRACTED_CHARS", 5_000_000)),
        max_pdf_pages=int(ingestion.get("MAX_PDF_PAGES", 2000)),
        max_unzipped_bytes=int(ingestion.get("MAX_UNZIPPED_BYTES", 200 * 1024 * 1024)),
    )


def describe_program(data: bytes) -> str | None:
    """What kind of program the bytes are, if they are an executable rather than a document."""
    if data.startswith(b"\x7fELF"):
        return "a Linux or Unix program (ELF)"
    # "MZ" can start a text file; a DOS or Windows executable's header goes on with binary fields.
    if data.startswith(b"MZ") and b"\x00" in data[2:64]:
        offset = int.from_bytes(data[0x3C:0x40], "little") if len(data) >= 0x40 else 0
        if offset and data[offset : offset + 4] == b"PE\x00\x00":
            return "a Windows program (MZ/PE)"
        return "a Windows or DOS program (MZ)"
    return None


def program_message(filename: str, format_name: str, program: str) -> str:
    return (
        f"{filename} is {program}, not a {_FORMAT_NAMES[format_name]}: "
        "upload the document itself, not the program that opens it."
    )


def _unsupported_message(filename: str) -> str:
    # As the user wrote it: "Setup.EXE is a .EXE file" names the file they know.
    extension = os.path.splitext(filename)[1]
    names = [f".{name}" for name in dict.fromkeys(SUPPORTED_FORMATS.values())]
    readable = f"{', '.join(names[:-1])} and {names[-1]}"
    if not extension:
        return f"{filename} has no file extension; kbsite reads {readable}."
    return f"{filename} is a {extension} file; kbsite reads {readable}."


def _too_much_text(filename: str, max_chars: int) -> ExtractionError:
    return ExtractionError(f"{filename} yields more than {max_chars:,} characters of text; split it.")


def _normalise(text: str) -> str:
    text = _CONTROL.sub("", _LINE_BREAK.sub("\n", text))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _joined_pages(pages: list[str]) -> tuple[str, list[int]]:
    """The pages' text, normalised one by one and joined by blank lines, and where each page begins in it.

    An empty page begins where the next page's text does, so a character offset always falls on
    the last page beginning at or before it.
    """
    parts: list[str] = []
    starts: list[int] = []
    length = 0
    for page in pages:
        starts.append(length + 2 if parts else 0)
        if page_text := _normalise(page):
            length = starts[-1] + len(page_text)
            parts.append(page_text)
    return "\n\n".join(parts), starts


def _clean_title(title: str | None) -> str | None:
    if not title:
        return None
    return " ".join(_CONTROL.sub("", title).split()) or None


def _decode_text(data: bytes, filename: str) -> str:
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                break
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _guess_decoding(data)
    if text is None or len(_CONTROL.findall(text)) > len(text) * _MAX_CONTROL_SHARE:
        extension = os.path.splitext(filename)[1].lower()
        raise ExtractionError(
            f"{filename} does not look like text (is it another kind of file renamed {extension}?): "
            "save it as plain text, preferably UTF-8, and upload it again."
        )
    return text


def _guess_decoding(data: bytes) -> str | None:
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    # Short Western European text fits cp1250 and its neighbours exactly as well as cp1252, and
    # charset-normalizer then picks the first by name ("crème" comes out "crčme"); the far more
    # common cp1252 wins such ties.
    for match in matches:
        if (match.chaos, match.coherence) == (best.chaos, best.coherence) and (
            "cp1252" in match.could_be_from_charset
        ):
            return str(match)
    return str(best)


def _extract_txt(data: bytes, filename: str) -> tuple[RawText, str | None]:
    return _decode_text(data, filename), None


def _extract_md(data: bytes, filename: str) -> tuple[RawText, str | None]:
    text = _LINE_BREAK.sub("\n", _decode_text(data, filename))
    front_matter = _FRONT_MATTER.match(text)
    if front_matter is None:
        return text, _markdown_h1(text)
    body = text[front_matter.end() :]
    declared = _FRONT_MATTER_TITLE.search(front_matter.group(1))
    title = _clean_title(declared.group(1).strip("\"'")) if declared else None
    return body, title or _markdown_h1(body)


def _markdown_h1(text: str) -> str | None:
    """The first level-one ATX heading outside fenced code, where "# " more often starts a comment."""
    fence = None
    for line in text.split("\n"):
        opening = _MARKDOWN_FENCE.match(line)
        if opening and fence is None:
            fence = opening.group(1)
        elif opening and opening.group(1) == fence:
            fence = None
        elif fence is None and (heading := _MARKDOWN_H1.fullmatch(line)):
            if title := _clean_title(heading.group(1)):
                return title
    return None


def _extract_html(data: bytes, filename: str) -> tuple[RawText, str | None]:
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


def _extract_pdf(data: bytes, filename: str) -> tuple[RawText, str | None]:
    limits = _limits()
    encrypted = f"{filename} is encrypted: remove its password and upload it again."
    with _summarised_pdf_warnings(filename):
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise ExtractionError(encrypted)
            page_count = len(reader.pages)
            if page_count > limits.max_pdf_pages:
                raise ExtractionError(
                    f"{filename} has {page_count} pages; the most is {limits.max_pdf_pages}."
                )
            pages: list[str] = []
            length = 0
            for page in reader.pages:
                pages.append(page.extract_text())
                length += len(pages[-1]) + 2
                # Stop at the limit rather than extracting the rest of a huge PDF only to refuse it.
                if length > limits.max_chars:
                    raise _too_much_text(filename, limits.max_chars)
            metadata = reader.metadata
        except DependencyError as error:
            # Only AES-encrypted PDFs need a library kbsite does not ship (cryptography).
            raise ExtractionError(encrypted) from error
    text = "\n\n".join(pages)
    if not text.strip():
        raise ExtractionError(f"{filename} has no text layer (is it a scanned image?): run OCR on it first.")
    return pages, _pdf_title(metadata, text, filename)


def _pdf_title(metadata: DocumentInformation | None, text: str, filename: str) -> str | None:
    """The metadata title if an author set it, else the first heading; None leaves the file name.

    Tools fill the title field when the author did not: enscript writes "Enscript Output", others
    their own name or the file's.
    """
    if metadata is not None and isinstance(metadata.title, str):
        title = _clean_title(metadata.title)
        tools = {str(name).strip().casefold() for name in (metadata.producer, metadata.creator) if name}
        if title and title.casefold() not in tools and _looks_like_title(title, filename):
            return title
    return _first_heading(text, filename)


def _looks_like_title(title: str, filename: str) -> bool:
    return (
        any(character.isalpha() for character in title)
        and not _TOOL_TITLE.fullmatch(title)
        and not _FILE_NAME.fullmatch(title)
        and title.casefold() != filename.casefold()
    )


def _first_heading(text: str, filename: str) -> str | None:
    """The PDF's first line, past a running page header, if it is shaped like a heading.

    A PDF's text has no markup: a heading is a line of a few words that does not end a sentence.
    """
    lines = (" ".join(line.split()) for line in text.split("\n"))
    first = next((line for line in lines if line and not _PAGE_HEADER.search(line)), "")
    first = first.lstrip("#").strip()
    if (
        len(first) <= _MAX_HEADING_CHARS
        and len(first.split()) <= _MAX_HEADING_WORDS
        and not first.endswith((".", ",", ";", ":"))
        and _looks_like_title(first, filename)
    ):
        return first
    return None


class _PdfWarnings(logging.Handler):
    """What pypdf logs while one thread reads one PDF: robustness fixes, fonts it cannot fully decode."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread

    def emit(self, record: logging.LogRecord) -> None:
        # pypdf puts whole font dictionaries into its messages; their gist fits on one line.
        if isinstance(record.args, Mapping):
            values = {
                key: value
                if isinstance(value, int | float)
                else textwrap.shorten(str(value), 40, placeholder=" …")
                for key, value in record.args.items()
            }
            message = str(record.msg) % values
        else:
            message = record.getMessage()
        self.messages.append(" ".join(message.split()))


@contextmanager
def _summarised_pdf_warnings(filename: str) -> Iterator[None]:
    """Turn pypdf's warnings for one file into one log line naming it (LOGGING keeps pypdf's own quiet)."""
    collected = _PdfWarnings()
    pypdf_logger = logging.getLogger("pypdf")
    pypdf_logger.addHandler(collected)
    try:
        yield
    finally:
        pypdf_logger.removeHandler(collected)
        if collected.messages:
            logger.info(
                "%s: %d warning(s) from pypdf while reading it (its text may have wrong characters); the first: %s",
                filename,
                len(collected.messages),
                textwrap.shorten(collected.messages[0], 300, placeholder=" …"),
            )


def _extract_docx(data: bytes, filename: str) -> tuple[RawText, str | None]:
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


_EXTRACTORS: dict[str, Callable[[bytes, str], tuple[RawText, str | None]]] = {
    "txt": _extract_txt,
    "md": _extract_md,
    "html": _extract_html,
    "pdf": _extract_pdf,
    "docx": _extract_docx,
}

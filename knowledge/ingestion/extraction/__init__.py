"""Turns an uploaded file's bytes into normalised text with Markdown-style headings, or says why it cannot.

Text and Markdown are read here; web pages (`html`), PDFs (`pdf`) and Word documents (`word`) by
modules of their own, imported when a file of theirs is first read. A web process only hands files to
the sandbox's children, so it never loads pypdf, python-docx or BeautifulSoup (0.3 s of its start).
"""

from __future__ import annotations

import codecs
import importlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from knowledge.errors import KnowledgeError

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

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_MARKDOWN_H1 = re.compile(r" {0,3}# +(.*?)(?: +#+)? *")
_MARKDOWN_FENCE = re.compile(r" {0,3}(```|~~~)")

# What each format is called when a file turns out to be something else.
_FORMAT_NAMES = {
    "txt": "text file",
    "md": "Markdown file",
    "html": "web page",
    "pdf": "PDF",
    "docx": "Word document",
}


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
        raw, title = _reader(format_name)(data, filename)
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
    from charset_normalizer import from_bytes

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


# The formats read by a module of their own, by the module's name.
_READER_MODULES = {"html": "html", "pdf": "pdf", "docx": "word"}


def _reader(format_name: str) -> Callable[[bytes, str], tuple[RawText, str | None]]:
    if format_name == "txt":
        return _extract_txt
    if format_name == "md":
        return _extract_md
    return importlib.import_module(f"{__name__}.{_READER_MODULES[format_name]}").extract


def load_readers(format_names: Iterable[str | None] | None = None) -> None:
    """Import the readers of these formats (every one when None) now: before a sandbox child limits its
    CPU and memory, as when all of them were imported with this module."""
    for name in _READER_MODULES if format_names is None else format_names:
        if name in _READER_MODULES:
            _reader(name)

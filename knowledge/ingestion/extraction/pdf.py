"""PDFs: pypdf's text page by page within the limits, the title from the metadata or the first heading."""

from __future__ import annotations

import io
import logging
import re
import textwrap
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pypdf import DocumentInformation, PasswordType, PdfReader
from pypdf.errors import DependencyError

from knowledge.ingestion.extraction import ExtractionError, RawText, _clean_title, _limits, _too_much_text

# The package's logger: one line per file names it, wherever the reader lives.
logger = logging.getLogger(__package__)

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


def extract(data: bytes, filename: str) -> tuple[RawText, str | None]:
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

"""Text extraction from uploaded files, on small real files built by the tests."""

from __future__ import annotations

import importlib.util
import io
import logging
import random
import re
import tracemalloc
import zipfile

import pytest
from docx.enum.text import WD_BREAK
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from knowledge.errors import KnowledgeError
from knowledge.ingestion.extraction import (
    SUPPORTED_FORMATS,
    ExtractedText,
    ExtractionError,
    extract_text,
    format_for,
)
from tests.files import blank_pdf, encrypt_pdf, make_docx, make_pdf
from tests.hostile import docx_with_a_lying_index

pytestmark = pytest.mark.unit


def extraction_error(data: bytes, filename: str) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        extract_text(data=data, filename=filename)
    return caught.value


def test_formats_are_known_by_extension_whatever_its_case() -> None:
    assert format_for("Notes.TXT") == "txt"
    assert format_for("guide.Markdown") == "md"
    assert format_for("page.htm") == "html"
    assert format_for("report.final.PDF") == "pdf"
    assert format_for("letter.docx") == "docx"
    assert format_for("letter.doc") is None
    assert format_for("README") is None
    assert set(SUPPORTED_FORMATS.values()) == {"txt", "md", "html", "pdf", "docx"}


def test_extraction_errors_are_knowledge_errors_with_a_stable_code() -> None:
    error = extraction_error(b"", "empty.txt")

    assert isinstance(error, KnowledgeError)
    assert error.code == "extraction_failed"
    assert error.message == "empty.txt contains no text."


@pytest.mark.parametrize(
    "data",
    [
        "Crème brûlée — naïve café\n".encode(),
        "Crème brûlée — naïve café\n".encode("utf-8-sig"),
        "Crème brûlée — naïve café\n".encode("utf-16"),
    ],
    ids=["utf-8", "utf-8 with BOM", "utf-16 with BOM"],
)
def test_unicode_text_files_decode_by_their_byte_order_mark_or_as_utf8(data: bytes) -> None:
    result = extract_text(data=data, filename="dessert.txt")

    assert result == ExtractedText(text="Crème brûlée — naïve café", title=None, format="txt")


def test_latin1_text_files_decode_by_a_guess() -> None:
    data = "Un café crème, s'il vous plaît.\nÀ bientôt près de l'église.".encode("latin-1")

    result = extract_text(data=data, filename="commande.txt")

    assert result.text == "Un café crème, s'il vous plaît.\nÀ bientôt près de l'église."


def test_a_short_latin1_text_is_not_read_as_central_european() -> None:
    assert extract_text(data="café crème".encode("latin-1"), filename="menu.txt").text == "café crème"


@pytest.mark.parametrize(
    "data",
    [bytes(range(256)) * 50, random.Random(7).randbytes(4096), b"\x00" * 1000 + b"hello"],
    ids=["every byte", "random bytes", "mostly NUL"],
)
def test_binary_data_named_txt_is_refused(data: bytes) -> None:
    error = extraction_error(data, "photo.txt")

    assert error.message.startswith("photo.txt does not look like text")


def test_text_is_normalised() -> None:
    data = (
        b"\xef\xbb\xbf  First line   \r\nsecond\x00 line\x07\rthird\x0cfourth"
        b"\r\n\r\n\r\n\r\n\tLast  \r\n\r\n"
    )

    result = extract_text(data=data, filename="messy.txt")

    assert result.text == "First line\nsecond line\nthird\nfourth\n\n\tLast"


def test_markdown_front_matter_gives_the_title_and_is_dropped() -> None:
    data = b'---\r\ntitle: "Bee keeping"\r\ntags: [bees]\r\n---\r\n# Hives\r\n\r\nBees live in hives.\r\n'

    result = extract_text(data=data, filename="bees.md")

    assert result == ExtractedText(text="# Hives\n\nBees live in hives.", title="Bee keeping", format="md")


def test_markdown_without_front_matter_takes_the_first_level_one_heading_as_title() -> None:
    text = "Intro line.\n\n```python\n# not a heading\n```\n\n## Section\n\n# Bee keeping #\n\nText."

    result = extract_text(data=text.encode(), filename="bees.markdown")

    assert result.text == text
    assert result.title == "Bee keeping"


def test_markdown_without_any_heading_has_no_title() -> None:
    assert extract_text(data=b"Just a line.", filename="note.md").title is None


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>  Bees
  and hives </title>
<style>body { color: red }</style><script>var secret = "tracking";</script></head>
<body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Keeping <em>bees</em></h1>
<p>Bees make <b>honey</b>, and
   wax.<br>They dance.</p>
<!-- an editor's comment -->
<div>A hive holds one queen.</div>
<h2>Equipment</h2>
<ul><li>Smoker</li><li><p>Veil</p></li></ul>
<table><tr><th>Item</th><th>Price</th></tr><tr><td>Smoker</td><td>30 €</td></tr></table>
<pre>def hive():
    return "bees"</pre>
<noscript>Enable JavaScript</noscript>
<footer>© 2024 Bee Corp</footer>
</body></html>"""


def test_html_headings_become_markdown_headings_and_blocks_become_paragraphs() -> None:
    result = extract_text(data=HTML_PAGE.encode(), filename="bees.html")

    assert result.text == (
        "# Keeping bees\n\n"
        "Bees make honey, and wax.\nThey dance.\n\n"
        "A hive holds one queen.\n\n"
        "## Equipment\n\n"
        "- Smoker\n\n"
        "- Veil\n\n"
        "Item | Price\n\n"
        "Smoker | 30 €\n\n"
        'def hive():\n    return "bees"'
    )
    assert result.title == "Bees and hives"
    assert result.format == "html"


def test_html_scripts_styles_navigation_and_comments_are_dropped() -> None:
    text = extract_text(data=HTML_PAGE.encode(), filename="bees.htm").text

    for gone in ("tracking", "color", "Home", "editor's comment", "JavaScript", "Bee Corp"):
        assert gone not in text


def test_html_without_title_takes_the_first_h1() -> None:
    result = extract_text(data=b"<p>Intro</p><h1>Hives</h1><h1>Other</h1>", filename="page.html")

    assert result.title == "Hives"
    assert result.text == "Intro\n\n# Hives\n\n# Other"


def test_html_text_outside_any_block_is_kept() -> None:
    page = "<html><body><p>First</p>Loose <span>te</span><span>xt</span></body></html>"

    assert extract_text(data=page.encode("utf-16"), filename="loose.html").text == "First\n\nLoose text"


def test_html_is_decoded_by_its_declared_charset() -> None:
    page = (
        '<html><head><meta charset="windows-1252"><title>Café</title></head>'
        "<body><p>Crème brûlée</p></body></html>"
    )

    result = extract_text(data=page.encode("cp1252"), filename="menu.html")

    assert (result.title, result.text) == ("Café", "Crème brûlée")


def test_pdf_text_comes_out_page_by_page() -> None:
    pdf = make_pdf(["Bees make honey.\nThey live in hives.", "A hive holds one queen."])

    result = extract_text(data=pdf, filename="bees.pdf")

    assert result == ExtractedText(
        text="Bees make honey.\nThey live in hives.\n\nA hive holds one queen.",
        title=None,
        format="pdf",
        page_starts=[0, 38],
    )


def test_pdf_metadata_title_is_the_title() -> None:
    result = extract_text(data=make_pdf(["Text."], title="  A Guide to (Bees) "), filename="guide.pdf")

    assert result.title == "A Guide to (Bees)"


def test_pdf_with_a_user_password_is_refused_as_encrypted() -> None:
    pdf = encrypt_pdf(make_pdf(["Secret plans."]), user_password="secret", owner_password="owner")

    error = extraction_error(pdf, "report.pdf")

    assert error.message == "report.pdf is encrypted: remove its password and upload it again."


def test_pdf_encrypted_with_an_empty_user_password_is_read() -> None:
    pdf = encrypt_pdf(make_pdf(["Open to all."], title="Public"), user_password="", owner_password="owner")

    result = extract_text(data=pdf, filename="public.pdf")

    assert (result.text, result.title) == ("Open to all.", "Public")


def test_pdf_without_a_text_layer_asks_for_ocr() -> None:
    error = extraction_error(blank_pdf(2), "scan.pdf")

    assert error.message == "scan.pdf has no text layer (is it a scanned image?): run OCR on it first."


@pytest.mark.parametrize(
    "data",
    [b"this is not a pdf at all", make_pdf(["Cut short."])[:150], b"%PDF-1.4\n" + bytes(range(256)) * 4],
    ids=["no header", "truncated", "junk after the header"],
)
def test_corrupt_pdf_raises_an_extraction_error_chaining_the_library_error(data: bytes) -> None:
    error = extraction_error(data, "broken.pdf")

    assert error.message.startswith("broken.pdf is not a valid PDF file (it may be damaged):")
    assert error.__cause__ is not None and not isinstance(error.__cause__, ExtractionError)


def test_pdf_with_more_pages_than_the_limit_is_refused(settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_PDF_PAGES": 2}

    error = extraction_error(make_pdf(["One.", "Two.", "Three."]), "huge.pdf")

    assert error.message == "huge.pdf has 3 pages; the most is 2."


def test_pdf_extraction_stops_once_the_text_passes_the_limit(settings, monkeypatch) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_EXTRACTED_CHARS": 1000}
    pdf = make_pdf(["x" * 600, "y" * 600, "z" * 600])
    extract_page = PageObject.extract_text
    extracted: list[str] = []

    def counting_extract(page: PageObject, *args, **kwargs) -> str:
        extracted.append(extract_page(page, *args, **kwargs))
        return extracted[-1]

    monkeypatch.setattr(PageObject, "extract_text", counting_extract)

    error = extraction_error(pdf, "long.pdf")

    assert error.message == "long.pdf yields more than 1,000 characters of text; split it."
    assert len(extracted) == 2


def build_report(document) -> None:
    document.core_properties.title = "Annual report"
    document.add_heading("Report 2024", level=0)
    document.add_heading("Summary", level=1)
    document.add_paragraph("Sales grew.")
    document.add_heading("Details", level=2)
    document.add_paragraph("Honey", style="List Bullet")
    document.add_paragraph("Wax", style="List Number")
    table = document.add_table(rows=2, cols=3)
    for row, values in zip(table.rows, [("Product", "Q1", "Q2"), ("Honey", "10", "12")]):
        for cell, value in zip(row.cells, values):
            cell.text = value
    document.add_paragraph("The end.")


def test_docx_headings_become_markdown_headings_with_tables_and_lists() -> None:
    result = extract_text(data=make_docx(build_report), filename="report.docx")

    assert result == ExtractedText(
        text=(
            "# Report 2024\n\n# Summary\n\nSales grew.\n\n## Details\n\n- Honey\n\n- Wax\n\n"
            "Product | Q1 | Q2\n\nHoney | 10 | 12\n\nThe end."
        ),
        title="Annual report",
        format="docx",
    )


def test_docx_merged_cells_appear_once_per_row() -> None:
    def build(document) -> None:
        table = document.add_table(rows=1, cols=3)
        merged = table.cell(0, 0).merge(table.cell(0, 1))
        merged.text = "Spanning"
        table.cell(0, 2).text = "Alone"

    assert extract_text(data=make_docx(build), filename="merged.docx").text == "Spanning | Alone"


def test_docx_without_a_core_title_takes_the_title_paragraph() -> None:
    def build(document) -> None:
        document.add_heading("Chapter one", level=1)
        document.add_heading("The real title", level=0)

    assert extract_text(data=make_docx(build), filename="book.docx").title == "The real title"


def test_docx_without_core_or_title_paragraph_takes_the_first_heading_1() -> None:
    def build(document) -> None:
        document.add_paragraph("Preface.")
        document.add_heading("Chapter one", level=1)

    assert extract_text(data=make_docx(build), filename="book.docx").title == "Chapter one"


def test_pdf_page_starts_say_where_each_page_begins_and_a_blank_page_shares_the_next_ones() -> None:
    result = extract_text(data=make_pdf(["Page one.", "", "Page three.\nStill three."]), filename="gap.pdf")

    assert result.text == "Page one.\n\nPage three.\nStill three."
    assert result.page_starts == [0, 11, 11]


def test_docx_explicit_page_breaks_start_pages_and_cut_a_paragraph_in_two() -> None:
    def build(document) -> None:
        document.add_heading("Hives", level=1)
        document.add_paragraph("Bees live in hives.")
        document.add_page_break()
        document.add_paragraph("Tides rise twice a day.")
        broken = document.add_paragraph("Before the break")
        broken.add_run().add_break(WD_BREAK.PAGE)
        broken.add_run("after the break.")

    result = extract_text(data=make_docx(build), filename="pages.docx")

    assert result.text == (
        "# Hives\n\nBees live in hives.\n\nTides rise twice a day.\n\nBefore the break\n\nafter the break."
    )
    assert [result.text[start:].split("\n")[0] for start in result.page_starts] == [
        "# Hives",
        "Tides rise twice a day.",
        "after the break.",
    ]


def test_docx_page_break_before_a_paragraph_starts_a_page_set_directly_or_by_its_style() -> None:
    def build(document) -> None:
        document.styles["Heading 2"].paragraph_format.page_break_before = True
        document.add_paragraph("Introduction.")
        document.add_heading("Chapter one", level=2)
        document.add_paragraph("Chapter one text.")
        document.add_paragraph("Appendix.").paragraph_format.page_break_before = True

    result = extract_text(data=make_docx(build), filename="book.docx")

    assert [result.text[start:].split("\n")[0] for start in result.page_starts] == [
        "Introduction.",
        "## Chapter one",
        "Appendix.",
    ]


def test_docx_break_before_the_first_paragraph_or_right_after_a_page_break_adds_no_blank_page() -> None:
    def build(document) -> None:
        document.add_paragraph("Title page.").paragraph_format.page_break_before = True
        document.add_page_break()
        document.add_paragraph("Body.").paragraph_format.page_break_before = True

    assert extract_text(data=make_docx(build), filename="book.docx").page_starts == [0, 13]


def test_docx_without_explicit_page_breaks_has_no_pages() -> None:
    assert extract_text(data=make_docx(build_report), filename="report.docx").page_starts is None


def test_text_formats_have_no_pages() -> None:
    # Not even a form feed, which plain text may use between printed pages but seldom does with care.
    text = b"The first line of the notes, long enough to read as text.\fThe second line of the notes."
    assert extract_text(data=text, filename="notes.txt").page_starts is None


def test_docx_expanding_past_the_limit_is_refused(settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_UNZIPPED_BYTES": 1024 * 1024}
    data = io.BytesIO(make_docx(lambda document: document.add_paragraph("Small.")))
    with zipfile.ZipFile(data, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/padding.bin", bytes(2 * 1024 * 1024))
    assert len(data.getvalue()) < 100_000

    error = extraction_error(data.getvalue(), "big.docx")

    assert error.message == "big.docx expands to more than 1 MB when unpacked (KBSITE_MAX_UNZIPPED_MB): split it into smaller files."


def test_docx_whose_zip_index_understates_a_part_is_refused_after_inflating_little_more_than_declared() -> None:
    data = docx_with_a_lying_index(padding=50 * 1024 * 1024, declared_size=1000)
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        error = extraction_error(data, "report.docx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert error.message.startswith(
        "report.docx is not a valid Word document: its part word/document.xml unpacks to more than the "
        "1,000 bytes its zip index declares"
    )
    assert peak < 5 * 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [random.Random(3).randbytes(2048), b"PK\x03\x04 not really a zip"],
    ids=["random bytes", "zip signature only"],
)
def test_corrupt_docx_raises_an_extraction_error(data: bytes) -> None:
    error = extraction_error(data, "broken.docx")

    assert error.message.startswith("broken.docx is not a valid DOCX file (it may be damaged):")
    assert error.__cause__ is not None


def test_a_zip_that_is_not_a_word_document_is_refused() -> None:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("hello.txt", "hello")

    error = extraction_error(data.getvalue(), "archive.docx")

    assert error.message.startswith("archive.docx is not a valid DOCX file")


def test_unsupported_extensions_are_refused_with_the_supported_ones() -> None:
    error = extraction_error(b"{\\rtf1 Hello}", "notes.rtf")

    assert error.message == "notes.rtf is a .rtf file; kbsite reads .txt, .md, .html, .pdf and .docx."


def test_files_without_an_extension_are_refused() -> None:
    error = extraction_error(b"Hello", "README")

    assert error.message == "README has no file extension; kbsite reads .txt, .md, .html, .pdf and .docx."


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"", "empty.txt"),
        (b" \r\n\t \n", "blank.txt"),
        (b"---\ntitle: Only front matter\n---\n", "meta.md"),
        (b"<html><head><title>Empty</title></head><body><script>x()</script></body></html>", "empty.html"),
        (make_docx(lambda document: document.add_paragraph("   ")), "empty.docx"),
    ],
)
def test_files_without_text_are_refused(data: bytes, filename: str) -> None:
    assert extraction_error(data, filename).message == f"{filename} contains no text."


def test_text_longer_than_the_limit_is_refused(settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_EXTRACTED_CHARS": 1000}

    assert extract_text(data=b"a" * 1000, filename="fits.txt").text == "a" * 1000
    error = extraction_error(b"a" * 1001, "long.txt")

    assert error.message == "long.txt yields more than 1,000 characters of text; split it."


def pdf_with_metadata(first_page: str, **metadata: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([first_page]))))
    writer.add_metadata({f"/{key}": value for key, value in metadata.items()})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_title_from_a_tool_not_an_author_gives_way_to_the_first_heading() -> None:
    # What enscript and ps2pdf make of a text file: the title field holds the tool's name.
    pdf = pdf_with_metadata(
        "Ingestion settings\nKBSITE_INGEST_POLL_SECONDS sets how often the worker looks for new work.",
        Title="Enscript Output",
        Producer="GPL Ghostscript 10.0",
        Creator="GNU Enscript 1.6.6",
    )

    assert extract_text(data=pdf, filename="settings.pdf").title == "Ingestion settings"


@pytest.mark.parametrize(
    "declared",
    ["Enscript Output", "GPL Ghostscript 10.0", "untitled", "Untitled-3", "", "settings.pdf", "notes.dvi",
     "Microsoft Word - settings.docx", "C:\\Temp\\settings.doc", "/tmp/settings.ps", "1"],
)
def test_pdf_title_that_is_a_tool_a_file_name_or_empty_is_not_taken(declared: str) -> None:
    pdf = pdf_with_metadata("Ingestion settings\nThe worker polls.", Title=declared, Producer="GPL Ghostscript 10.0")

    assert extract_text(data=pdf, filename="settings.pdf").title == "Ingestion settings"


@pytest.mark.parametrize("declared", ["Node.js in production", "TCP/IP tuning", "Input and output"])
def test_pdf_title_that_looks_like_one_is_kept(declared: str) -> None:
    pdf = pdf_with_metadata("Chapter one\nText.", Title=declared, Producer="GPL Ghostscript 10.0")

    assert extract_text(data=pdf, filename="book.pdf").title == declared


def test_pdf_heading_is_found_past_a_running_page_header() -> None:
    pdf = pdf_with_metadata(
        "Nov 29, 26 19:22 settings.txt Page 1/3\nIngestion settings\nThe worker polls.", Title="Enscript Output"
    )

    assert extract_text(data=pdf, filename="settings.pdf").title == "Ingestion settings"


def test_pdf_without_a_real_title_or_heading_leaves_the_file_name() -> None:
    pdf = pdf_with_metadata(
        "The worker looks for new documents every few seconds and indexes them one by one.",
        Title="Enscript Output",
    )

    assert extract_text(data=pdf, filename="settings.pdf").title is None


def pdf_with_a_cff_font() -> bytes:
    """A PDF whose font pypdf can only fully decode with fontTools, which kbsite does not install."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Bees make honey."]))))
    font = writer.pages[0]["/Resources"]["/Font"]["/F1"].get_object()
    program = DecodedStreamObject()
    program.set_data(b"not really a font program")
    program[NameObject("/Subtype")] = NameObject("/Type1C")
    descriptor = DictionaryObject({NameObject("/FontFile3"): writer._add_object(program)})
    font[NameObject("/FontDescriptor")] = writer._add_object(descriptor)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def pdf_with_a_wrong_startxref() -> bytes:
    """A PDF pypdf reads after warning twice (a wrong xref pointer), whatever packages are installed."""
    data = make_pdf(["Bees make honey."])
    pointer = re.search(rb"startxref\s+(\d+)", data)
    return data[: pointer.start(1)] + str(int(pointer.group(1)) + 7).encode() + data[pointer.end(1) :]


@pytest.mark.parametrize(
    "pdf",
    [pdf_with_a_wrong_startxref, pdf_with_a_cff_font],
    ids=["wrong-startxref", "cff-font"],
)
def test_pypdf_warnings_become_one_log_line_naming_the_file(pdf) -> None:
    # Whatever reaches the root logger is what an operator's handlers see, with the project's LOGGING.
    root, recorder = logging.getLogger(), Recorder()
    root.addHandler(recorder)
    try:
        result = extract_text(data=pdf(), filename="bees.pdf")
    finally:
        root.removeHandler(recorder)

    assert result.text == "Bees make honey."
    if pdf is pdf_with_a_cff_font and importlib.util.find_spec("fontTools") is not None:
        # With fontTools installed (matplotlib brings it in the test extras) pypdf reads the font quietly.
        assert recorder.records == []
        return
    [record] = recorder.records
    assert (record.name, record.levelno) == ("knowledge.ingestion.extraction", logging.INFO)
    line = record.getMessage()
    assert line.startswith("bees.pdf: ") and " warning(s) from pypdf" in line
    assert "\n" not in line and len(line) < 400


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x7fELF\x02\x01\x01\x00" + bytes(200), "bees.pdf is a Linux or Unix program (ELF), not a PDF"),
        (
            b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(200),
            "bees.pdf is a Windows program (MZ/PE), not a PDF",
        ),
        (b"MZ\x90\x00\x03\x00\x00\x00" + bytes(200), "bees.pdf is a Windows or DOS program (MZ), not a PDF"),
    ],
    ids=["ELF", "PE", "DOS"],
)
def test_a_program_renamed_to_a_document_says_what_it_is(data: bytes, what: str) -> None:
    error = extraction_error(data, "bees.pdf")

    assert error.message.startswith(what + ":")
    assert "save it again" not in error.message


def test_text_that_happens_to_start_with_mz_is_text() -> None:
    assert extract_text(data=b"MZ stands for Mittlere Zeitung.", filename="notes.txt").text.startswith("MZ")


def test_unsupported_file_is_named_as_given() -> None:
    error = extraction_error(b"MZ\x90\x00" + bytes(60), "Setup.EXE")

    assert error.message.startswith("Setup.EXE is a .EXE file; kbsite reads ")

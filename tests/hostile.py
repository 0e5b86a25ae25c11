"""Hostile files built by the tests: small on disk, built to cost a reader memory or time."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from tests.files import make_docx, pdf_file

_LOCAL_HEADER = b"PK\x03\x04"
_CENTRAL_HEADER = b"PK\x01\x02"


def docx_with_a_lying_index(*, padding: int, declared_size: int = 1000) -> bytes:
    """A real Word document whose word/document.xml holds `padding` more spaces than the zip index's `declared_size`.

    Spaces deflate about a thousandfold, so gigabytes of them fit in a file of a few megabytes.
    """
    original = zipfile.ZipFile(io.BytesIO(make_docx(lambda document: document.add_paragraph("Hello."))))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in original.infolist():
            content = original.read(member)
            with archive.open(member.filename, "w") as stream:
                stream.write(content)
                if member.filename == "word/document.xml":
                    block = b" " * (1024 * 1024)
                    for start in range(0, padding, len(block)):
                        stream.write(block[: padding - start])
    data = bytearray(out.getvalue())
    member = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("word/document.xml")
    # The uncompressed size sits 22 bytes into the local header, 24 into the central directory entry.
    assert data[member.header_offset : member.header_offset + 4] == _LOCAL_HEADER
    struct.pack_into("<I", data, member.header_offset + 22, declared_size)
    central = data.index(_CENTRAL_HEADER)
    while data[central + 46 : central + 46 + len(member.filename)] != member.filename.encode():
        central = data.index(_CENTRAL_HEADER, central + 1)
    struct.pack_into("<I", data, central + 24, declared_size)
    return bytes(data)


def pdf_of_pages_sharing_one_slow_stream(*, pages: int, comment_bytes: int) -> bytes:
    """A PDF of `pages` pages that all draw one content stream: a comment of `comment_bytes` spaces and an empty text.

    pypdf reads a comment one byte at a time, for every page again; the stream has a text operator,
    so it is parsed, but yields no character, so no limit on text ever fires.
    """
    content = b"%" + b" " * comment_bytes + b"\nBT /F1 12 Tf () Tj ET\n"
    packed = zlib.compress(content, 9)
    kids = b" ".join(b"%d 0 R" % (5 + index) for index in range(pages))
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        3: b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for index in range(pages):
        objects[5 + index] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents 3 0 R >>"
        )
    return pdf_file(objects)

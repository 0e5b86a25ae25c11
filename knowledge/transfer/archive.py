"""The knowledge base archive: a zip of a manifest, JSON lines and a NumPy array, each member checked on use.

Members (each listed in the manifest with its size and sha256):

- `manifest.json`: format and version, the kbsite version that wrote it, the knowledge base's settings
  (name, slug, description, owner, embedding model, vector size, keyword and chunk settings) and counts.
- `documents.jsonl`: one document a line, with its stored text and status.
- `memberships.json`: who may use the knowledge base, by user name.
- `chunks.jsonl`: the chunks of the ready documents, grouped by document in chunk order, with their payload.
- `dense.npy`: float32, one row per line of `chunks.jsonl`: the dense vectors, so nothing is embedded again.
- `sources/<document id>`: files uploaded but not yet read, for documents still waiting for that.

Keyword (BM25) vectors are not stored: they are computed again from each chunk's text with the archive's
keyword settings when it is imported, which is cheap and deterministic, and matches the encoder that
will encode the queries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models

from knowledge.errors import DamagedArchive, InvalidInput
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Role
from knowledge.services.document_metadata import clean_metadata, clean_tags
from knowledge.services.metadata_fields import clean_fields, infer_fields, misfits
from knowledge.services.text_fields import unstorable_character
from search.filters import METADATA_FIELD, TAGS_FIELD
from search.keywords import KeywordSettings
from search.pages import page_range
from search.services.chunks import ChunkRecord

FORMAT = "kbsite-knowledge-base"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCUMENTS = "documents.jsonl"
MEMBERSHIPS = "memberships.json"
CHUNKS = "chunks.jsonl"
DENSE = "dense.npy"
SOURCES = "sources/"
DENSE_DTYPE = np.dtype("<f4")
_READ_BLOCK = 1 << 20

# The most an archive member may unpack to, checked against the zip's index before a byte is read (and
# zipfile stops reading a member at the size its index gives): an archive of a few kilobytes can hold
# members of gigabytes. Members read line by line are bounded by line, the others whole.
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBERSHIPS_BYTES = 16 << 20
#: A chunk's line: its text (at most the embedder's 256 tokens) and offsets, with room for JSON escapes.
MAX_CHUNK_LINE_BYTES = 1 << 20
MAX_VECTOR_SIZE = 65_536
_NPY_HEADER_BYTES = 1 << 16
# JSON may write a character as a 6-byte \uXXXX escape; labels and fields beside the text are small.
_ESCAPED_BYTES_PER_CHAR = 6
_DOCUMENT_LINE_EXTRA_BYTES = 1 << 20

# What each document line must hold, and of which JSON types (None allowed where listed).
DOCUMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "title": (str,),
    "source_name": (str,),
    "source_format": (str,),
    "source_size": (int,),
    "content_hash": (str,),
    "text": (str,),
    "status": (str,),
    "tags": (list,),
    "metadata": (dict,),
    "page_starts": (list, type(None)),
    "archived_at": (str, type(None)),
    "created_at": (str,),
    "chunk_count": (int,),
}


class _HashingWriter(io.RawIOBase):
    """A member being written, counting and hashing what passes through."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ArchiveWriter:
    """Writes an archive next to its destination and moves it there only once it is whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._zip = zipfile.ZipFile(self.partial, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self.members: dict[str, dict[str, Any]] = {}

    @contextmanager
    def member(self, name: str) -> Iterator[_HashingWriter]:
        """A member to write into, piece by piece; its size and checksum go into the manifest."""
        with self._zip.open(name, "w", force_zip64=True) as stream:
            writer = _HashingWriter(stream)
            yield writer
        self.members[name] = {"size": writer.size, "sha256": writer.sha256.hexdigest()}

    def write_member(self, name: str, data: bytes) -> None:
        with self.member(name) as writer:
            writer.write(data)

    def write_dense(self, raw_rows: IO[bytes], *, rows: int, vector_size: int) -> None:
        """`dense.npy` from a file of float32 rows written as they were read (their count known only now)."""

        with self.member(DENSE) as writer:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": DENSE_DTYPE.str, "fortran_order": False, "shape": (rows, vector_size)}
            )
            writer.write(header.getvalue())
            raw_rows.seek(0)
            while block := raw_rows.read(_READ_BLOCK):
                writer.write(block)

    def finish(self, manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "members": self.members}
        self._zip.writestr(MANIFEST, _json_bytes(manifest, indent=2))
        self._zip.close()
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        self._zip.close()
        self.partial.unlink(missing_ok=True)


def json_line(value: Any) -> bytes:
    return _json_bytes(value, separators=(",", ":")) + b"\n"


def _json_bytes(value: Any, **options: Any) -> bytes:
    """JSON in UTF-8; text UTF-8 cannot encode (a lone surrogate a JSON field kept) goes as its escape.

    Such text reached the database before it was refused at the door: it is exported as `\\udxxx`,
    which import_kb then refuses with a message naming the document, rather than export_kb failing.
    """
    try:
        return json.dumps(value, ensure_ascii=False, **options).encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **options).encode()


@dataclass(frozen=True)
class Manifest:
    kbsite_version: str
    knowledge_base: dict[str, Any]
    embedding_model: str
    vector_size: int
    keyword_settings: dict[str, Any] | None
    chunk_size: int
    chunk_overlap: int
    documents: int
    chunks: int
    #: Each other member's size and sha256.
    members: dict[str, Any]
    #: The declared metadata fields; None in an archive from before they were declared.
    metadata_fields: dict[str, str] | None = None


class ArchiveReader:
    """An archive to import: `open` checks each member's checksum and shape, or raises DamagedArchive."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, manifest: Manifest) -> None:
        self.path = path
        self._zip = archive
        self.manifest = manifest
        self.documents: list[dict[str, Any]] = []
        self._documents_by_id: dict[UUID, dict[str, Any]] = {}
        self.memberships: list[dict[str, str]] = []
        self.source_ids: set[UUID] = set()
        #: The fields the imported KB declares: the manifest's, and those its documents carry besides.
        self.metadata_fields: dict[str, str] = {}

    @classmethod
    def open(cls, path: Path) -> ArchiveReader:
        try:
            archive = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise InvalidInput(
                f"There is no file {path}: give the path of an archive export_kb wrote."
            ) from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise DamagedArchive(
                f"{path} is not a kbsite archive, or it is truncated ({exc}): nothing was imported. "
                "Export the knowledge base again, or copy the file again."
            ) from None
        try:
            reader = cls(path, archive, cls._read_manifest(path, archive))
            reader._verify()
        except BaseException:
            archive.close()
            raise
        return reader

    def close(self) -> None:
        self._zip.close()

    # Reading, once verified.

    def chunk_batches(self, size: int) -> Iterator[list[ChunkRecord]]:
        """The chunks in archive order with their dense vectors, `size` at a time."""
        with self._zip.open(CHUNKS) as lines, self._zip.open(DENSE) as dense:
            _, vector_size = self._dense_shape(dense)
            row_bytes = vector_size * DENSE_DTYPE.itemsize
            while True:
                batch_lines = [line for line in (lines.readline() for _ in range(size)) if line]
                if not batch_lines:
                    return
                rows = np.frombuffer(dense.read(row_bytes * len(batch_lines)), dtype=DENSE_DTYPE)
                rows = rows.reshape(len(batch_lines), vector_size)
                batch = []
                for line, row in zip(batch_lines, rows):
                    chunk = json.loads(line)
                    document_id = UUID(chunk["document_id"])
                    batch.append(
                        ChunkRecord(
                            document_id=document_id,
                            chunk_index=chunk["chunk_index"],
                            payload=self._chunk_payload(self._documents_by_id[document_id], chunk["payload"]),
                            dense=row.tolist(),
                        )
                    )
                yield batch

    def source(self, document_id: UUID) -> bytes | None:
        return self._zip.read(f"{SOURCES}{document_id}") if document_id in self.source_ids else None

    # Verification: everything is read and checked before the import touches anything.

    @staticmethod
    def _read_manifest(path: Path, archive: zipfile.ZipFile) -> Manifest:
        try:
            size = archive.getinfo(MANIFEST).file_size
            if size > MAX_MANIFEST_BYTES:
                raise _damaged(path, MANIFEST, f"it unpacks to {size} bytes, more than a manifest ever holds")
            manifest = json.loads(archive.read(MANIFEST))
        except KeyError:
            raise DamagedArchive(
                f"{path} has no {MANIFEST}: it is not a kbsite knowledge base archive. Nothing was imported."
            ) from None
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise _damaged(path, MANIFEST, str(exc)) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DamagedArchive(
                f"{path} is not a kbsite knowledge base archive ({MANIFEST} names no {FORMAT}). "
                "Nothing was imported."
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DamagedArchive(
                f"{path} has archive format {version!r}, newer than this kbsite reads ({FORMAT_VERSION}): "
                "nothing was imported. Import it with the kbsite version that wrote it, or a later one."
            )
        try:
            kb, counts, chunking = manifest["knowledge_base"], manifest["counts"], manifest["chunking"]
            keyword_settings = manifest["keyword_settings"]
            if keyword_settings is not None:
                keyword_settings = KeywordSettings.from_dict(keyword_settings).as_dict()
            result = Manifest(
                kbsite_version=str(manifest["kbsite_version"]),
                knowledge_base={key: kb[key] for key in ("id", "name", "slug", "description", "owner")},
                embedding_model=_typed(manifest["embedding_model"], str),
                vector_size=_typed(manifest["vector_size"], int),
                keyword_settings=keyword_settings,
                chunk_size=_typed(chunking["size"], int),
                chunk_overlap=_typed(chunking["overlap"], int),
                documents=_typed(counts["documents"], int),
                chunks=_typed(counts["chunks"], int),
                members=_typed(manifest["members"], dict),
                metadata_fields=(
                    clean_fields(manifest["metadata_fields"])
                    if manifest.get("metadata_fields") is not None
                    else None
                ),
            )
            UUID(_typed(kb["id"], str))
            for key in ("name", "slug", "description"):
                _check_text(KnowledgeBase, key, _typed(kb[key], str))
            if _typed(kb["owner"], str, type(None)) is not None:
                _check_text(get_user_model(), "username", kb["owner"])
            if not 1 <= result.vector_size <= MAX_VECTOR_SIZE:
                raise ValueError(f"vector_size {result.vector_size} is not between 1 and {MAX_VECTOR_SIZE}")
            if min(result.documents, result.chunks) < 0:
                raise ValueError("counts cannot be negative")
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(path, MANIFEST, f"missing or wrong field: {exc}") from None
        except InvalidInput as exc:
            raise _damaged(path, MANIFEST, f"metadata_fields: {exc.message}") from None
        return result

    def _verify(self) -> None:
        listed = self.manifest.members
        present = {info.filename for info in self._zip.infolist()} - {MANIFEST}
        required = {DOCUMENTS, MEMBERSHIPS, CHUNKS, DENSE}
        if missing := sorted((required | set(listed)) - present):
            raise _damaged(self.path, missing[0], "it is missing")
        if extra := sorted(present - set(listed)):
            raise _damaged(self.path, extra[0], f"it is not listed in {MANIFEST}")
        for name in sorted(present):
            size, cap = self._zip.getinfo(name).file_size, self._size_cap(name)
            if size > cap:
                raise _damaged(
                    self.path, name, f"it unpacks to {size} bytes, more than the {cap} its counts allow"
                )
        for name in sorted(present):
            self._check_sum(name, listed[name])
        self._read_documents()
        self._declare_fields()
        self._read_memberships()
        self._check_chunks()
        documents = {document["id"] for document in self.documents}
        for name in present:
            if name.startswith(SOURCES):
                document_id = _uuid(name.removeprefix(SOURCES))
                if document_id is None or document_id not in documents:
                    raise _damaged(self.path, name, "it belongs to no document of the archive")
                self.source_ids.add(document_id)

    def _size_cap(self, name: str) -> int:
        """The most member `name` may unpack to, from the manifest's counts and the site's limits."""
        manifest = self.manifest
        if name == MEMBERSHIPS:
            return MAX_MEMBERSHIPS_BYTES
        if name == DOCUMENTS:
            return manifest.documents * self._document_line_cap()
        if name == CHUNKS:
            return manifest.chunks * MAX_CHUNK_LINE_BYTES
        if name == DENSE:
            return _NPY_HEADER_BYTES + manifest.chunks * manifest.vector_size * DENSE_DTYPE.itemsize
        # sources/<id>: a file as an upload may send it.
        return int(settings.INGESTION["MAX_UPLOAD_BYTES"])

    @staticmethod
    def _document_line_cap() -> int:
        # A document's text: what extraction keeps of a file, or a text document's whole request body.
        longest = max(int(settings.INGESTION["MAX_EXTRACTED_CHARS"]), settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return longest * _ESCAPED_BYTES_PER_CHAR + _DOCUMENT_LINE_EXTRA_BYTES

    def _lines(self, stream: IO[bytes], member: str, limit: int) -> Iterator[tuple[int, bytes]]:
        """A member's lines, numbered from 1; a line longer than `limit` bytes is refused unread."""
        number = 0
        while line := stream.readline(limit + 1):
            number += 1
            if len(line) > limit:
                raise _damaged(self.path, member, f"line {number} is longer than {limit} bytes")
            yield number, line

    def _check_sum(self, name: str, expected: Any) -> None:
        digest, size = hashlib.sha256(), 0
        try:
            with self._zip.open(name) as member:
                while block := member.read(_READ_BLOCK):
                    digest.update(block)
                    size += len(block)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _damaged(self.path, name, str(exc)) from None
        if (
            not isinstance(expected, dict)
            or expected.get("sha256") != digest.hexdigest()
            or expected.get("size") != size
        ):
            raise _damaged(self.path, name, f"its checksum differs from the one in {MANIFEST}")

    def _declare_fields(self) -> None:
        """Every document's values of the types the manifest declares; keys it does not declare are inferred."""
        declared = self.manifest.metadata_fields or {}
        for number, document in enumerate(self.documents, start=1):
            if wrong := misfits(document["metadata"], declared):
                key, field_type = next(iter(wrong.items()))
                raise _damaged(
                    self.path,
                    DOCUMENTS,
                    f"line {number}: metadata.{key} is {document['metadata'][key]!r}, not of the type {field_type} "
                    f"{MANIFEST} declares",
                )
        inferred = infer_fields(document["metadata"] for document in self.documents)
        self.metadata_fields = dict(sorted({**inferred, **declared}.items()))

    def _read_documents(self) -> None:
        ids, hashes = set(), set()
        with self._zip.open(DOCUMENTS) as lines:
            for number, line in self._lines(lines, DOCUMENTS, self._document_line_cap()):
                try:
                    document = _checked_document(json.loads(line))
                except (KeyError, TypeError, ValueError, RecursionError) as exc:
                    raise _damaged(self.path, DOCUMENTS, f"line {number}: {exc}") from None
                except InvalidInput as exc:
                    raise _damaged(self.path, DOCUMENTS, f"line {number}: {exc.message}") from None
                if document["id"] in ids or document["content_hash"] in hashes:
                    raise _damaged(self.path, DOCUMENTS, f"line {number} repeats a document")
                ids.add(document["id"])
                hashes.add(document["content_hash"])
                self.documents.append(document)
                self._documents_by_id[document["id"]] = document
        if len(self.documents) != self.manifest.documents:
            raise _damaged(
                self.path,
                DOCUMENTS,
                f"it holds {len(self.documents)} documents, the manifest {self.manifest.documents}",
            )

    def _read_memberships(self) -> None:
        try:
            memberships = json.loads(self._zip.read(MEMBERSHIPS))
            names = set()
            for membership in _typed(memberships, list):
                name = _check_text(get_user_model(), "username", _typed(membership["username"], str))
                if membership["role"] not in Role.values:
                    raise ValueError(f"unknown role {membership['role']!r}")
                if name in names:
                    raise ValueError(f"the user {name!r} is listed twice")
                names.add(name)
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise _damaged(self.path, MEMBERSHIPS, str(exc)) from None
        self.memberships = memberships

    def _check_chunks(self) -> None:
        """Each ready document's chunks, and no others, in order; one dense row for each."""
        expected = {d["id"]: d["chunk_count"] for d in self.documents if d["status"] == DocumentStatus.READY}
        seen: dict[UUID, int] = {}
        total = 0
        with self._zip.open(CHUNKS) as lines:
            for number, line in self._lines(lines, CHUNKS, MAX_CHUNK_LINE_BYTES):
                try:
                    chunk = json.loads(line)
                    document_id = UUID(_typed(chunk["document_id"], str))
                    index = _typed(chunk["chunk_index"], int)
                    if document_id in expected:
                        self._chunk_payload(self._documents_by_id[document_id], chunk["payload"])
                except (KeyError, TypeError, ValueError, RecursionError) as exc:
                    raise _damaged(self.path, CHUNKS, f"line {number}: {exc}") from None
                if document_id not in expected or index != seen.get(document_id, 0):
                    raise _damaged(
                        self.path, CHUNKS, f"line {number} is not the next chunk of a ready document"
                    )
                seen[document_id] = index + 1
                total += 1
        if short := [str(d) for d, count in expected.items() if seen.get(d, 0) != count]:
            raise _damaged(self.path, CHUNKS, f"document {short[0]} lacks chunks")
        if total != self.manifest.chunks:
            raise _damaged(self.path, CHUNKS, f"it holds {total} chunks, the manifest {self.manifest.chunks}")
        with self._zip.open(DENSE) as dense:
            shape = self._dense_shape(dense)
        if shape != (total, self.manifest.vector_size):
            raise _damaged(
                self.path, DENSE, f"its shape is {shape}, not ({total}, {self.manifest.vector_size})"
            )

    @staticmethod
    def _chunk_payload(document: dict[str, Any], stored: Any) -> dict[str, Any]:
        """A chunk's payload made again from its document's line: only its offsets come from the chunk.

        The title, archive state, labels and pages a search shows and filters on are the document's, as
        documents.jsonl gives them, whatever the chunk's line says; its text must be the document's
        text between its offsets (ValueError otherwise).
        """
        start, end, content = _typed(stored, dict)["char_start"], stored["char_end"], stored["content"]
        text = document["text"]
        _typed(content, str)
        if start is None and end is None:
            # Chunks from before offsets were kept: their text cannot be checked, and shows no pages.
            if len(content) > len(text):
                raise ValueError("a chunk's text is longer than its document's")
            pages: tuple[int | None, int | None] = (None, None)
        else:
            if not 0 <= _named("char_start", start, int) < _named("char_end", end, int) <= len(text):
                raise ValueError(f"offsets {start}-{end} lie outside the document's {len(text)} characters")
            if text[start:end] != content:
                raise ValueError(f"the chunk's text is not the document's text at {start}-{end}")
            pages = page_range(document["page_starts"], char_start=start, char_end=end)
        archived_at = document["archived_at"]
        return {
            "content": content,
            "title": document["title"],
            "char_start": start,
            "char_end": end,
            "page_start": pages[0],
            "page_end": pages[1],
            "archived": archived_at is not None,
            "archived_at": archived_at.isoformat() if archived_at else None,
            TAGS_FIELD: document["tags"],
            METADATA_FIELD: document["metadata"],
        }

    def _dense_shape(self, dense: IO[bytes]) -> tuple[int, ...]:
        try:
            version = np.lib.format.read_magic(dense)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(dense)
        except ValueError as exc:
            raise _damaged(self.path, DENSE, str(exc)) from None
        if dtype != DENSE_DTYPE or fortran_order or len(shape) != 2:
            raise _damaged(self.path, DENSE, f"it holds {dtype} of shape {shape}, not float32 rows")
        return shape


def _checked_document(document: Any) -> dict[str, Any]:
    """A documents.jsonl line as the API would take it: types, lengths, text, labels, pages and dates."""
    for field, types in DOCUMENT_FIELDS.items():
        _named(field, _typed(document, dict)[field], *types)
    document["id"] = UUID(document["id"])
    for field in ("title", "source_name", "source_format", "content_hash", "text"):
        _check_text(Document, field, document[field])
    if not document["title"]:
        raise ValueError("a document needs a title")
    if document["status"] not in DocumentStatus.values:
        raise ValueError(f"unknown status {document['status']!r}")
    if min(document["source_size"], document["chunk_count"]) < 0:
        raise ValueError("source_size and chunk_count cannot be negative")
    document["tags"] = clean_tags(document["tags"])
    document["metadata"] = clean_metadata(document["metadata"])
    pages = document["page_starts"]
    if pages is not None and (
        not all(isinstance(p, int) and not isinstance(p, bool) for p in pages)
        or pages != sorted(pages)
        or any(not 0 <= p <= len(document["text"]) for p in pages)
    ):
        raise ValueError("page_starts are offsets into the text, in order")
    for field in ("archived_at", "created_at"):
        if document[field] is not None:
            document[field] = datetime.fromisoformat(document[field])
            if document[field].tzinfo is None:
                raise ValueError(f"{field} names no time zone")
    return document


def _check_text(model: type[models.Model], field: str, value: str) -> str:
    """Text a model's field can store, on every database: SQLite does not enforce max_length itself."""
    limit = model._meta.get_field(field).max_length
    if limit is not None and len(value) > limit:
        raise ValueError(f"{model.__name__}.{field} has {len(value)} characters, more than its {limit}")
    if problem := unstorable_character(value):
        raise ValueError(f"{model.__name__}.{field} holds {problem}")
    return value


def _named(field: str, value: Any, *types: type) -> Any:
    """_typed, naming the field at fault."""
    try:
        return _typed(value, *types)
    except TypeError as exc:
        raise TypeError(f"{field}: {exc}") from None


def _typed(value: Any, *types: type) -> Any:
    # bool is an int to Python but never a count or a size here.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"{value!r} is not {' or '.join(t.__name__ for t in types)}")
    return value


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def _damaged(path: Path, member: str, reason: str) -> DamagedArchive:
    return DamagedArchive(
        f"{path} is damaged: {member}: {reason}. Nothing was imported; export the knowledge base again, "
        "or copy the file again.",
        detail={"member": member},
    )

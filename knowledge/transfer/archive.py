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

from knowledge.errors import DamagedArchive, InvalidInput
from knowledge.models import DocumentStatus, Role
from search.keywords import KeywordSettings
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


class ArchiveReader:
    """An archive to import: `open` checks each member's checksum and shape, or raises DamagedArchive."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, manifest: Manifest) -> None:
        self.path = path
        self._zip = archive
        self.manifest = manifest
        self.documents: list[dict[str, Any]] = []
        self.memberships: list[dict[str, str]] = []
        self.source_ids: set[UUID] = set()

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
                    batch.append(
                        ChunkRecord(
                            document_id=UUID(chunk["document_id"]),
                            chunk_index=chunk["chunk_index"],
                            payload=chunk["payload"],
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
            )
            UUID(_typed(kb["id"], str))
            for key in ("name", "slug", "description"):
                _typed(kb[key], str)
            _typed(kb["owner"], str, type(None))
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(path, MANIFEST, f"missing or wrong field: {exc}") from None
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
            self._check_sum(name, listed[name])
        self._read_documents()
        self._read_memberships()
        self._check_chunks()
        documents = {document["id"] for document in self.documents}
        for name in present:
            if name.startswith(SOURCES):
                document_id = _uuid(name.removeprefix(SOURCES))
                if document_id is None or document_id not in documents:
                    raise _damaged(self.path, name, "it belongs to no document of the archive")
                self.source_ids.add(document_id)

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

    def _read_documents(self) -> None:
        ids, hashes = set(), set()
        with self._zip.open(DOCUMENTS) as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    document = json.loads(line)
                    for field, types in DOCUMENT_FIELDS.items():
                        _typed(document[field], *types)
                    document["id"] = UUID(document["id"])
                    for field in ("archived_at", "created_at"):
                        if document[field] is not None:
                            document[field] = datetime.fromisoformat(document[field])
                except (KeyError, TypeError, ValueError) as exc:
                    raise _damaged(self.path, DOCUMENTS, f"line {number}: {exc!r}") from None
                if document["id"] in ids or document["content_hash"] in hashes:
                    raise _damaged(self.path, DOCUMENTS, f"line {number} repeats a document")
                ids.add(document["id"])
                hashes.add(document["content_hash"])
                self.documents.append(document)
        if len(self.documents) != self.manifest.documents:
            raise _damaged(
                self.path,
                DOCUMENTS,
                f"it holds {len(self.documents)} documents, the manifest {self.manifest.documents}",
            )

    def _read_memberships(self) -> None:
        try:
            memberships = json.loads(self._zip.read(MEMBERSHIPS))
            for membership in _typed(memberships, list):
                _typed(membership["username"], str)
                if membership["role"] not in Role.values:
                    raise ValueError(f"unknown role {membership['role']!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(self.path, MEMBERSHIPS, repr(exc)) from None
        self.memberships = memberships

    def _check_chunks(self) -> None:
        """Each ready document's chunks, and no others, in order; one dense row for each."""
        expected = {d["id"]: d["chunk_count"] for d in self.documents if d["status"] == DocumentStatus.READY}
        seen: dict[UUID, int] = {}
        total = 0
        with self._zip.open(CHUNKS) as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    chunk = json.loads(line)
                    document_id = UUID(_typed(chunk["document_id"], str))
                    _typed(chunk["payload"]["content"], str)
                    index = _typed(chunk["chunk_index"], int)
                except (KeyError, TypeError, ValueError) as exc:
                    raise _damaged(self.path, CHUNKS, f"line {number}: {exc!r}") from None
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

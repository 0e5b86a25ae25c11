"""Loading files and folders from disk into a knowledge base (the ingest command's work)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledge.errors import InvalidInput, KnowledgeError
from knowledge.ingestion.extraction import format_for
from knowledge.models import Document, KnowledgeBase
from knowledge.services.documents import DocumentService


@dataclass(frozen=True)
class FoundFile:
    #: As the user named it (or as found in a folder they named): messages show the name they know,
    #: not the one resolving symbolic links or, on Windows, the file system's own case would give.
    path: Path
    #: What the document is known by: its path within the folder given, or its name if given itself.
    source_name: str


@dataclass(frozen=True)
class FileOutcome:
    path: Path
    #: "queued" (new), "updated" (new version of a document), "duplicate" or "rejected".
    status: str
    message: str = ""
    document: Document | None = None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class FileImportService:
    def __init__(self, *, documents: DocumentService | None = None) -> None:
        self.documents = documents or DocumentService()

    def collect(self, paths: Sequence[str | Path], *, recursive: bool) -> tuple[list[FoundFile], list[Path]]:
        """The files to load, and those passed over in folders because kbsite cannot read them.

        A file named explicitly is always taken, so that an unreadable one is reported, not ignored.
        Files from a folder are known by their path within it, so a/notes.txt and b/notes.txt stay two.
        """
        files: dict[Path, FoundFile] = {}
        passed_over: list[Path] = []
        for given in paths:
            path = Path(given).expanduser()
            if path.is_file():
                files.setdefault(path.resolve(), FoundFile(path=path, source_name=path.name))
            elif path.is_dir():
                found = path.rglob("*") if recursive else path.iterdir()
                for candidate in sorted(found):
                    if not candidate.is_file() or _hidden(candidate, path):
                        continue
                    if format_for(candidate.name) is None:
                        passed_over.append(candidate)
                    else:
                        relative = candidate.relative_to(path).as_posix()
                        files.setdefault(candidate.resolve(), FoundFile(path=candidate, source_name=relative))
            else:
                raise InvalidInput(f"{given} does not exist.")
        return list(files.values()), passed_over

    def add_files(
        self,
        *,
        kb: KnowledgeBase,
        files: Sequence[FoundFile],
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[FileOutcome]:
        """Record each file as a document waiting for ingestion, with the labels given; say how each went."""
        outcomes = []
        for found in files:
            path = found.path
            try:
                self.documents.check_upload_size(path.name, path.stat().st_size)
                added = self.documents.add_upload(
                    kb=kb,
                    filename=path.name,
                    data=path.read_bytes(),
                    source_name=found.source_name,
                    tags=tags,
                    metadata=metadata,
                )
            except KnowledgeError as exc:
                status = "duplicate" if exc.code == "duplicate_document" else "rejected"
                outcomes.append(FileOutcome(path=path, status=status, message=exc.message))
            except OSError as exc:
                outcomes.append(FileOutcome(path=path, status="rejected", message=f"{path} cannot be read: {exc.strerror}."))
            else:
                status = "queued" if added.created else "updated"
                outcomes.append(FileOutcome(path=path, status=status, document=added.document))
        return outcomes

"""The errors the knowledge app raises on purpose, each with a stable code and a message saying what to do."""

from __future__ import annotations

from search.errors import KbsiteError


class KnowledgeError(KbsiteError):
    """Base of the knowledge app's errors (kbsite's one base is KbsiteError)."""

    code = "knowledge_error"


class KnowledgeBaseNotFound(KnowledgeError):
    """Unknown and unreadable knowledge bases look the same, so ids of others' KBs do not leak."""

    code = "kb_not_found"


class DocumentNotFound(KnowledgeError):
    code = "document_not_found"


class PermissionDenied(KnowledgeError):
    code = "permission_denied"


class TokenExpired(KnowledgeError):
    """A genuine API token past its expiry date (answers 401, saying when it expired)."""

    code = "token_expired"


class InvalidInput(KnowledgeError):
    code = "invalid_input"


class InvalidMetadataField(InvalidInput):
    """A metadata value of another type than its key's declared one, or a declaration that cannot be made."""

    code = "invalid_metadata_field"


class DuplicateSlug(KnowledgeError):
    code = "duplicate_slug"


class DuplicateDocument(KnowledgeError):
    code = "duplicate_document"


class UnsupportedFormat(KnowledgeError):
    code = "unsupported_format"


class UploadTooLarge(KnowledgeError):
    code = "upload_too_large"


class MemberNotFound(KnowledgeError):
    code = "member_not_found"


class DamagedArchive(KnowledgeError):
    """A knowledge base archive that is truncated, altered or not one at all: nothing is imported from it."""

    code = "damaged_archive"


class ArchiveModelMismatch(KnowledgeError):
    """An archive's vectors come from another embedding model (or size) than the site's."""

    code = "archive_model_mismatch"


class RebuildSuperseded(KnowledgeError):
    """A rebuild found at its switch that another rebuild (or a delete) changed the KB first: it kept nothing."""

    code = "rebuild_superseded"


class PreviewInProgress(KnowledgeError):
    """A member's chunk preview while another of theirs still runs: one at a time each."""

    code = "preview_in_progress"

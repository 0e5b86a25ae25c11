"""Knowledge bases, their documents and who may use them. Chunks are not rows: they live in Qdrant."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def default_chunk_size() -> int:
    return settings.CHUNKING["SIZE"]


def default_chunk_overlap() -> int:
    return settings.CHUNKING["OVERLAP"]


def pluralize_chunks(count: int) -> str:
    return "chunk" if count == 1 else "chunks"


def default_keyword_settings() -> dict:
    from search.keywords import KeywordSettings

    return KeywordSettings().as_dict()


class KnowledgeBase(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="owned_knowledge_bases",
        help_text="Always has owner rights. Empty: only owner members and superusers manage it.",
    )
    embedding_model = models.CharField(
        max_length=100, editable=False, help_text="The model the KB's vectors were made with."
    )
    vector_size = models.PositiveIntegerField(editable=False)
    index_generation = models.PositiveIntegerField(
        default=1,
        editable=False,
        help_text="The generation of the KB's points that searches read; a rebuild writes the next one, then "
        "switches this in one update.",
    )
    keyword_settings = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        default=default_keyword_settings,
        help_text="How text becomes BM25 keywords (language, stemming, stopwords, k, b, avg_len). Empty: the "
        "KB's collection predates keyword search, and `reindex --recreate` enables it.",
    )
    metadata_fields = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="The metadata keys its documents carry and searches filter on, each with its type (text, number, "
        'date or bool), e.g. {"year": "number"}. Owners declare them; a document written with a new key declares it.',
    )
    chunk_size = models.PositiveIntegerField(default=default_chunk_size, help_text="Tokens per chunk.")
    chunk_overlap = models.PositiveIntegerField(
        default=default_chunk_overlap, help_text="Tokens each chunk shares with the one before it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "knowledge base"

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    READER = "reader", "Reader"
    EDITOR = "editor", "Editor"
    OWNER = "owner", "Owner"


class Membership(models.Model):
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="kb_memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.READER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["knowledge_base", "user"], name="one_membership_per_user")]
        ordering = ["knowledge_base", "user"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.knowledge_base}"


class DocumentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class Document(models.Model):
    """A document of a KB; the row is also its place in the ingestion queue (status, attempts, lease)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=500)
    source_name = models.CharField(max_length=500, blank=True, help_text="The file name it came from.")
    source_format = models.CharField(max_length=10, blank=True, help_text="txt, md, html, pdf, docx or text.")
    source_size = models.PositiveBigIntegerField(default=0, help_text="Bytes uploaded.")
    source_folder = models.CharField(
        max_length=1000,
        blank=True,
        help_text="The folder `manage.py sync_folder` keeps it in step with (its source name is its path there).",
    )
    content_hash = models.CharField(
        max_length=64, help_text="sha256 of what was uploaded, to recognise the same content twice."
    )
    text = models.TextField(blank=True, help_text="The extracted text: the source chunks are rebuilt from.")
    status = models.CharField(max_length=12, choices=DocumentStatus.choices, default=DocumentStatus.PENDING)
    chunk_count = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0, help_text="Progress of the current indexing.")
    chunks_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Not to be tried again before this.")
    claimed_by = models.CharField(max_length=100, blank=True, help_text="The worker processing it.")
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="A worker that has not renewed its claim by then is presumed dead."
    )
    archived_at = models.DateTimeField(null=True, blank=True, db_index=True)
    tags = models.JSONField(default=list, blank=True, help_text="Labels to filter searches by, e.g. [\"policy\", \"hr\"].")
    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text="Flat key/value facts to filter searches by: strings, numbers, booleans, dates (ISO 8601).",
    )
    page_starts = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="Where each page begins in the text (character offsets, page 1 first); empty when the source "
        "has no pages.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "content_hash"], name="one_copy_of_content_per_kb")
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="document_queue"),
            models.Index(fields=["knowledge_base", "status"], name="document_kb_status"),
            models.Index(fields=["knowledge_base", "source_name"], name="document_kb_source"),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    @property
    def progress(self) -> str:
        if self.status == DocumentStatus.PROCESSING and self.chunks_total:
            return f"{self.chunks_done}/{self.chunks_total} {pluralize_chunks(self.chunks_total)}"
        return f"{self.chunk_count} {pluralize_chunks(self.chunk_count)}" if self.status == DocumentStatus.READY else ""


class DocumentSource(models.Model):
    """An uploaded file waiting to have its text extracted; deleted once the text is stored."""

    document = models.OneToOneField(Document, on_delete=models.CASCADE, primary_key=True, related_name="source")
    data = models.BinaryField()

    def __str__(self) -> str:
        return f"source of {self.document_id}"


class ApiToken(models.Model):
    """A personal API token: shown once when made, kept only as a hash."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the application using it.")
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Its first characters, to find it.")
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Answers 401 from then on. Empty: never.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

"""Knowledge bases, their documents and who may use them. Chunks are not rows: they live in Qdrant."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def default_chunk_size() -> int:
    return settings.CHUNKING["SIZE"]


def default_chunk_overlap() -> int:
    return settings.CHUNKING["OVERLAP"]


class KnowledgeBase(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="owned_knowledge_bases"
    )
    embedding_model = models.CharField(
        max_length=100, editable=False, help_text="The model the KB's vectors were made with."
    )
    vector_size = models.PositiveIntegerField(editable=False)
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
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=500)
    source_name = models.CharField(max_length=500, blank=True, help_text="The file name it came from.")
    content_hash = models.CharField(max_length=64, help_text="sha256 of the text, to recognise duplicates.")
    text = models.TextField(blank=True, help_text="The extracted text: the source chunks are rebuilt from.")
    status = models.CharField(
        max_length=12, choices=DocumentStatus.choices, default=DocumentStatus.PENDING, db_index=True
    )
    chunk_count = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    archived_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "content_hash"], name="one_copy_of_content_per_kb")
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

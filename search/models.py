"""The search audit: one row per successful search."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class SearchAudit(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="search_audits"
    )
    query = models.TextField()
    kb_ids = models.JSONField(default=list, help_text="The knowledge bases searched, as UUID strings.")
    result_count = models.PositiveIntegerField()
    latency_ms = models.FloatField(help_text="From the call to the merged results, in milliseconds.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="searchaudit_user_recent")]

    def __str__(self) -> str:
        return f"{self.query[:60]!r} by user {self.user_id}"

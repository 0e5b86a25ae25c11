"""The search audit in the admin, read-only."""

from django.contrib import admin

from search.models import SearchAudit


@admin.register(SearchAudit)
class SearchAuditAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "query", "result_count", "latency_ms"]
    list_filter = ["created_at"]
    list_select_related = ["user"]
    search_fields = ["query", "user__username"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

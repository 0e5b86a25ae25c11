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

    # Every user's queries are here: for superusers only, whatever staff permissions say.
    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return self.has_module_permission(request)

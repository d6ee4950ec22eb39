"""Admin for the HTTP API's tokens: looked at and revoked (deleted) here; made with
``manage.py container_jobs_api_token create``, which shows the token once."""

from django.contrib import admin

from ..models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("user", "prefix", "created_at", "last_used_at")
    fields = ("user", "name", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request):
        return False  # a token is shown once, when made: by the management command

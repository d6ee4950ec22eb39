"""Admin for what jobs run on and with: executor hosts, environment templates, registry
credentials, and the workers (looked at only)."""

from typing import cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied

from ..models import (
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorHostQuerySet,
    RegistryCredential,
    Worker,
)
from .forms import EnvironmentVariableTemplateForm, ExecutorHostForm, RegistryCredentialForm


@admin.register(ExecutorHost)
class ExecutorHostAdmin(admin.ModelAdmin):
    form = ExecutorHostForm
    list_display = (
        "name",
        "executor_type",
        "connection_string",
        "is_active",
        "health_status",
        "last_health_check",
        "running_jobs",
    )
    list_filter = ("executor_type", "is_active", "health_status")
    search_fields = ("name", "connection_string")
    readonly_fields = (
        "health_status",
        "health_message",
        "last_health_check",
        "created_at",
        "updated_at",
    )
    actions = ["check_health"]

    def get_queryset(self, request):
        # The default manager's queryset, which the type stubs know only as a QuerySet.
        return cast(ExecutorHostQuerySet, super().get_queryset(request)).with_load()

    @admin.display(description="running / max", ordering="load")
    def running_jobs(self, host):
        return f"{host.load} / {host.max_concurrent_jobs}"

    @admin.action(description="Check health of the selected hosts", permissions=["change"])
    def check_health(self, request, queryset):
        if not self.has_change_permission(request):
            raise PermissionDenied
        for host in queryset:
            try:
                health = host.check_health()
            except Exception as error:  # noqa: BLE001 - report it, go on with the others
                self.message_user(request, f"{host.name}: check failed: {error!r}", messages.ERROR)
                continue
            state, level = (
                ("healthy", messages.SUCCESS) if health.healthy else ("unhealthy", messages.ERROR)
            )
            self.message_user(request, f"{host.name}: {state}: {health.message}", level)


@admin.register(EnvironmentVariableTemplate)
class EnvironmentVariableTemplateAdmin(admin.ModelAdmin):
    form = EnvironmentVariableTemplateForm
    list_display = ("name", "description", "updated_at")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "updated_at")


@admin.register(RegistryCredential)
class RegistryCredentialAdmin(admin.ModelAdmin):
    form = RegistryCredentialForm
    list_display = ("registry", "username", "updated_at")
    search_fields = ("registry", "username")


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Workers register themselves; here they are only looked at (or deleted when stale)."""

    list_display = ("hostname", "pid", "started_at", "last_heartbeat", "stopped_at")
    search_fields = ("hostname",)
    readonly_fields = ("id", "hostname", "pid", "started_at", "last_heartbeat", "stopped_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

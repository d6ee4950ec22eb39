"""Admin for job arrays: each array's progress, its members in the job list, and actions on
them. Arrays are made by ``bulk_operations.create_array`` (the CLI, the Python API); here they
are looked at, cancelled and retried. The actions need the permissions of the same actions on
jobs (``cancel_containerjob``, ``retry_containerjob``) and run through ``bulk_operations``.
"""

from collections.abc import Callable
from typing import cast

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

from .. import bulk_operations as bulk
from ..models import JobArray, JobArrayQuerySet
from ..states import TERMINAL
from . import display
from .jobs import JOB_ACTIONS, report


@admin.register(JobArray)
class JobArrayAdmin(admin.ModelAdmin):
    list_display = ("__str__", "progress", "outcome", "parallelism", "members", "created_at")
    list_select_related = ("created_by",)
    search_fields = ("name",)
    fields = ("id", "name", "size", "parallelism", "progress", "outcome", "members", "created_by")
    readonly_fields = fields
    actions = ["cancel_arrays", "retry_failed_members", "retry_unsuccessful_members"]

    def get_queryset(self, request):
        # The default manager's queryset, which the type stubs know only as a QuerySet.
        return cast(JobArrayQuerySet, super().get_queryset(request)).with_counts()

    @admin.display(description="ended / size")
    def progress(self, array):
        counts = array.summary()["counts"]
        ended = sum(counts[status] for status in TERMINAL)
        detail = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        return format_html('<span title="{}">{} / {}</span>', detail, ended, array.size)

    @admin.display(description="outcome")
    def outcome(self, array):
        outcome = array.summary()["outcome"]
        css = outcome.replace(" ", "-")
        return format_html('<span class="cm-badge cm-status-{}">{}</span>', css, outcome)

    @admin.display(description="members")
    def members(self, array):
        return format_html('<a href="{}">members</a>', display.members_url(array.pk))

    # -- permissions: arrays are made by creating jobs, and changed only through them ----

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.cancel_containerjob")

    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.retry_containerjob")

    # -- actions -------------------------------------------------------------------------

    @admin.action(
        description="Cancel the unfinished members of selected arrays", permissions=["cancel"]
    )
    def cancel_arrays(self, request, queryset):
        self._run(request, "cancel", queryset, bulk.cancel_array)

    @admin.action(
        description="Retry the failed and timed-out members of selected arrays",
        permissions=["retry"],
    )
    def retry_failed_members(self, request, queryset):
        self._run(
            request, "retry", queryset, lambda array: bulk.retry_array(array, failed_only=True)
        )

    @admin.action(
        description="Retry the failed, timed-out and cancelled members of selected arrays",
        permissions=["retry"],
    )
    def retry_unsuccessful_members(self, request, queryset):
        self._run(request, "retry", queryset, bulk.retry_array)

    def _run(self, request, name: str, arrays, run: Callable[[JobArray], bulk.BulkResult]):
        if not getattr(self, f"has_{name}_permission")(request):
            raise PermissionDenied
        result = bulk.BulkResult()
        for array in arrays:
            done = run(array)
            result.succeeded += done.succeeded
            result.failed += done.failed
        report(self, request, JOB_ACTIONS[name], result, what="member")

"""Admin for jobs: the list, the operator's page of a job, its actions and the queue overview.

Release, cancel, retry and the other actions are offered to, and run for, only users with
the matching permission (release: ``change_containerjob``, as for editing a held job).
"""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError

from .. import api
from ..models import ContainerJob, JobAttempt
from ..serializers import validation_error_lines
from ..states import InvalidTransition, JobStatus
from .forms import CONFINEMENT_FIELDS, WHAT_TO_RUN_FIELDS, ContainerJobForm


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    fields = (
        "number",
        "status",
        "host",
        "worker",
        "execution_id",
        "exit_code",
        "error",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


OUTCOME_FIELDS = (
    "status",
    "host",
    "execution_id",
    "exit_code",
    "attempts",
    "last_error",
    "peak_memory_bytes",
    "cpu_seconds",
    "stdout",
    "stderr",
    "worker",
    "cancel_requested_at",
    "created_by",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
)


@admin.register(ContainerJob)
class ContainerJobAdmin(admin.ModelAdmin):
    form = ContainerJobForm
    list_display = (
        "short_id",
        "name",
        "status",
        "host",
        "image",
        "exit_code",
        "attempts",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "host")
    list_select_related = ("host",)
    search_fields = ("name", "image", "id", "execution_id")
    readonly_fields = ("id", *OUTCOME_FIELDS)
    fieldsets = (
        (None, {"fields": ("id", "name", "status", "priority", "scheduled_for")}),
        (
            "Where",
            {
                "fields": ("requested_host", "executor_type", "host_labels", "host"),
                "description": "Name a host (or a fallback chain), or ask for an executor "
                "type and labels and let routing choose; the host is where it runs.",
            },
        ),
        ("What to run", {"fields": WHAT_TO_RUN_FIELDS}),
        (
            "Confinement",
            {
                "fields": CONFINEMENT_FIELDS,
                "description": "What the container may do beyond the safe defaults; "
                "each loosening must be allowed by the container policy.",
            },
        ),
        (
            "Outcome",
            {
                "fields": (
                    "execution_id",
                    "exit_code",
                    "attempts",
                    "last_error",
                    "peak_memory_bytes",
                    "cpu_seconds",
                    "stdout",
                    "stderr",
                )
            },
        ),
        (
            "History",
            {
                "fields": (
                    "created_by",
                    "created_at",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "cancel_requested_at",
                    "worker",
                )
            },
        ),
    )
    inlines = [JobAttemptInline]
    actions = ["release_jobs", "cancel_jobs", "retry_jobs"]

    @admin.display(description="ID", ordering="id")
    def short_id(self, job):
        return str(job.pk)[:8]

    @admin.display(description="environment")
    def environment(self, job):
        """Template and overrides, one KEY=value a line, secret values masked."""
        variables = job.get_environment_display()
        return "\n".join(f"{key}={value}" for key, value in sorted(variables.items())) or "-"

    @staticmethod
    def _started(obj):
        return obj is not None and obj.status not in (JobStatus.PENDING, JobStatus.QUEUED)

    def get_readonly_fields(self, request, obj=None):
        # Once a worker has taken a job, what it runs is history: nothing is editable.
        if self._started(obj):
            names = (field.name for field in obj._meta.fields if field.name != "id")
            return ("id", "environment", *names)
        return self.readonly_fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if not self._started(obj):
            return fieldsets
        # Read only, the stored overrides would show sealed tokens: show the masked view.
        return [
            (
                name,
                {
                    **options,
                    "fields": tuple(
                        "environment" if field == "environment_overrides" else field
                        for field in options["fields"]
                    ),
                },
            )
            for name, options in fieldsets
        ]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            obj.save()
        else:
            # Write only what was edited, never the outcome a worker may be writing now.
            obj.save(update_fields=form.changed_data)

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.cancel_containerjob")

    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.retry_containerjob")

    @admin.action(description="Release selected held jobs", permissions=["change"])
    def release_jobs(self, request, queryset):
        if not self.has_change_permission(request):
            raise PermissionDenied
        released, selected = self._apply(request, queryset, api.release_job)
        self.message_user(
            request,
            f"Released {released} of {selected} selected job{'' if selected == 1 else 's'}.",
            messages.SUCCESS if released else messages.WARNING,
        )

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        if not self.has_cancel_permission(request):
            raise PermissionDenied

        def done(job):
            if job.status == JobStatus.CANCELLED:
                return "cancelled"
            return f"cancel requested (it is {job.status}; its worker stops it)"

        self._apply(request, queryset, api.cancel_job, done)

    @admin.action(description="Retry selected jobs", permissions=["retry"])
    def retry_jobs(self, request, queryset):
        if not self.has_retry_permission(request):
            raise PermissionDenied
        self._apply(request, queryset, api.retry_job, lambda job: "queued again")

    def _apply(self, request, queryset, operation, done=None) -> tuple[int, int]:
        """Run ``operation`` on each job, saying why for each it refused.

        With ``done``, each job it did gets a message too: ``done(job)``. Returns how many
        jobs it did, and of how many.
        """
        succeeded = seen = 0
        for job in queryset.select_related("host"):
            seen += 1
            label = f"Job {job.name or job.pk} ({str(job.pk)[:8]})"
            try:
                job = operation(job)
            except ValidationError as error:
                problem = "; ".join(validation_error_lines(error))
                self.message_user(request, f"{label}: {problem}", messages.ERROR)
            except InvalidTransition as error:
                self.message_user(request, f"{label}: {error}", messages.ERROR)
            else:
                succeeded += 1
                if done is not None:
                    self.message_user(request, f"{label}: {done(job)}", messages.SUCCESS)
        return succeeded, seen

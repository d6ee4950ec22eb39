"""Admin for jobs: the list, the operator's page of a job, and the actions on jobs.

A held (pending) job has the edit form; once it has left ``pending`` its page is an
operator's view: what, where, outcome and timing, the error first, why it is still waiting,
and a log panel that follows a running job's output (``job.js`` polls the ``live`` view).

Actions run through ``container_manager.bulk_operations`` whether asked from the list or
from a job's page, and each reports how many jobs it did and, for the others, why not. They
are offered to, and run for, only users with the matching permission: cancel and retry their
own, release and re-queue ``change_containerjob`` (as for editing a held job), duplicate
``add_containerjob``, delete ``delete_containerjob``.
"""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property

from .. import bulk_operations as bulk
from ..executors import executor_types
from ..live_output import read_live_output
from ..models import ContainerJob, ExecutorHost
from ..overview import why_waiting
from ..routing import describe_request
from ..states import ACTIVE, RETRYABLE, TERMINAL, WAITING, JobStatus
from . import display
from .forms import CONFINEMENT_FIELDS, URL_FIELDS, WHAT_TO_RUN_FIELDS, ContainerJobForm

EVERY_STATUS = frozenset(JobStatus.values)
# Selected jobs named one by one in a report; past these, "and N more".
REPORTED_FAILURES = 20


@dataclass(frozen=True)
class JobAction:
    """One thing an operator does to jobs, from the list or from a job's page."""

    name: str
    label: str  # on its button
    done: str  # in its report: "Cancelled 3 of 5 selected jobs."
    permission: str  # ModelAdmin.has_<permission>_permission decides who may
    offered_for: frozenset  # the statuses a job's page offers it for
    run: Callable[..., bulk.BulkResult]  # (jobs, request, **options)
    confirm: str = ""  # asked before it runs, for what cannot be undone


JOB_ACTIONS = {
    action.name: action
    for action in [
        JobAction(
            "cancel",
            "Cancel",
            "Cancelled",
            "cancel",
            EVERY_STATUS - TERMINAL,
            lambda jobs, request: bulk.cancel_jobs(jobs),
        ),
        JobAction(
            "retry",
            "Retry",
            "Queued again",
            "retry",
            RETRYABLE,
            lambda jobs, request: bulk.retry_jobs(jobs),
        ),
        JobAction(
            "release",
            "Release",
            "Released",
            "change",
            frozenset({JobStatus.PENDING}),
            lambda jobs, request: bulk.release_jobs(jobs),
        ),
        JobAction(
            "requeue",
            "Re-queue on another host",
            "Re-queued",
            "change",
            WAITING | RETRYABLE,
            lambda jobs, request, host: bulk.reroute_jobs(jobs, host),
        ),
        JobAction(
            "duplicate",
            "Run again (duplicate)",
            "Duplicated",
            "add",
            EVERY_STATUS,
            lambda jobs, request: bulk.duplicate_jobs(jobs, created_by=request.user),
        ),
        JobAction(
            "delete",
            "Delete",
            "Deleted",
            "delete",
            EVERY_STATUS - ACTIVE,
            lambda jobs, request: bulk.delete_jobs(jobs),
            confirm="Delete this job and its history? This cannot be undone.",
        ),
    ]
}


def report(
    model_admin, request, action: JobAction, result: bulk.BulkResult, what="selected job"
) -> None:
    """One message per job refused (why), then how many of ``what`` were done."""
    failures = result.failed
    shown = failures[:REPORTED_FAILURES]
    names = {
        str(pk): name
        for pk, name in ContainerJob.objects.filter(
            pk__in=[f.item for f in shown if is_job_id(f.item)]
        ).values_list("pk", "name")
    }
    for failure in shown:
        name = names.get(failure.item, "")
        label = f"Job {name} ({failure.item[:8]})" if name else f"Job {failure.item[:8]}"
        model_admin.message_user(request, f"{label}: {failure.reason}", messages.ERROR)
    if len(failures) > REPORTED_FAILURES:
        more = len(failures) - REPORTED_FAILURES
        model_admin.message_user(request, f"… and {more} more refused.", messages.ERROR)
    done, selected = len(result.succeeded), result.total
    summary = f"{action.done} {done} of {selected} {what}{'' if selected == 1 else 's'}"
    if action.name == "cancel" and result.still_running:
        summary += f" ({result.still_running} running: their workers stop them)"
    model_admin.message_user(request, summary + ".", messages.SUCCESS if done else messages.WARNING)


class LargeTablePaginator(Paginator):
    """Counts exactly when there are few; past ESTIMATE_ABOVE, trusts PostgreSQL's estimate.

    Counting a million jobs to number the pages costs more than the page; the planner's
    estimate (from the table's statistics) is good enough to say "about".
    """

    ESTIMATE_ABOVE = 20_000

    @cached_property
    def count(self) -> int:
        jobs = self.object_list
        if connection.vendor == "postgresql" and isinstance(jobs, QuerySet):
            plan = json.loads(jobs.explain(format="json"))
            estimate = int(plan[0]["Plan"]["Plan Rows"])
            if estimate > self.ESTIMATE_ABOVE:
                return estimate
        return super().count


class ExecutorTypeFilter(admin.SimpleListFilter):
    """Jobs by the type of the host they run on (docker, cloudrun, ...)."""

    title = "executor type"
    parameter_name = "executor_type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(executor_types()) if name != "fallback"]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(host__executor_type=self.value())
        return queryset


def uuid_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids that start with ``term`` (at least the 8 characters the list shows), as an
    index range. Shorter hex words ("added", "cafe") are more likely names than ids."""
    digits = term.replace("-", "").lower()
    if not 8 <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def is_job_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@admin.register(ContainerJob)
class ContainerJobAdmin(admin.ModelAdmin):
    form = ContainerJobForm
    formfield_overrides = URL_FIELDS
    list_display = (
        "short_id",
        "job_column",
        "status_column",
        "host_column",
        "duration_column",
        "exit_column",
        "attempts_column",
        "created_column",
    )
    list_display_links = ("short_id", "job_column")
    list_filter = ("status", "host", ExecutorTypeFilter, "created_at")
    list_select_related = ("host",)
    list_per_page = 50
    paginator = LargeTablePaginator
    # The full count is a scan of every job: with millions of rows, not worth a page view.
    show_full_result_count = False
    search_fields = ("name", "image")
    search_help_text = "Name or image; or a job id (or its first characters), or an execution id."
    readonly_fields = ("id", "array_member")
    fieldsets = (
        (None, {"fields": ("id", "array_member", "name", "priority", "scheduled_for")}),
        (
            "Where",
            {
                "fields": ("requested_host", "executor_type", "host_labels"),
                "description": "Name a host (or a fallback chain), or ask for an executor "
                "type and labels and let routing choose.",
            },
        ),
        ("What to run", {"fields": WHAT_TO_RUN_FIELDS}),
        ("When it ends", {"fields": ("webhook_url",)}),
        (
            "Confinement",
            {
                "fields": CONFINEMENT_FIELDS,
                "description": "What the container may do beyond the safe defaults; "
                "each loosening must be allowed by the container policy.",
            },
        ),
    )
    actions = [
        "cancel_jobs",
        "retry_jobs",
        "release_jobs",
        "requeue_jobs",
        "duplicate_jobs",
        "delete_jobs",
    ]

    class Media:
        css = {"all": ["container_manager/admin.css"]}
        js = ["container_manager/job.js"]

    # -- the list ------------------------------------------------------------------------

    @admin.display(description="ID", ordering="id")
    def short_id(self, job):
        return str(job.pk)[:8]

    @admin.display(description="job", ordering="name")
    def job_column(self, job):
        return display.name_and_image(job)

    @admin.display(description="status", ordering="status")
    def status_column(self, job):
        return display.status_badge(job)

    @admin.display(description="host", ordering="host__name")
    def host_column(self, job):
        return display.clipped(job.host.name) if job.host else "—"

    @admin.display(description="duration")
    def duration_column(self, job):
        return display.duration(job)

    @admin.display(description="exit", ordering="exit_code")
    def exit_column(self, job):
        return "—" if job.exit_code is None else job.exit_code

    @admin.display(description="tries", ordering="attempts")
    def attempts_column(self, job):
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="created", ordering="created_at")
    def created_column(self, job):
        return display.compact_time(job.created_at)

    @admin.display(description="array")
    def array_member(self, job):
        return display.array_membership(job)

    def get_search_results(self, request, queryset, search_term):
        # An id or an execution id is looked up in its index, not matched as text.
        term = search_term.strip()
        if term:
            found = queryset.filter(pk__in=ContainerJob.objects.identified_by(term))
            if not found.exists() and (bounds := uuid_prefix_range(term)):
                found = queryset.filter(pk__range=bounds)
            if found.exists():
                return found, False
        return super().get_search_results(request, queryset, search_term)

    def get_actions(self, request, action_location=None):
        # Django 6.1 says where the actions are shown (``action_location``); 5.2 does not.
        if action_location is None:
            found = super().get_actions(request)
        else:
            found = super().get_actions(request, action_location)  # type: ignore[call-arg]
        found.pop("delete_selected", None)  # ours says which jobs it could not delete, and why
        return found

    # -- permissions ---------------------------------------------------------------------

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.cancel_containerjob")

    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.retry_containerjob")

    def _allowed(self, request, action: JobAction) -> bool:
        return getattr(self, f"has_{action.permission}_permission")(request)

    def has_delete_permission(self, request, obj=None):
        # A job a worker holds is cancelled first: deleting it would leave its container.
        if obj is not None and obj.status in ACTIVE:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        self._report(request, JOB_ACTIONS["delete"], bulk.delete_jobs([obj]))

    # -- list actions --------------------------------------------------------------------

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        return self._run(request, JOB_ACTIONS["cancel"], queryset)

    @admin.action(description="Retry selected jobs", permissions=["retry"])
    def retry_jobs(self, request, queryset):
        return self._run(request, JOB_ACTIONS["retry"], queryset)

    @admin.action(description="Release selected held jobs", permissions=["change"])
    def release_jobs(self, request, queryset):
        return self._run(request, JOB_ACTIONS["release"], queryset)

    @admin.action(description="Re-queue selected jobs on another host…", permissions=["change"])
    def requeue_jobs(self, request, queryset):
        action = JOB_ACTIONS["requeue"]
        host = self._chosen_host(request)
        if host is None:
            return self._confirm(request, action, queryset)
        return self._run(request, action, queryset, host=host)

    @admin.action(description="Run selected jobs again (duplicate)", permissions=["add"])
    def duplicate_jobs(self, request, queryset):
        return self._run(request, JOB_ACTIONS["duplicate"], queryset)

    @admin.action(description="Delete selected jobs…", permissions=["delete"])
    def delete_jobs(self, request, queryset):
        action = JOB_ACTIONS["delete"]
        if request.POST.get("confirmed") != "yes":
            return self._confirm(request, action, queryset)
        return self._run(request, action, queryset)

    def _run(self, request, action: JobAction, jobs: QuerySet, **options) -> None:
        if not self._allowed(request, action):
            raise PermissionDenied
        self._report(request, action, action.run(jobs, request, **options))

    def _report(self, request, action: JobAction, result: bulk.BulkResult):
        report(self, request, action, result)

    def _chosen_host(self, request) -> ExecutorHost | None:
        name = request.POST.get("host")
        return ExecutorHost.objects.filter(name=name).first() if name else None

    def _confirm(self, request, action: JobAction, queryset):
        """The page that asks before an action runs (delete) or what it needs (a host)."""
        shown = list(queryset.select_related("host")[:100])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.label}: {len(shown)} job{'' if len(shown) == 1 else 's'}",
            "action": action,
            "action_name": f"{action.name}_jobs",
            "jobs": shown,
            "more": max(0, queryset.count() - len(shown)),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "hosts": ExecutorHost.objects.filter(is_active=True).order_by("name")
            if action.name == "requeue"
            else [],
        }
        return TemplateResponse(
            request, "admin/container_manager/containerjob/confirm_action.html", context
        )

    # -- a job's page ----------------------------------------------------------------------

    def get_urls(self):
        own = [
            path(
                "<path:object_id>/live/",
                self.admin_site.admin_view(self.live_view),
                name="container_manager_containerjob_live",
            ),
            path(
                "<path:object_id>/do/<str:action_name>/",
                self.admin_site.admin_view(self.action_view),
                name="container_manager_containerjob_action",
            ),
        ]
        return own + super().get_urls()

    def _job(self, request, object_id) -> ContainerJob:
        job = self.get_object(request, unquote(object_id))
        if job is None:
            raise Http404(f"no job with id {object_id!r}")
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        return job

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, unquote(object_id)) if object_id else None
        if job is None or job.status == JobStatus.PENDING:
            return super().change_view(request, object_id, form_url, extra_context)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"], "a job that has left pending is not edited")
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        return self.operator_view(request, job)

    def operator_view(self, request, job: ContainerJob):
        attempts = list(job.attempt_set.select_related("host", "worker"))
        offered = [
            action
            for action in JOB_ACTIONS.values()
            if job.status in action.offered_for and self._allowed(request, action)
        ]
        environment = job.get_environment_display()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": job,
            "title": job.name or f"Job {str(job.pk)[:8]}",
            "job": job,
            "badge": display.status_badge(job),
            "duration": display.duration(job),
            "now": display.iso(timezone.now()),
            "requested": describe_request(job),
            "environment": sorted(environment.items()),
            "confinement": display.confinement(job),
            "peak_memory": display.size(job.peak_memory_bytes),
            "cpu_time": display.cpu_time(job.cpu_seconds),
            # (label, value, element id: job.js updates the moments that move)
            "timeline": [
                ("Created", display.when(job.created_at), ""),
                ("Scheduled for", display.when(job.scheduled_for), ""),
                ("Queued", display.when(job.queued_at), ""),
                ("Started", display.when(job.started_at), "cm-started"),
                ("Finished", display.when(job.finished_at), "cm-finished"),
            ],
            "waiting": why_waiting(job),
            "attempts": attempts,
            "webhook_url": job.webhook_target,
            "deliveries": list(job.webhook_deliveries.all()),
            "actions": offered,
            "hosts": ExecutorHost.objects.filter(is_active=True).order_by("name"),
            "live_url": reverse("admin:container_manager_containerjob_live", args=[job.pk]),
            "array": display.array_membership(job),
            "schedule": display.schedule_run(job),
            "has_change_permission": False,
        }
        return TemplateResponse(
            request, "admin/container_manager/containerjob/operator.html", context
        )

    def live_view(self, request, object_id):
        """The job's state and its output since ``offset``, for the page's log panel."""
        job = self._job(request, object_id)
        try:
            offset = max(0, int(request.GET.get("offset", "0")))
        except ValueError:
            offset = 0
        if request.GET.get("execution") != job.get_execution_identifier():
            offset = 0  # another attempt: its output starts afresh
        live = read_live_output(job, offset)
        data = {
            "status": job.status,
            "status_display": job.get_status_display(),
            "cancelling": bool(job.cancel_requested_at) and not job.is_terminal,
            "terminal": job.is_terminal,
            "now": display.iso(timezone.now()),
            "started_at": display.iso(job.started_at),
            "finished_at": display.iso(job.finished_at),
            "started": display.when(job.started_at),
            "finished": display.when(job.finished_at),
            "exit_code": job.exit_code,
            "attempts": f"{job.attempts} of {job.max_attempts}",
            "host": job.host.name if job.host else "",
            "execution_id": job.get_execution_identifier(),
            "last_error": job.last_error,
            "waiting": why_waiting(job),
            "live": None if live is None else live.__dict__,
        }
        if job.is_terminal:
            data["stdout"], data["stderr"] = job.stdout, job.stderr
        return JsonResponse(data)

    def action_view(self, request, object_id, action_name):
        """An action asked from a job's page: it runs, reports, and comes back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job(request, object_id)
        action = JOB_ACTIONS.get(action_name)
        if action is None:
            raise Http404(f"no action {action_name!r}")
        options = {}
        if action.name == "requeue":
            options["host"] = self._chosen_host(request)
            if options["host"] is None:
                self.message_user(request, "Choose a host to re-queue the job on.", messages.ERROR)
                return HttpResponseRedirect(self._page(job))
        self._run(request, action, ContainerJob.objects.filter(pk=job.pk), **options)
        if action.name == "delete" and not ContainerJob.objects.filter(pk=job.pk).exists():
            return HttpResponseRedirect(reverse("admin:container_manager_containerjob_changelist"))
        return HttpResponseRedirect(self._page(job))

    def _page(self, job) -> str:
        return reverse("admin:container_manager_containerjob_change", args=[job.pk])

    # -- the edit form of a held job --------------------------------------------------------

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            obj.save()
        else:
            # Write only what was edited, never the outcome a worker may be writing now.
            obj.save(update_fields=form.changed_data)

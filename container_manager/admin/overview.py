"""The queue overview page, listed in the admin index as "Queue overview".

It is the changelist of a proxy model, so the admin index links to it like to any model;
anyone who may view jobs may view it. What it shows comes from ``overview.queue_overview``,
whose queries all read indexes (fast with millions of jobs).
"""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone

from ..conf import setting
from ..models import ExecutorHost, QueueOverview
from ..overview import queue_overview
from ..states import JobStatus
from ..units import human_duration
from . import display


@admin.register(QueueOverview)
class QueueOverviewAdmin(admin.ModelAdmin):
    def _may_view(self, request) -> bool:
        return request.user.has_perm("container_manager.view_containerjob")

    def has_view_permission(self, request, obj=None):
        return self._may_view(request)

    def has_module_permission(self, request):
        return self._may_view(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        # Only the page itself: there are no rows to add, change or delete.
        return super().get_urls()[:1]

    def changelist_view(self, request, extra_context=None):
        if not self._may_view(request):
            raise PermissionDenied
        overview = queue_overview()
        now = overview.now
        hosts = [
            {
                "host": row.host,
                "running": row.running,
                "capacity": row.host.max_concurrent_jobs,
                "percent": min(
                    100, round(100 * row.running / max(row.host.max_concurrent_jobs, 1))
                ),
                "queued": row.by_status.get(JobStatus.QUEUED, 0),
                "health": row.host.health_status,
                "checked": display.when(row.host.last_health_check),
                "is_chain": bool(row.host.member_names),
            }
            for row in overview.hosts
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Queue overview",
            "overview": overview,
            "statuses": [
                (JobStatus(status).label, status, count)
                for status, count in overview.unfinished.items()
            ],
            "finished": [
                (JobStatus(status).label, status, overview.finished_last_hour.get(status, 0))
                for status in (
                    JobStatus.COMPLETED,
                    JobStatus.FAILED,
                    JobStatus.TIMED_OUT,
                    JobStatus.CANCELLED,
                )
            ],
            "oldest_ready_age": (
                human_duration(overview.oldest_ready_age) if overview.oldest_ready_age else "—"
            ),
            "hosts": hosts,
            "unrouted": sum(overview.unrouted.values()),
            "failures": overview.recent_failures,
            "workers": [
                {
                    "worker": worker,
                    "heartbeat_age": human_duration(now - worker.last_heartbeat),
                    "started": display.when(worker.started_at),
                }
                for worker in overview.workers
            ],
            "worker_timeout": setting("WORKER_TIMEOUT"),
            "healthy": ExecutorHost.Health.HEALTHY,
            "generated": display.when(timezone.now()),
        }
        return TemplateResponse(request, "admin/container_manager/queue_overview.html", context)

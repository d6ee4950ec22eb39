"""What operators ask of the queue: how it is doing, and why a given job is still waiting.

Every query here is answered from an index, so the queue overview stays fast however many
finished jobs the table keeps: jobs still to run or running are few and counted exactly by
status and host (``cm_job_status_host_idx``); finished ones are counted over the last hour
(``cm_job_finished_idx``) and the latest failures read from their own partial index.
The finished jobs of all time are not counted: with millions of rows that alone would cost
more than everything else on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

from .models import ContainerJob, ExecutorHost, Worker
from .queue import live_workers, ready_jobs, routable_hosts
from .routing import route
from .states import ACTIVE, TERMINAL, JobStatus
from .units import local_time

UNFINISHED = [status for status in JobStatus.values if status not in TERMINAL]
FAILURES = [JobStatus.FAILED, JobStatus.TIMED_OUT]
RECENT_FAILURES = 10


@dataclass
class HostRow:
    host: ExecutorHost
    running: int  # launching or running now
    by_status: dict[str, int]  # unfinished jobs on (or routed to) this host, by status


@dataclass
class QueueSnapshot:
    now: datetime
    unfinished: dict[str, int]  # status -> jobs, every status not yet final
    finished_last_hour: dict[str, int]  # final status -> jobs that ended in the last hour
    hosts: list[HostRow]
    unrouted: dict[str, int]  # unfinished jobs with no host yet (routing picks at launch)
    oldest_ready_since: datetime | None  # when the longest-waiting ready job became ready
    recent_failures: list[ContainerJob]
    workers: list[Worker]  # alive: heartbeat within WORKER_TIMEOUT

    @property
    def oldest_ready_age(self) -> timedelta | None:
        return None if self.oldest_ready_since is None else self.now - self.oldest_ready_since

    @property
    def throughput_last_hour(self) -> int:
        return sum(self.finished_last_hour.values())

    @property
    def failures_last_hour(self) -> int:
        return sum(self.finished_last_hour.get(status, 0) for status in FAILURES)


def queue_overview() -> QueueSnapshot:
    now = timezone.now()
    unfinished: dict[str, int] = dict.fromkeys(UNFINISHED, 0)
    by_host: dict[int | None, dict[str, int]] = {}
    rows = (
        ContainerJob.objects.filter(status__in=UNFINISHED)
        .order_by()
        .values_list("host", "status")
        .annotate(jobs=Count("*"))
    )
    for host_id, status, jobs in rows:
        unfinished[status] += jobs
        by_host.setdefault(host_id, {})[status] = jobs
    hosts = [
        HostRow(
            host=host,
            running=sum(by_host.get(host.pk, {}).get(status, 0) for status in ACTIVE),
            by_status=by_host.get(host.pk, {}),
        )
        for host in ExecutorHost.objects.all()
    ]
    finished = (
        ContainerJob.objects.filter(finished_at__gte=now - timedelta(hours=1))
        .order_by()
        .values_list("status")
        .annotate(jobs=Count("*"))
    )
    return QueueSnapshot(
        now=now,
        unfinished=unfinished,
        finished_last_hour=dict(finished.values_list("status", "jobs")),
        hosts=hosts,
        unrouted=by_host.get(None, {}),
        oldest_ready_since=ready_jobs().aggregate(since=Min("scheduled_for"))["since"],
        recent_failures=list(
            ContainerJob.objects.filter(status__in=FAILURES, finished_at__isnull=False)
            .select_related("host")
            .order_by("-finished_at")[:RECENT_FAILURES]
        ),
        workers=list(live_workers()),
    )


def why_waiting(job: ContainerJob) -> list[str]:
    """Why a job that is not running yet has not started, one reason a sentence.

    Empty for a job that is running or has ended.
    """
    now = timezone.now()
    if job.status == JobStatus.PENDING:
        if waits_for := job.waits_for(most=10):
            return [
                f"It waits for the jobs it depends on: {waits_for}. Workers queue it once "
                "they have all completed, and fail it if one of them does not."
            ]
        if job.depends_on.exists():
            return ["The jobs it depends on have completed: a worker queues it within a second."]
        return ["It is held: it runs once released (Release)."]
    if job.status == JobStatus.RETRYING:
        due = local_time(job.scheduled_for)
        return [f"It waits to retry: attempt {job.attempts + 1} is due at {due}."]
    if job.status != JobStatus.QUEUED:
        return []
    reasons = []
    if job.scheduled_for > now:
        reasons.append(f"It is scheduled for {local_time(job.scheduled_for)}.")
    if not live_workers().exists():
        reasons.append("No worker is alive: start one with manage.py process_container_jobs.")
    hosts = routable_hosts()
    chosen = route(job, hosts, {host.pk: host.load for host in hosts})
    if chosen.host is None:
        reasons.append(f"It cannot start yet: {chosen.reason}.")
    elif not reasons:
        ahead = ready_jobs().filter(_ahead_of(job)).count()
        reasons.append(
            f"{chosen.host.name} can take it now; {ahead} ready "
            f"job{' is' if ahead == 1 else 's are'} ahead of it in the queue."
        )
    return reasons


def _ahead_of(job: ContainerJob) -> Q:
    """Ready jobs a worker takes before ``job``: the claim's order (priority, time, age)."""
    same_priority = Q(priority=job.priority)
    return (
        Q(priority__gt=job.priority)
        | (same_priority & Q(scheduled_for__lt=job.scheduled_for))
        | (same_priority & Q(scheduled_for=job.scheduled_for, created_at__lt=job.created_at))
    )

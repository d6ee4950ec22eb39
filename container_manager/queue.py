"""Claiming: handing each ready job to exactly one worker.

A claim is one short transaction that moves jobs from ``queued`` to ``launching`` with a
conditional UPDATE (``WHERE status = 'queued'``), so a job can only be claimed once whatever
the database. On PostgreSQL the candidate rows are also locked with
``SELECT … FOR UPDATE SKIP LOCKED``, so concurrent workers skip each other's candidates instead
of queueing behind them. On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (see the
example settings), which takes the database's single write lock up front: claims from several
processes run one after another, never interleaved.

No executor is ever called inside a claim transaction.
"""

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from .conf import setting
from .models import ContainerJob, ExecutorHost, JobAttempt, Worker
from .routing import choose_host
from .states import ACTIVE, JobStatus


def ready_jobs(host_ids=None):
    """Queued jobs whose time has come, best first; those waiting for an unhealthy host, held
    until a health check passes, are not ready."""
    now = timezone.now()
    jobs = ContainerJob.objects.filter(status=JobStatus.QUEUED, scheduled_for__lte=now).exclude(
        host__health_status=ExecutorHost.Health.UNHEALTHY
    )
    if host_ids is not None:
        jobs = jobs.filter(host__in=host_ids)
    return jobs.order_by("-priority", "scheduled_for", "created_at")


def host_loads(host_ids) -> dict[int, int]:
    rows = (
        ContainerJob.objects.filter(host__in=host_ids, status__in=ACTIVE)
        .values("host")
        .annotate(n=Count("pk"))
    )
    return {row["host"]: row["n"] for row in rows}


def claim_jobs(worker: Worker, limit: int, host_ids=None) -> list[ContainerJob]:
    """Claim up to ``limit`` ready jobs for ``worker``, within each host's concurrency limit."""
    if limit <= 0:
        return []
    claimed = []
    with transaction.atomic():
        candidates = ready_jobs(host_ids).select_related("host")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        # Look past jobs whose host is full, but not through the whole backlog.
        candidates = list(candidates[: limit * 4])
        for job in candidates:
            if job.host is None:
                job.host = choose_host()
        hosts = {job.host.pk: job.host for job in candidates}
        if connection.features.has_select_for_update:
            # Counting a host's running jobs and adding to them must not interleave with
            # another worker doing the same, or both could fill its last slot.
            list(ExecutorHost.objects.select_for_update().filter(pk__in=hosts).order_by("pk"))
        loads = host_loads(hosts)
        for job in candidates:
            if len(claimed) == limit:
                break
            host = hosts[job.host.pk]
            if not host.is_active or loads.get(host.pk, 0) >= host.max_concurrent_jobs:
                continue
            if job.transition(
                JobStatus.LAUNCHING, host=host, worker=worker, attempts=job.attempts + 1
            ):
                JobAttempt.objects.create(job=job, number=job.attempts, host=host, worker=worker)
                loads[host.pk] = loads.get(host.pk, 0) + 1
                claimed.append(job)
    return claimed


def promote_due_retries() -> int:
    """Queue again the jobs whose retry delay has passed."""
    now = timezone.now()
    return ContainerJob.objects.filter(status=JobStatus.RETRYING, scheduled_for__lte=now).update(
        status=JobStatus.QUEUED, queued_at=now
    )


def lost_workers():
    """Workers that stopped, or whose heartbeat is older than WORKER_TIMEOUT."""
    silent_since = timezone.now() - timedelta(seconds=setting("WORKER_TIMEOUT"))
    return Worker.objects.filter(Q(stopped_at__isnull=False) | Q(last_heartbeat__lt=silent_since))


def orphaned_jobs(host_ids=None):
    orphans = ContainerJob.objects.filter(status__in=ACTIVE).filter(
        Q(worker__isnull=True) | Q(worker__in=lost_workers())
    )
    if host_ids is not None:
        orphans = orphans.filter(host__in=host_ids)
    return orphans


def adopt_orphans(worker: Worker, limit: int, host_ids=None) -> list[ContainerJob]:
    """Take over up to ``limit`` active jobs whose worker is gone or let go of them.

    Each is taken with a conditional update on its current worker, so two live workers
    cannot both adopt the same job.
    """
    if limit <= 0:
        return []
    adopted = []
    for job in orphaned_jobs(host_ids).select_related("host")[:limit]:
        taken = ContainerJob.objects.filter(
            pk=job.pk, status=job.status, worker=job.worker_id
        ).update(worker=worker)
        if taken:
            job.worker = worker
            adopted.append(job)
    return adopted


def owned_jobs(worker: Worker):
    """The jobs ``worker`` holds: each should have a runner thread in that worker."""
    return ContainerJob.objects.filter(worker=worker, status__in=ACTIVE).select_related("host")


def release_jobs(worker: Worker) -> int:
    """Let go of this worker's active jobs, for another worker to re-attach to."""
    return ContainerJob.objects.filter(worker=worker, status__in=ACTIVE).update(worker=None)


def has_pending_work(host_ids=None) -> bool:
    """Whether a job is ready to claim, waiting for its retry, or running anywhere.

    Jobs other workers run count too: should their worker die, they need adopting.
    """
    jobs = ready_jobs(host_ids).filter(Q(host__isnull=True) | Q(host__is_active=True))
    unfinished = ContainerJob.objects.filter(status__in=[JobStatus.RETRYING, *ACTIVE])
    if host_ids is not None:
        unfinished = unfinished.filter(host__in=host_ids)
    return jobs.exists() or unfinished.exists()


def active_hosts(names=None):
    hosts = ExecutorHost.objects.filter(is_active=True)
    if names:
        hosts = hosts.filter(name__in=names)
    return hosts

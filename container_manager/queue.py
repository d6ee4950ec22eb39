"""Claiming: handing each ready job to exactly one worker.

A claim is one short transaction that moves jobs from ``queued`` to ``launching`` with a
conditional UPDATE (``WHERE status = 'queued'``), so a job can only be claimed once whatever
the database. On PostgreSQL the candidate rows are also locked with
``SELECT … FOR UPDATE SKIP LOCKED``, so concurrent workers skip each other's candidates instead
of queueing behind them. On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (see the
example settings), which takes the database's single write lock up front: claims from several
processes run one after another, never interleaved.

A job array's ``parallelism`` is enforced in the same transaction: members of arrays already
at their limit are left out in SQL, and the arrays of the members a claim looks at are locked
and their running members counted after the lock, with the members this claim takes added.

No executor is ever called inside a claim transaction.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .conf import setting
from .models import ContainerJob, ExecutorHost, JobArray, JobAttempt, Worker
from .routing import route
from .states import ACTIVE, RETRYABLE, JobStatus

if TYPE_CHECKING:
    from .models import HostWithLoad


def ready_jobs():
    """Queued jobs whose time has come, best first."""
    now = timezone.now()
    jobs = ContainerJob.objects.filter(status=JobStatus.QUEUED, scheduled_for__lte=now)
    return jobs.order_by("-priority", "scheduled_for", "created_at")


def routable_hosts(host_ids=None, lock=False) -> list[HostWithLoad]:
    """Active hosts with their loads; ``host_ids`` limits them to a worker's own hosts (a chain
    counts when one of its members does). ``lock``: no other claim counts and adds to these
    loads until this transaction ends, or two could fill a host's last slot.

    The loads are counted by a statement of their own, after the lock is held: counted in the
    locking statement, they would be as of its snapshot, taken before the wait for the lock
    (PostgreSQL's READ COMMITTED), and miss the claims it waited for."""
    active = ExecutorHost.objects.filter(is_active=True).order_by("pk")
    if lock and connection.features.has_select_for_update:
        list(active.select_for_update().values_list("pk"))
    hosts: list[HostWithLoad] = list(active.with_load())
    if host_ids is not None:
        mine = {host.name for host in hosts if host.pk in host_ids}
        hosts = [h for h in hosts if h.name in mine or mine & set(h.member_names)]
    return hosts


def claimable(hosts: list[HostWithLoad]):
    """Ready jobs that may be routed to one of ``hosts``: any unpinned job, or one that asks
    for one of them (or for a chain among them) while it is healthy and has a free slot.
    Filtered in SQL, so jobs waiting for a full or unhealthy host, or for their array's
    running members to end (``JobArray.parallelism``), do not crowd out the rest."""
    open_hosts = [
        h.pk
        for h in hosts
        if h.health_status != ExecutorHost.Health.UNHEALTHY
        and (h.member_names or h.load < h.max_concurrent_jobs)
    ]
    ready = ready_jobs().filter(Q(requested_host__isnull=True) | Q(requested_host__in=open_hosts))
    return ready.exclude(array__in=JobArray.objects.full())


def claim_jobs(worker: Worker, limit: int, host_ids=None, look_first=True) -> list[ContainerJob]:
    """Claim up to ``limit`` ready jobs for ``worker``, each routed to a fit host.

    ``look_first``: look whether any job is ready before locking the hosts; a caller that
    knows there may be one (its last claim took all it asked for, or a job was just queued)
    saves the look."""
    # An empty queue is the usual answer of an idle worker: one look at the ready-jobs index,
    # without locking the hosts or counting their loads on every turn of every idle worker.
    if limit <= 0 or (look_first and not ready_jobs().exists()):
        return []
    claimed: list[ContainerJob] = []
    with transaction.atomic():
        hosts = routable_hosts(host_ids, lock=True)
        candidates = claimable(hosts).select_related("requested_host")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        loads = {host.pk: host.load for host in hosts}
        # Look past jobs no host can take now, but not through the whole backlog.
        window = list(candidates[: limit * 4])
        # Counted after the hosts' lock, as the loads are; only when a candidate is a member
        # of an array, so a claim of other jobs costs no statement more.
        array_ids = {job.array_id for job in window if job.array_id is not None}
        slots = JobArray.objects.free_slots(array_ids) if array_ids else {}
        for job in window:
            if len(claimed) == limit:
                break
            if slots.get(job.array_id, 1) <= 0:
                continue  # its array runs as many members as it may
            chosen = route(job, hosts, loads)
            if chosen.host is None:
                continue
            if job.transition(
                JobStatus.LAUNCHING, host=chosen.host, worker=worker, attempts=job.attempts + 1
            ):
                JobAttempt.objects.create(
                    job=job,
                    number=job.attempts,
                    host=chosen.host,
                    worker=worker,
                    routing=chosen.reason,
                )
                loads[chosen.host.pk] = loads.get(chosen.host.pk, 0) + 1
                if job.array_id in slots:
                    slots[job.array_id] -= 1
                claimed.append(job)
    return claimed


def reroute(job: ContainerJob, tried: list[int], why: str):
    """Move a launching job's attempt to another fit host after ``why`` made its host fail
    it; None when no other host is fit (the caller gives the claim back)."""
    with transaction.atomic():
        hosts = routable_hosts(lock=True)
        loads = {host.pk: host.load for host in hosts}
        chosen = route(job, hosts, loads, exclude=tried)
        if chosen.host is None:
            return None
        attempt = JobAttempt.objects.select_for_update().get(job=job, number=job.attempts)
        # A launching job has the host its claim routed it to: the one that failed it.
        assert job.host is not None, f"launching job {job.pk} has no host"
        failed_on = job.host.name
        if not job.transition(JobStatus.LAUNCHING, host=chosen.host):
            return None
        attempt.tries = [*attempt.tries, {"host": failed_on, "error": why}]
        attempt.host, attempt.routing = chosen.host, chosen.reason
        attempt.save(update_fields=["tries", "host", "routing"])
    return chosen


def promote_due_retries(batch: int = 500) -> int:
    """Queue again the jobs whose retry delay has passed (at most ``batch`` a call), each
    with its own conditional move, so each is announced once (``signals``)."""
    now = timezone.now()
    due = ContainerJob.objects.filter(status=JobStatus.RETRYING, scheduled_for__lte=now)
    due = due.without_output().order_by("scheduled_for")
    return sum(job.transition(JobStatus.QUEUED, queued_at=now) for job in due[:batch])


# The failure kind of a job failed unrun because a job it depends on did not complete.
DEPENDENCY = "dependency"


def settle_dependents(batch: int = 500) -> int:
    """Move the jobs waiting for others whose wait is over: queued once every job they
    depend on completed, failed unrun once one of them ended otherwise. Returns how many."""
    waiting = ContainerJob.objects.filter(status=JobStatus.PENDING, depends_on__isnull=False)
    if not waiting.exists():
        return 0
    now = timezone.now()
    moved = 0
    failed = waiting.filter(depends_on__status__in=RETRYABLE).distinct()
    for job in failed.without_output()[:batch]:
        culprit = job.depends_on.filter(status__in=RETRYABLE).order_by("finished_at").first()
        assert culprit is not None  # the query found one
        why = (
            f"not run: job {culprit.pk} ({culprit.name or culprit.image}), which it depends "
            f"on, ended {culprit.status}"
        )
        moved += job.transition(
            JobStatus.FAILED, last_error=why, failure_kind=DEPENDENCY, finished_at=now
        )
    not_completed = [status for status in JobStatus.values if status != JobStatus.COMPLETED]
    ready = waiting.exclude(depends_on__status__in=not_completed).distinct()
    for job in ready.without_output()[:batch]:
        moved += job.transition(JobStatus.QUEUED)
    return moved


def _silent_since():
    """A worker whose last heartbeat is older than this is presumed dead."""
    return timezone.now() - timedelta(seconds=setting("WORKER_TIMEOUT"))


def lost_workers():
    """Workers that stopped, or whose heartbeat is older than WORKER_TIMEOUT."""
    return Worker.objects.filter(
        Q(stopped_at__isnull=False) | Q(last_heartbeat__lt=_silent_since())
    )


def live_workers():
    """Workers still running, whose heartbeat is within WORKER_TIMEOUT."""
    return Worker.objects.filter(stopped_at__isnull=True, last_heartbeat__gte=_silent_since())


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
    """Whether a job is ready for a host this worker may use, waiting for its retry, or
    running anywhere on those hosts.

    Jobs other workers run count too: should their worker die, they need adopting. A ready
    job that no host is fit for (all unhealthy, say) does not: it waits for a health check.
    """
    hosts = routable_hosts(host_ids)
    unfinished = ContainerJob.objects.filter(status__in=[JobStatus.RETRYING, *ACTIVE])
    if host_ids is not None:
        unfinished = unfinished.filter(host__in=host_ids)
    if unfinished.exists():
        return True
    loads = {host.pk: host.load for host in hosts}
    ready = claimable(hosts).select_related("requested_host")[:100]
    return any(route(job, hosts, loads).host is not None for job in ready)


def active_hosts(names=None):
    hosts = ExecutorHost.objects.filter(is_active=True)
    if names:
        hosts = hosts.filter(name__in=names)
    return hosts

"""Our side of bench/run.py: hosts, worker processes and jobs, seen as a client sees them.

Django must be set up (common.setup_django) before any of these is called.
"""

import random
import time

from common import clone_jobs, start_worker, stop, wait_for

# Bounds every wait on our jobs: a stuck worker fails the run, it never hangs it.
JOB_TIMEOUT = 300


def mock_host(name="bench-mock"):
    from container_manager.models import ExecutorHost

    # A host limit far above what the workers run: the workers' own limits are measured.
    return ExecutorHost.objects.create(name=name, executor_type="mock", max_concurrent_jobs=1000)


def docker_host(name="bench-docker"):
    from container_manager.models import ExecutorHost

    return ExecutorHost.objects.create(
        name=name,
        executor_type="docker",
        executor_config={"pull_policy": "never"},
        max_concurrent_jobs=1000,
    )


def held_template(host):
    """A held job, never run, that clone_jobs copies."""
    from container_manager.api import create_job

    return create_job("bench", ["true"], host=host, hold=True, name="bench")


def start_workers(host, count=1, *args, env=None):
    """``count`` workers for ``host``, returned once each has its row and has settled into
    waiting (LISTEN set up, first looks for work done)."""
    from container_manager.models import Worker

    Worker.objects.all().delete()
    workers = [start_worker("--host", host.name, *args, env=env) for _ in range(count)]

    def registered():
        if any(worker.poll() is not None for worker in workers):
            raise RuntimeError("a worker exited at start")
        return Worker.objects.filter(stopped_at__isnull=True).count()

    try:
        wait_for(lambda: registered() >= count, timeout=90, interval=0.1)
    except BaseException:
        stop(*workers)
        raise
    time.sleep(1.0)
    return workers


def unfinished(ids=None):
    from container_manager.models import ContainerJob
    from container_manager.states import ACTIVE, JobStatus

    jobs = ContainerJob.objects.filter(status__in=[JobStatus.QUEUED, *ACTIVE])
    return jobs if ids is None else jobs.filter(pk__in=ids)


def wait_done(ids=None, interval=0.01) -> None:
    """Until none of the jobs (all but held ones, by default) is left to run; then each
    must have completed."""
    from container_manager.models import ContainerJob

    wait_for(lambda: not unfinished(ids).exists(), timeout=JOB_TIMEOUT, interval=interval)
    jobs = ContainerJob.objects.exclude(status__in=["completed", "pending"])
    if ids is not None:
        jobs = jobs.filter(pk__in=ids)
    if failed := jobs.first():
        raise RuntimeError(f"job {failed.pk} ended {failed.status}: {failed.last_error}")


def drain(template, jobs: int) -> float:
    """Queue ``jobs`` copies of ``template`` in one INSERT; seconds until all are done."""
    started = time.perf_counter()
    clone_jobs(template, jobs)
    wait_done()
    return time.perf_counter() - started


def pickup(host, jobs: int) -> dict:
    """Jobs created one at a time at random moments, so the worker is idle for each: ms
    from the create_job call to the claim (the attempt's start) and to the job running."""
    from container_manager.api import create_job
    from container_manager.models import ContainerJob, JobAttempt

    created = {}
    for _ in range(jobs):
        time.sleep(random.uniform(0.05, 0.3))
        called = time.time()  # wall clock: compared with times the worker wrote
        created[create_job("bench", ["true"], host=host).pk] = called
    wait_done(list(created), interval=0.05)
    claimed = dict(JobAttempt.objects.filter(job__in=created).values_list("job", "started_at"))
    running = dict(ContainerJob.objects.filter(pk__in=created).values_list("pk", "started_at"))
    return {
        "claimed_ms": [(claimed[pk].timestamp() - t) * 1000 for pk, t in created.items()],
        "running_ms": [(running[pk].timestamp() - t) * 1000 for pk, t in created.items()],
    }


def docker_one(host, image, command) -> float:
    """One job, created and followed as a client would: ms until it is seen finished."""
    from container_manager.api import create_job
    from container_manager.models import ContainerJob
    from container_manager.states import TERMINAL

    started = time.perf_counter()
    job = create_job(image, command, host=host)
    status = ContainerJob.objects.filter(pk=job.pk).values_list("status", flat=True)
    wait_for(lambda: status.all()[0] in TERMINAL, timeout=60, interval=0.005)
    elapsed = (time.perf_counter() - started) * 1000
    if (ended := status.all()[0]) != "completed":
        raise RuntimeError(f"docker job {job.pk} ended {ended}")
    return elapsed


def docker_many(host, image, command, jobs: int) -> float:
    """``jobs`` jobs created one after another: seconds until all are seen finished."""
    from container_manager.api import create_job

    started = time.perf_counter()
    ids = [create_job(image, command, host=host).pk for _ in range(jobs)]
    wait_done(ids)
    return time.perf_counter() - started


def claim_times(host_pk, worker_pk, claims: int) -> list[float]:
    """ms for each of ``claims`` claims of one job, as a worker's turn makes them (in this
    process, on the database Django points at)."""
    from django.utils import timezone

    from container_manager.models import ContainerJob, Worker
    from container_manager.queue import claim_jobs

    worker = Worker.objects.get(pk=worker_pk)
    times = []
    for turn in range(claims + 1):  # the first one opens the connection: not timed
        started = time.perf_counter()
        (job,) = claim_jobs(worker, 1, [host_pk])
        if turn:
            times.append((time.perf_counter() - started) * 1000)
        # Finished at once, so the host's load (counted by each claim) stays the same.
        ContainerJob.objects.filter(pk=job.pk).update(
            status="completed", finished_at=timezone.now()
        )
    return times

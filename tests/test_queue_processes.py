"""Several real worker processes sharing one database (the queue logic, on mock jobs)."""

import signal
import time

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from container_manager import notify
from container_manager.api import create_job, wait_for_job
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, Worker

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def wait_until(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_four_workers_run_each_of_many_jobs_exactly_once(worker_processes):
    # 1,000 jobs on PostgreSQL; SQLite serialises every write, so it gets fewer.
    count = 1000 if connection.vendor == "postgresql" else 200
    host = ExecutorHost.objects.create(name="mock", executor_type="mock", max_concurrent_jobs=50)
    # Held until all four workers are up: one that starts late would find the work done.
    ContainerJob.objects.bulk_create(
        ContainerJob(image="img", command=[str(i)], host=host, status="pending")
        for i in range(count)
    )
    for _ in range(4):
        worker_processes.start("--poll-interval", "0.1", "--max-concurrent", "8")
    assert wait_until(lambda: Worker.objects.count() == 4, 60), worker_processes.logs()
    ContainerJob.objects.update(status="queued", queued_at=timezone.now())
    ended = ContainerJob.objects.filter(status__in=["completed", "failed"])
    assert wait_until(lambda: ended.count() == count, 240), worker_processes.logs()[-5000:]
    for proc in worker_processes.procs:
        proc.send_signal(signal.SIGTERM)
    for proc in worker_processes.procs:
        assert proc.wait(60) == 0, worker_processes.logs()

    statuses = dict(ContainerJob.objects.values_list("status").annotate(n=Count("pk")))
    assert statuses == {"completed": count}, worker_processes.logs()[-5000:]
    assert JobAttempt.objects.count() == count
    assert not JobAttempt.objects.values("job").annotate(n=Count("pk")).filter(n__gt=1).exists()
    assert ContainerJob.objects.values("execution_id").distinct().count() == count
    # Every worker took part. SQLite hands its one write lock to whichever waiter retries
    # first, so on a loaded machine a worker may win none of 200 claims: there, that the
    # work was shared is all that can be asked.
    workers_that_ran_jobs = JobAttempt.objects.values("worker").distinct().count()
    if connection.vendor == "postgresql":
        assert workers_that_ran_jobs == 4
    else:
        assert workers_that_ran_jobs >= 2


def test_per_host_limit_holds_across_workers(worker_processes):
    host = ExecutorHost.objects.create(
        name="narrow",
        executor_type="mock",
        max_concurrent_jobs=2,
        executor_config={"duration_seconds": 0.3},
    )
    for i in range(10):
        create_job("img", [str(i)], host=host)
    for _ in range(3):
        worker_processes.start("--until-idle", "--poll-interval", "0.05")
    peak = 0
    while any(p.poll() is None for p in worker_processes.procs):
        running = ContainerJob.objects.filter(host=host, status__in=["launching", "running"])
        peak = max(peak, running.count())
        time.sleep(0.02)
    assert peak <= 2
    assert ContainerJob.objects.filter(status="completed").count() == 10


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_new_job_is_picked_up_at_once_through_notify(worker_processes):
    host = ExecutorHost.objects.create(name="mock", executor_type="mock")
    worker_processes.start("--poll-interval", "60")
    time.sleep(2)  # let it start and go to sleep on its 60 s poll
    job = create_job("img", host=host)
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "completed", 10), (
        worker_processes.logs()
    )


def test_sigterm_stops_a_worker_cleanly(worker_processes):
    import signal

    proc = worker_processes.start("--poll-interval", "0.1")
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, worker_processes.logs()
    assert "stopped after" in worker_processes.logs()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_without_listen_notify_a_job_waits_for_the_poll(worker_processes):
    host = ExecutorHost.objects.create(name="mock", executor_type="mock")
    worker_processes.start(
        "--poll-interval", "60", env={"CONTAINER_MANAGER_SETTINGS": '{"LISTEN_NOTIFY": false}'}
    )
    time.sleep(2)
    job = create_job("img", host=host)
    assert not wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status != "queued", 3)


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_caller_waiting_on_a_job_is_woken_by_its_ending(worker_processes, monkeypatch):
    """Through the job-ended notification: with looks at the job a minute apart, only the
    notification can end the wait within the timeout."""
    host = ExecutorHost.objects.create(
        name="mock", executor_type="mock", executor_config={"duration_seconds": 1}
    )
    worker_processes.start("--poll-interval", "0.1")
    job = create_job("img", host=host)
    monkeypatch.setattr(notify, "ENDED_RECHECK_SECONDS", 60)
    started = time.monotonic()
    assert wait_for_job(job, timeout=30, interval=60).status == "completed"
    assert time.monotonic() - started < 15, worker_processes.logs()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_with_listen_notify_off_a_waiting_caller_polls(settings):
    """Behind a transaction-pooling proxy a LISTEN hears nothing: callers poll instead."""
    settings.CONTAINER_MANAGER = {"LISTEN_NOTIFY": False}
    assert not notify.Listener.available()
    with notify.job_endings("a-job", poll=0.01) as pause:
        started = time.monotonic()
        pause(5)  # listening, this would wait ENDED_RECHECK_SECONDS for a notification
    assert time.monotonic() - started < 0.5

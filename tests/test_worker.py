"""The worker loop with the mock executor: queue logic, not Docker."""

import threading
import time

import pytest
from django.core.management import call_command
from django.db import connections

from container_manager.api import cancel_job, create_job, retry_job
from container_manager.launching import launch
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(worker):
    """Run a worker in a thread that closes its own database connection when done."""

    def target():
        try:
            worker.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def run_worker(**kwargs):
    kwargs.setdefault("poll_interval", 0.05)
    Worker(until_idle=True, **kwargs).run()


def test_job_goes_from_queued_to_completed_with_worker_defaults(mock_host):
    job = create_job("img", ["echo", "hi"], host=mock_host)
    call_command("process_container_jobs", "--until-idle")
    job.refresh_from_db()
    assert job.status == "completed"
    assert job.exit_code == 0
    assert job.stdout == "mock: echo hi\n"
    assert job.execution_id.startswith("mock-")
    assert job.started_at and job.finished_at and job.queued_at
    attempt = job.attempt_set.get()
    assert (attempt.number, attempt.status, attempt.execution_id) == (
        1,
        "completed",
        job.execution_id,
    )


def test_a_running_attempt_shows_the_jobs_execution_and_keeps_it_when_it_ends(db):
    """The attempt's record is written once, as it ends; until then the execution of the
    attempt under way is the job's."""
    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 1.5}
    )
    job = create_job("img", host=host)
    worker = Worker(poll_interval=0.05, until_idle=True)
    thread = in_thread(worker)
    try:
        deadline = time.monotonic() + 10
        while ContainerJob.objects.get(pk=job.pk).status != "running":
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.02)
        attempt = JobAttempt.objects.select_related("job").get(job=job)
        assert attempt.execution_id == ""
        assert attempt.known_execution_id == attempt.job.execution_id != ""
    finally:
        thread.join(20)
    attempt = JobAttempt.objects.select_related("job").get(job=job)
    assert attempt.status == "completed"
    assert attempt.execution_id == attempt.known_execution_id == attempt.job.execution_id


def test_a_failed_launch_leaves_no_execution_on_its_attempt(db):
    """A retry whose launch fails does not inherit the execution of the attempt before it."""
    host = ExecutorHost.objects.create(
        name="m", executor_type="mock", executor_config={"exit_code": 1}
    )
    job = create_job("img", host=host)
    run_worker()
    job.refresh_from_db()
    first = job.execution_id
    host.executor_config = {"launch_error": "no room"}
    host.save()
    retry_job(job)
    run_worker()
    second = JobAttempt.objects.get(job=job, number=2)
    assert (second.status, second.execution_id, second.known_execution_id) == ("failed", "", "")
    assert JobAttempt.objects.get(job=job, number=1).execution_id == first


def test_non_zero_exit_fails_with_error_on_the_job(db):
    host = ExecutorHost.objects.create(
        name="m", executor_type="mock", executor_config={"exit_code": 3, "stderr": "oops\n"}
    )
    job = create_job("img", ["x"], host=host)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.stderr) == ("failed", 3, "oops\n")
    assert job.last_error == "container exited with code 3"


def test_launch_error_is_written_on_the_job_and_worker_goes_on(db):
    bad = ExecutorHost.objects.create(
        name="bad", executor_type="mock", executor_config={"launch_error": "image 'nope' not found"}
    )
    good = ExecutorHost.objects.create(name="good", executor_type="mock")
    failing = create_job("nope", host=bad)
    fine = create_job("img", host=good)
    run_worker()
    failing.refresh_from_db()
    fine.refresh_from_db()
    assert failing.status == "failed"
    assert failing.last_error == "image 'nope' not found"
    assert failing.execution_id == ""
    assert fine.status == "completed"


def test_many_jobs_more_than_max_concurrent_all_finish(mock_host):
    mock_host.executor_config = {"duration_seconds": 0.05}
    mock_host.save()
    jobs = [create_job("img", [str(i)], host=mock_host) for i in range(12)]
    run_worker(max_concurrent=3)
    assert set(
        ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True)
    ) == {"completed"}
    assert JobAttempt.objects.count() == 12


def test_jobs_run_concurrently_not_one_after_another(db):
    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 0.5}
    )
    for i in range(4):
        create_job("img", [str(i)], host=host)
    started = time.monotonic()
    run_worker(max_concurrent=4)
    assert time.monotonic() - started < 1.5


def test_timeout_stops_the_execution(db):
    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 30}
    )
    job = create_job("img", host=host, timeout_seconds=1)
    run_worker()
    job.refresh_from_db()
    assert job.status == "timed_out"
    assert job.exit_code == 143
    assert "timed out after 1 s" in job.last_error


def test_cancel_running_job_from_outside(db, settings):
    settings.CONTAINER_MANAGER = {"CANCEL_CHECK_INTERVAL": 0.05}
    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 30}
    )
    job = create_job("img", host=host)
    worker = Worker(until_idle=True, poll_interval=0.05)
    thread = in_thread(worker)
    for _ in range(100):
        job.refresh_from_db()
        if job.status == "running":
            break
        threading.Event().wait(0.05)
    cancel_job(job)
    thread.join(10)
    assert not thread.is_alive()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert "cancelled on request" in job.last_error


def test_worker_only_runs_jobs_of_its_hosts(db):
    a = ExecutorHost.objects.create(name="a", executor_type="mock")
    b = ExecutorHost.objects.create(name="b", executor_type="mock")
    job_a, job_b = create_job("img", host=a), create_job("img", host=b)
    run_worker(host_names=["a"])
    job_a.refresh_from_db()
    job_b.refresh_from_db()
    assert (job_a.status, job_b.status) == ("completed", "queued")


def test_priority_then_age_decides_order(mock_host):
    low = create_job("img", ["low"], host=mock_host, priority=0)
    high = create_job("img", ["high"], host=mock_host, priority=5)
    run_worker(max_concurrent=1)
    low.refresh_from_db()
    high.refresh_from_db()
    assert high.started_at < low.started_at


def test_failures_are_retried_with_backoff_and_every_attempt_is_kept(db, settings):
    settings.CONTAINER_MANAGER = {"RETRY_BACKOFF_BASE": 0.1, "RETRY_JITTER": 0.0}
    host = ExecutorHost.objects.create(
        name="flaky", executor_type="mock", executor_config={"exit_code": 1}
    )
    job = create_job("img", host=host, max_attempts=3)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 3)
    attempts = list(job.attempt_set.order_by("number"))
    assert [a.status for a in attempts] == ["failed"] * 3
    assert len({a.execution_id for a in attempts}) == 3
    assert job.execution_id == attempts[-1].execution_id
    # The second retry waited about twice as long as the first.
    gap1 = attempts[1].started_at - attempts[0].finished_at
    gap2 = attempts[2].started_at - attempts[1].finished_at
    assert gap1.total_seconds() >= 0.1
    assert gap2.total_seconds() >= 0.2


def test_only_the_listed_failures_are_retried(db, settings):
    settings.CONTAINER_MANAGER = {"RETRY_BACKOFF_BASE": 0.01}
    host = ExecutorHost.objects.create(
        name="flaky", executor_type="mock", executor_config={"exit_code": 1}
    )
    job = create_job("img", host=host, max_attempts=3, retry_on=["timeout"])
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 1)


def test_backoff_grows_exponentially_up_to_the_cap(settings):
    from container_manager.runner import backoff_seconds

    settings.CONTAINER_MANAGER = {
        "RETRY_BACKOFF_BASE": 1.0,
        "RETRY_BACKOFF_FACTOR": 3.0,
        "RETRY_BACKOFF_MAX": 20.0,
        "RETRY_JITTER": 0.0,
    }
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 9.0, 20.0]
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "RETRY_JITTER": 0.5}
    assert all(10.0 <= backoff_seconds(4) <= 20.0 for _ in range(50))


def test_job_of_a_dead_worker_is_adopted_and_not_started_again(db):
    from datetime import timedelta

    from django.utils import timezone

    from container_manager.executors.mock import MockExecutor
    from container_manager.models import Worker as WorkerRecord
    from container_manager.queue import claim_jobs

    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 0.3}
    )
    job = create_job("img", host=host)
    dead = WorkerRecord.objects.create(hostname="gone", pid=1)
    [claimed] = claim_jobs(dead, 1)
    execution_id = launch(claimed, host.get_executor())
    claimed.transition("running", execution_id=execution_id, started_at=timezone.now())
    WorkerRecord.objects.filter(pk=dead.pk).update(
        last_heartbeat=timezone.now() - timedelta(minutes=5)
    )
    launches_before = len(MockExecutor._executions)
    run_worker()
    job.refresh_from_db()
    assert job.status == "completed"
    assert job.execution_id == execution_id
    assert job.attempts == 1 and job.attempt_set.count() == 1
    assert len(MockExecutor._executions) <= launches_before


def test_job_claimed_by_a_dead_worker_before_launch_is_queued_again(db):
    from container_manager.models import Worker as WorkerRecord
    from container_manager.queue import claim_jobs

    job = create_job("img", host=ExecutorHost.objects.create(name="m", executor_type="mock"))
    dead = WorkerRecord.objects.create(hostname="gone", pid=1, stopped_at="2026-01-01T00:00Z")
    claim_jobs(dead, 1)
    run_worker()
    job.refresh_from_db()
    assert job.status == "completed"
    assert list(job.attempt_set.values_list("number", "worker")) == [(1, job.worker_id)]


def test_lost_execution_fails_with_a_clear_error(db):
    from django.utils import timezone

    from container_manager.models import Worker as WorkerRecord
    from container_manager.queue import claim_jobs

    job = create_job("img", host=ExecutorHost.objects.create(name="m", executor_type="mock"))
    dead = WorkerRecord.objects.create(hostname="gone", pid=1, stopped_at=timezone.now())
    [claimed] = claim_jobs(dead, 1)
    claimed.transition("running", execution_id="mock-vanished", started_at=timezone.now())
    run_worker()
    job.refresh_from_db()
    assert job.status == "failed"
    assert "worker running this job was lost" in job.last_error
    assert "mock-vanished" in job.last_error


def test_shutdown_releases_running_jobs_for_another_worker(db, settings):
    settings.CONTAINER_MANAGER = {"SHUTDOWN_GRACE_SECONDS": 0.2, "CANCEL_CHECK_INTERVAL": 0.05}
    host = ExecutorHost.objects.create(
        name="slow", executor_type="mock", executor_config={"duration_seconds": 1.5}
    )
    job = create_job("img", host=host)
    first = Worker(poll_interval=0.05)
    thread = in_thread(first)
    for _ in range(100):
        job.refresh_from_db()
        if job.status == "running":
            break
        time.sleep(0.05)
    first.request_stop()
    thread.join(10)
    job.refresh_from_db()
    assert (job.status, job.worker_id) == ("running", None)
    run_worker()  # same process, so the mock execution is still there to re-attach to
    job.refresh_from_db()
    assert job.status == "completed"
    assert job.attempt_set.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll-interval", "-1"], "--poll-interval: must be a positive number of seconds"),
        (["--poll-interval", "nan"], "--poll-interval: must be a positive number of seconds"),
        (["--max-concurrent", "0"], "--max-concurrent: must be a positive whole number"),
    ],
)
def test_bad_worker_options_are_named(args, message):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("process_container_jobs", *args)


def test_unknown_worker_host_is_named(db):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--host: no executor host named 'nope'"):
        call_command("process_container_jobs", "--host", "nope")


def test_fractional_poll_interval_is_accepted(mock_host):
    create_job("img", host=mock_host)
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.01")
    assert ContainerJob.objects.get().status == "completed"

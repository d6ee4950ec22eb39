"""The worker loop with the mock executor: queue logic, not Docker."""

import threading
import time

import pytest
from django.core.management import call_command

from container_manager.api import cancel_job, create_job
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)


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
    thread = threading.Thread(target=worker.run)
    thread.start()
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

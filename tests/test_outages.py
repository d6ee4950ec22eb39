"""Outages, in one process and fast: the mock executor's hosts made unreachable, database
errors injected into a runner's writes, a runner thread killed by a fault. The same failures
against real services are in test_database_outage (PostgreSQL) and test_docker_faults."""

import time
from contextlib import contextmanager

import pytest
from django.db import OperationalError
from django.test import override_settings

from container_manager import runner as runner_module
from container_manager.api import create_job
from container_manager.executors.mock import MockExecutor
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt
from container_manager.runner import Runner
from container_manager.worker import Worker

from .test_queue_processes import wait_until
from .test_worker import in_thread

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "HEARTBEAT_INTERVAL": 0.1,
    "CANCEL_CHECK_INTERVAL": 0.05,
    "HEALTH_RECHECK_BASE": 0.1,
    "HEALTH_RECHECK_MAX": 0.2,
    "DATABASE_RETRY_SECONDS": 5,
}


@pytest.fixture(autouse=True)
def fast_settings(settings):
    settings.CONTAINER_MANAGER = dict(FAST)
    yield
    MockExecutor.unreachable.clear()


def mock_host(name="mock", **config):
    return ExecutorHost.objects.create(name=name, executor_type="mock", executor_config=config)


@contextmanager
def running_worker():
    """A worker in a thread of this process, stopped (gracefully) when the block ends."""
    worker = Worker(poll_interval=0.02)
    thread = in_thread(worker)
    try:
        yield worker
    finally:
        worker.request_stop()
        thread.join(20)
        assert not thread.is_alive()


def status_of(job):
    return ContainerJob.objects.get(pk=job.pk).status


def test_a_launch_that_reaches_nothing_gives_the_claim_back_and_waits_for_the_host():
    host = mock_host()
    MockExecutor.unreachable.add(host.name)
    job = create_job("img", ["x"], host=host, max_attempts=1)
    with running_worker():
        assert wait_until(
            lambda: ExecutorHost.objects.get(pk=host.pk).health_status == "unhealthy", 5
        )
        # Rechecks fail meanwhile (a bound, not a sleep: four test processes share two
        # cores); nothing claims for the host.
        assert wait_until(lambda: ExecutorHost.objects.get(pk=host.pk).health_failures >= 2, 5)
        job.refresh_from_db()
        assert (job.status, job.attempts, job.attempt_set.count()) == ("queued", 0, 0)
        host.refresh_from_db()
        assert host.health_message == "mock host 'mock' is unreachable"

        MockExecutor.unreachable.discard(host.name)
        assert wait_until(lambda: status_of(job) == "completed", 5)
    job.refresh_from_db()
    assert job.attempts == 1
    assert ExecutorHost.objects.get(pk=host.pk).health_status == "healthy"


def test_a_running_job_is_followed_through_an_outage_shorter_than_the_grace():
    host = mock_host(duration_seconds=0.5)
    job = create_job("img", ["x"], host=host)
    with running_worker():
        assert wait_until(lambda: status_of(job) == "running", 5)
        MockExecutor.unreachable.add(host.name)
        assert wait_until(
            lambda: ExecutorHost.objects.get(pk=host.pk).health_status == "unhealthy", 5
        )
        time.sleep(1.0)  # the execution ends while its host does not answer
        assert status_of(job) == "running"
        MockExecutor.unreachable.discard(host.name)
        assert wait_until(lambda: status_of(job) == "completed", 5)
    job.refresh_from_db()
    assert (job.exit_code, job.attempts, job.last_error) == (0, 1, "")


def test_past_the_outage_grace_the_attempt_fails_saying_why(settings):
    settings.CONTAINER_MANAGER = {**FAST, "ENGINE_OUTAGE_GRACE": 0.5}
    host = mock_host(duration_seconds=5)
    job = create_job("img", ["x"], host=host)
    with running_worker():
        assert wait_until(lambda: status_of(job) == "running", 5)
        MockExecutor.unreachable.add(host.name)
        assert wait_until(lambda: status_of(job) == "failed", 10)
    job.refresh_from_db()
    assert job.last_error.startswith(
        "host mock was unreachable for more than 0.5 s (ENGINE_OUTAGE_GRACE) while this job "
        "ran; its outcome is unknown"
    )
    assert job.attempt_set.get().error == job.last_error


def test_a_runner_killed_by_a_fault_gets_its_job_back(monkeypatch):
    host = mock_host(duration_seconds=0.2)
    job = create_job("img", ["x"], host=host)
    faults = []
    follow = Runner.follow

    def crash_once(self, executor, execution_id):
        if not faults:
            faults.append(execution_id)
            raise RuntimeError("injected fault")
        return follow(self, executor, execution_id)

    monkeypatch.setattr(Runner, "follow", crash_once)
    with running_worker():
        assert wait_until(lambda: status_of(job) == "completed", 10)
    job.refresh_from_db()
    # Resumed, not launched again: the execution the crashed runner started is the one.
    assert faults == [job.execution_id]
    assert (job.attempts, job.attempt_set.get().status) == (1, "completed")


def test_a_claim_without_a_runner_is_resumed_and_nothing_is_started_twice(monkeypatch):
    host = mock_host()
    job = create_job("img", ["x"], host=host)

    run = Runner.run
    crashes = []

    def lost_once(self):
        if not crashes:
            crashes.append(self.job.pk)
            raise OperationalError("server closed the connection unexpectedly")
        return run(self)

    # The first runner dies before launching, as if the database went away for good.
    monkeypatch.setattr(Runner, "run", lost_once)
    with running_worker():
        assert wait_until(lambda: status_of(job) == "completed", 10)
    job.refresh_from_db()
    # Given back by the watchdog without spending an attempt, then claimed and run once.
    assert crashes == [job.pk]
    assert (job.attempts, JobAttempt.objects.filter(job=job).count()) == (1, 1)


def test_writes_of_an_attempt_outlive_transient_database_errors(monkeypatch):
    host = mock_host()
    job = create_job("img", ["x"], host=host)
    failures = {"transition": 0}
    transition = ContainerJob.transition

    def flaky(self, new_status, **fields):
        # Every move of the attempt fails twice first, as in a database restart.
        if failures["transition"] < 2 and new_status in ("running", "completed"):
            failures["transition"] += 1
            raise OperationalError("terminating connection due to administrator command")
        if new_status in ("running", "completed"):
            failures["transition"] = 0
        return transition(self, new_status, **fields)

    monkeypatch.setattr(ContainerJob, "transition", flaky)
    with running_worker():
        assert wait_until(lambda: status_of(job) == "completed", 10)
    job.refresh_from_db()
    assert (job.attempts, job.attempt_set.get().status) == (1, "completed")


def test_an_outcome_whose_commit_answer_was_lost_is_not_written_twice(mock_host):
    job = create_job("img", ["x"], host=mock_host)
    job.transition("launching", attempts=1)
    JobAttempt.objects.create(job=job, number=1, host=mock_host)
    job.transition("running")
    outcome = runner_module.Outcome(0, stdout="hi\n")
    assert runner_module.record_outcome(job, None, outcome)
    stale = ContainerJob.objects.get(pk=job.pk)
    stale.status = stale._loaded_status = "running"  # as a retry after a lost answer sees it
    assert runner_module.record_outcome(stale, None, outcome)
    assert ContainerJob.objects.get(pk=job.pk).status == "completed"


def test_a_job_taken_over_by_another_worker_is_no_longer_followed():
    host = mock_host(duration_seconds=30)
    job = create_job("img", ["x"], host=host)
    with running_worker() as worker:
        assert wait_until(lambda: status_of(job) == "running", 5)
        other = type(worker.record).objects.create(hostname="elsewhere", pid=1)
        ContainerJob.objects.filter(pk=job.pk).update(worker=other)
        assert wait_until(lambda: not worker.running, 5)
    assert status_of(job) == "running"


@override_settings()
def test_host_rechecks_back_off_and_one_worker_takes_each():
    host = mock_host()
    MockExecutor.unreachable.add(host.name)
    assert ExecutorHost.objects.mark_unreachable(host, "down")
    assert not ExecutorHost.objects.mark_unreachable(host, "down again")  # first one marks
    host.refresh_from_db()
    assert (host.health_failures, host.health_message) == (1, "down")
    time.sleep(0.15)
    due = list(ExecutorHost.objects.due_for_check())
    assert due == [host]
    assert ExecutorHost.objects.take_check(due[0])
    assert not ExecutorHost.objects.take_check(due[0])  # another worker got there first
    host.check_health()
    host.refresh_from_db()
    assert host.health_failures == 2
    assert not ExecutorHost.objects.due_for_check().exists()

"""Signals: one per change, after it commits, for every kind of ending; a failing receiver
never stops a worker."""

import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from container_manager import signals
from container_manager.api import cancel_job, create_job
from container_manager.bulk_operations import ParamRow, create_jobs
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.models import Worker as WorkerRecord
from container_manager.queue import claim_jobs
from container_manager.worker import Worker

from .test_worker import in_thread, run_worker

pytestmark = pytest.mark.django_db(transaction=True)


class Received:
    """What each job signal delivered, in order, with whether a transaction was open."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events: list[tuple] = []
        self.in_transaction: list[bool] = []
        pairs = [
            (signals.job_status_changed, self.changed),
            (signals.job_queued, self.queued),
            (signals.job_started, self.started),
            (signals.job_finished, self.finished),
        ]
        for signal, receiver in pairs:
            signal.connect(receiver, dispatch_uid=f"test-{id(self)}-{receiver.__name__}")
        self.pairs = pairs

    def disconnect(self):
        for signal, receiver in self.pairs:
            signal.disconnect(dispatch_uid=f"test-{id(self)}-{receiver.__name__}")

    def _add(self, *event):
        with self.lock:
            self.events.append(event)
            self.in_transaction.append(connection.in_atomic_block)

    def changed(self, sender, job, old_status, new_status, **kwargs):
        self._add("changed", job.pk, old_status, new_status)

    def queued(self, sender, job, **kwargs):
        self._add("queued", job.pk)

    def started(self, sender, job, **kwargs):
        assert job.execution_id
        self._add("started", job.pk)

    def finished(self, sender, job, status, **kwargs):
        self._add("finished", job.pk, status)

    def of(self, job):
        with self.lock:
            return [e for e in self.events if e[1] == job.pk]

    def named(self, job, kind):
        return [list(e[2:]) for e in self.of(job) if e[0] == kind]


@pytest.fixture
def received():
    receiver = Received()
    yield receiver
    receiver.disconnect()


def host(name="mock", **config):
    return ExecutorHost.objects.create(name=name, executor_type="mock", executor_config=config)


def test_a_completed_job_is_queued_started_and_finished_once_each(received):
    job = create_job("img", host=host())
    run_worker()
    assert received.named(job, "changed") == [
        [None, "queued"],
        ["queued", "launching"],
        ["launching", "running"],
        ["running", "completed"],
    ]
    assert len(received.named(job, "queued")) == 1
    assert len(received.named(job, "started")) == 1
    assert received.named(job, "finished") == [["completed"]]
    # Sent once the change committed: the claim's own transaction included.
    assert not any(received.in_transaction)


@pytest.mark.parametrize(
    ("config", "fields", "status"),
    [
        ({"exit_code": 3}, {}, "failed"),
        ({"duration_seconds": 5}, {"timeout_seconds": 1}, "timed_out"),
    ],
)
def test_failures_and_timeouts_finish_with_their_status(received, config, fields, status):
    job = create_job("img", host=host(**config), **fields)
    run_worker()
    assert received.named(job, "finished") == [[status]]


def test_cancels_finish_queued_and_running_jobs(received, settings):
    settings.CONTAINER_MANAGER = {"CANCEL_CHECK_INTERVAL": 0.05}
    queued = create_job("img", host=host())
    cancel_job(queued)
    assert received.named(queued, "finished") == [["cancelled"]]
    assert received.named(queued, "started") == []

    running = create_job("img", host=host("slow", duration_seconds=30))
    thread = in_thread(Worker(until_idle=True, poll_interval=0.05))
    deadline = time.monotonic() + 10
    while ContainerJob.objects.get(pk=running.pk).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancel_job(running)
    thread.join(10)
    assert received.named(running, "finished") == [["cancelled"]]
    assert len(received.named(running, "started")) == 1


def test_a_job_whose_worker_was_lost_finishes_failed(received):
    job = create_job("img", host=host())
    dead = WorkerRecord.objects.create(hostname="gone", pid=1, stopped_at=timezone.now())
    [claimed] = claim_jobs(dead, 1)
    claimed.transition("running", execution_id="mock-vanished", started_at=timezone.now())
    run_worker()
    assert received.named(job, "finished") == [["failed"]]


def test_a_failed_attempt_that_is_retried_does_not_finish_the_job(received, settings):
    settings.CONTAINER_MANAGER = {"RETRY_BACKOFF_BASE": 0.05, "RETRY_JITTER": 0.0}
    job = create_job("img", host=host(exit_code=1), max_attempts=2)
    run_worker()
    changes = received.named(job, "changed")
    assert ["failed", "retrying"] in changes and ["retrying", "queued"] in changes
    assert received.named(job, "finished") == [["failed"]]  # once: the last attempt's
    assert len(received.named(job, "queued")) == 2
    assert len(received.named(job, "started")) == 2


def test_jobs_created_in_bulk_are_announced(received):
    target = host()
    rows = [ParamRow(where=f"item {n}", argv=[str(n)]) for n in (1, 2, 3)]
    result = create_jobs({"image": "img", "host": target.name}, rows)
    assert len(result.succeeded) == 3
    for job in ContainerJob.objects.all():
        assert received.named(job, "queued") == [[]]


def test_a_failing_receiver_is_logged_and_the_worker_goes_on(received, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.job_finished.connect(broken, dispatch_uid="test-broken")
    try:
        first, second = create_job("img", host=host()), create_job("img", host=host("other"))
        run_worker()
    finally:
        signals.job_finished.disconnect(dispatch_uid="test-broken")
    statuses = ContainerJob.objects.filter(pk__in=[first.pk, second.pk]).values_list(
        "status", flat=True
    )
    assert list(statuses) == ["completed", "completed"]
    assert received.named(first, "finished") == [["completed"]]
    assert "receiver bug" in caplog.text

"""api.follow_output through what happens to a job while it is followed: its stream cut,
its host away and back, a retry, a worker that records late. The executor answers from a
script; the worker's moves are made by the test. (Through a real engine's outage:
test_docker_faults.)"""

import time

import pytest
from django.db import transaction
from django.utils import timezone

from container_manager import api, notify
from container_manager.exceptions import ExecutorError
from container_manager.executors.base import EXITED
from container_manager.executors.mock import MockExecutor
from container_manager.models import ContainerJob, ExecutorHost, Worker
from container_manager.states import JobStatus


class ScriptedExecutor(MockExecutor):
    """Each ``stream_logs`` or ``status`` call takes the next step of ``script``: what to
    give (chunks, a status, or an error to raise), and what the worker does meanwhile."""

    type_name = "scripted"
    script: list = []
    asked: list = []

    def _next(self, call, execution_id):
        kind, answer, meanwhile = self.script.pop(0)
        assert kind == call, (kind, call)
        self.asked.append((call, execution_id))
        if meanwhile:
            meanwhile()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stream_logs(self, execution_id, follow=False):
        yield from self._next("stream", execution_id)

    def status(self, execution_id):
        return self._next("status", execution_id)


def step(call, answer, meanwhile=None):
    return (call, answer, meanwhile)


@pytest.fixture
def job(db, settings, monkeypatch):
    settings.CONTAINER_MANAGER = {"EXECUTORS": {"scripted": f"{__name__}.ScriptedExecutor"}}
    ScriptedExecutor.asked = []
    # Waits are looks at the record, made at once (no notification reaches a test's
    # transaction anyway).
    monkeypatch.setattr(notify.Listener, "available", staticmethod(lambda alias="default": False))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    host = ExecutorHost.objects.create(name="scripted", executor_type="scripted")
    job = api.create_job("alpine", ["true"], host=host, max_attempts=2)
    return runs(job, "run-1")


def runs(job, execution_id):
    job.refresh_from_db()
    if job.status == JobStatus.RETRYING:
        assert job.transition(JobStatus.QUEUED)
    assert job.transition(JobStatus.LAUNCHING, attempts=job.attempts + 1)
    assert job.transition(JobStatus.RUNNING, execution_id=execution_id, started_at=timezone.now())
    return job


def record(job, status, **fields):
    """What the worker writes when an attempt ends; a retry in the same transaction."""
    row = ContainerJob.objects.get(pk=job.pk)
    with transaction.atomic():
        assert row.transition(status, finished_at=timezone.now(), **fields)
        if status == JobStatus.FAILED and row.attempts < row.max_attempts:
            assert row.transition(JobStatus.RETRYING, scheduled_for=timezone.now())


def follow(job):
    said = []
    text = "".join(api.follow_output(job, poll=0.01, say=said.append))
    return text, said


def test_a_cut_stream_is_read_on_from_where_it_was_once_the_host_answers(job):
    unreachable = ExecutorError("engine unreachable")
    ScriptedExecutor.script = [
        # Cut without an error, as Docker's is when its engine stops, in a character.
        step("stream", [b"caf\xc3"]),
        step("status", unreachable),
        step("stream", unreachable),
        # Back: the engine gives the whole log again.
        step("stream", [b"caf\xc3\xa9\nrest", b"\n"]),
        step("status", EXITED, lambda: record(job, JobStatus.COMPLETED, stdout="café\nrest\n")),
    ]
    text, said = follow(job)
    assert text == "café\nrest\n"  # nothing twice, nothing lost
    assert said == [
        f"Cannot read job {job.pk} from its host (engine unreachable); waiting.",
        f"Job {job.pk}'s host answers again; reading on.",
    ]
    assert ScriptedExecutor.script == []


def test_the_next_attempt_is_followed_after_a_failed_one(job, monkeypatch):
    def relaunched_once_due(seconds):
        if ContainerJob.objects.get(pk=job.pk).status == JobStatus.RETRYING:
            runs(job, "run-2")

    monkeypatch.setattr(time, "sleep", relaunched_once_due)
    ScriptedExecutor.script = [
        step("stream", [b"first try\n"]),
        step(
            "status",
            EXITED,
            lambda: record(job, JobStatus.FAILED, exit_code=137, last_error="killed\nby it"),
        ),
        step("stream", [b"second try\n"]),
        step("status", EXITED, lambda: record(job, JobStatus.COMPLETED, stdout="second try\n")),
    ]
    text, said = follow(job)
    assert text == "first try\nsecond try\n"
    assert said == [
        f"Attempt 1 of job {job.pk} ended (killed); following the next.",
        f"Waiting for job {job.pk} to start (it is retrying)...",
    ]
    assert ScriptedExecutor.asked == [
        ("stream", "run-1"),
        ("status", "run-1"),
        ("stream", "run-2"),
        ("status", "run-2"),
    ]


def test_an_attempt_that_ran_between_two_looks_gives_its_stored_output(job):
    def retried_ran_and_completed():
        record(job, JobStatus.FAILED, exit_code=1)
        runs(job, "run-2")
        record(job, JobStatus.COMPLETED, stdout="second\n")

    ScriptedExecutor.script = [
        step("stream", [b"first\n"]),
        step("status", EXITED, retried_ran_and_completed),
    ]
    text, said = follow(job)
    assert text == "first\nsecond\n"
    assert said == [f"Attempt 2 of job {job.pk} ran meanwhile; its output:"]


def test_a_job_its_worker_holds_is_waited_for_past_the_ending_wait(job, monkeypatch):
    monkeypatch.setattr(api, "ENDING_WAIT_SECONDS", 0)
    ContainerJob.objects.filter(pk=job.pk).update(
        worker=Worker.objects.create(hostname="box", pid=1)
    )
    looks = []

    def worker_records_late(seconds):
        looks.append(seconds)
        if len(looks) == 3:
            record(job, JobStatus.COMPLETED, stdout="out\n")

    monkeypatch.setattr(time, "sleep", worker_records_late)
    ScriptedExecutor.script = [step("stream", [b"out\n"]), step("status", EXITED)]
    text, said = follow(job)
    assert text == "out\n"
    assert said == [f"Job {job.pk}'s execution has ended; waiting for its worker."]
    assert len(looks) == 3


def test_a_job_no_worker_holds_is_left_after_the_ending_wait(job, monkeypatch):
    monkeypatch.setattr(api, "ENDING_WAIT_SECONDS", 0)
    ScriptedExecutor.script = [step("stream", [b"out\n"]), step("status", EXITED)]
    assert follow(job) == ("out\n", [])
    assert ContainerJob.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_output_missed_while_the_host_was_away_is_pointed_to(job):
    ScriptedExecutor.script = [
        step("stream", [b"one\n"]),
        step("status", ExecutorError("engine unreachable")),
        # Back, but the worker has harvested and removed the container meanwhile.
        step(
            "stream",
            ExecutorError("container run-1 no longer exists"),
            lambda: record(job, JobStatus.COMPLETED, stdout="one\ntwo\n"),
        ),
    ]
    text, said = follow(job)
    assert text == "one\n"
    assert said[-1] == (
        "Its host was away, so some of it may be missing here: "
        f"`manage_container_job logs {job.pk}` prints it whole."
    )

"""Routing, health and fallback with the mock executor: which host an attempt runs on, why,
and what happens when a host cannot launch it. (The same on real engines: test_many_engines.)"""

from collections import Counter
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from container_manager import queue
from container_manager.api import create_job
from container_manager.exceptions import ExecutorUnavailable
from container_manager.executors.mock import MockExecutor
from container_manager.models import ContainerJob, ExecutorHost, Worker
from container_manager.worker import Worker as WorkerLoop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def reachable_again():
    yield
    MockExecutor.unreachable.clear()


def host(name, **fields):
    """A host as a worker last saw it: healthy, next checked in an hour (so a test decides
    when a failure is found out: at a launch, or by a check it runs)."""
    fields.setdefault("executor_type", "mock")
    fields.setdefault("health_status", "healthy")
    fields.setdefault("next_health_check_at", timezone.now() + timedelta(hours=1))
    return ExecutorHost.objects.create(name=name, **fields)


def claim(count):
    worker = Worker.objects.create(hostname="test", pid=1)
    return queue.claim_jobs(worker, count)


def run_until_idle():
    WorkerLoop(until_idle=True, poll_interval=0.02).run()


def test_jobs_spread_by_free_capacity_and_weight():
    small = host("small", weight=100, max_concurrent_jobs=2)
    big = host("big", weight=200, max_concurrent_jobs=4)
    host("sick", health_status="unhealthy", health_message="engine down")
    for i in range(8):
        create_job("img", [str(i)])
    claimed = claim(8)
    assert Counter(job.host.name for job in claimed) == {"big": 4, "small": 2}
    assert ContainerJob.objects.filter(status="queued").count() == 2  # both hosts are full
    first = claimed[0].attempt_set.get()
    assert first.host == big
    assert first.routing == (
        "big: 0 of 4 slots busy, weight 200, the least loaded for its weight of "
        "small (0 of 2 slots busy, weight 100); passed over: sick is unhealthy (engine down)"
    )
    assert small.pk in {job.host_id for job in claimed}


def test_a_job_asks_for_an_executor_type_and_labels():
    host("plain")
    gpu = host("gpu", labels={"gpu": "a100", "zone": "eu"})
    job = create_job("img", executor_type="mock", host_labels={"gpu": "a100"})
    assert claim(1) == [job]
    job.refresh_from_db()
    assert job.host == gpu


def test_a_job_no_active_host_could_take_is_refused_naming_the_field():
    host("plain")
    with pytest.raises(ValidationError) as error:
        create_job("img", host_labels={"gpu": "a100"})
    assert error.value.message_dict == {
        "host_labels": ["no active host fits: labels {'gpu': 'a100'}"]
    }
    with pytest.raises(ValidationError) as error:
        create_job("img", executor_type="docker")
    assert error.value.message_dict == {
        "executor_type": ["no active host fits: executor type 'docker'"]
    }
    with pytest.raises(ValidationError) as error:
        create_job("img", executor_type="nope")
    assert "unknown executor type 'nope'" in error.value.message_dict["executor_type"][0]
    assert not ContainerJob.objects.exists()


def test_a_host_whose_policy_refuses_the_job_is_passed_over():
    host("strict", policy={"allowed_images": ["trusted/*"]})
    lenient = host("lenient", weight=1)
    job = create_job("untrusted/img")
    claim(1)
    job.refresh_from_db()
    assert job.host == lenient
    assert "passed over: strict refuses it" in job.attempt_set.get().routing


def test_a_failed_launch_moves_on_to_another_host_within_the_attempt():
    first = host("first", weight=1000)
    second = host("second", weight=1)
    MockExecutor.unreachable.add(first.name)  # still healthy in the database: nobody knows yet
    job = create_job("img", ["x"])
    run_until_idle()
    job.refresh_from_db()
    assert (job.status, job.host, job.attempts) == ("completed", second, 1)
    attempt = job.attempt_set.get()
    assert attempt.tries == [{"host": "first", "error": "mock host 'first' is unreachable"}]
    assert attempt.routing.startswith("second: 0 of 10 slots busy")
    assert "passed over: first tried already" in attempt.routing
    assert ExecutorHost.objects.get(pk=first.pk).health_status == "unhealthy"


def test_a_fallback_chain_runs_on_its_first_fit_member():
    a, b = host("a"), host("b")
    chain = host("chain", executor_type="fallback", executor_config={"members": ["a", "b"]})
    MockExecutor.unreachable.add(a.name)
    job = create_job("img", ["x"], host=chain)
    assert (job.requested_host, job.host) == (chain, None)
    run_until_idle()
    job.refresh_from_db()
    assert (job.status, job.host, job.execution_id[:5]) == ("completed", b, "mock-")
    attempt = job.attempt_set.get()
    assert [t["host"] for t in attempt.tries] == ["a"]
    assert attempt.routing.startswith("b: the first fit host of chain chain")


def test_a_pinned_job_whose_host_cannot_launch_waits_for_it():
    only = host("only")
    MockExecutor.unreachable.add(only.name)
    job = create_job("img", ["x"], host=only)
    run_until_idle()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.attempt_set.count()) == ("queued", 0, 0)
    assert job.last_error == ("host only could not launch it: mock host 'only' is unreachable")


def test_a_fallback_chain_is_checked_when_saved():
    host("a")
    host("chain", executor_type="fallback", executor_config={"members": ["a"]})
    for config, message in [
        ({"members": []}, "must be a non-empty list of host names"),
        ({"members": ["a", "a"]}, "names a host twice"),
        ({"members": ["a"], "order": 1}, "unknown fallback option(s) 'order'"),
        ({"members": ["nope"]}, "no host named 'nope'"),
        ({"members": ["chain"]}, "'chain' routes to other hosts itself"),
    ]:
        candidate = ExecutorHost(name="new", executor_type="fallback", executor_config=config)
        with pytest.raises(ValidationError) as error:
            candidate.full_clean()
        assert message in " ".join(error.value.message_dict["executor_config"]), config


def test_workers_check_every_host_once_per_interval(settings):
    settings.CONTAINER_MANAGER = {"HEALTH_CHECK_INTERVAL": 3600}
    fine = host("fine", health_status="unknown", next_health_check_at=None)
    down = host("down", health_status="unknown", next_health_check_at=None)
    MockExecutor.unreachable.add(down.name)
    assert set(ExecutorHost.objects.due_for_check()) == {fine, down}  # never checked
    worker = WorkerLoop(poll_interval=0.02)
    worker._check_hosts()
    worker.checker.join(5)
    fine.refresh_from_db()
    down.refresh_from_db()
    assert (fine.health_status, down.health_status) == ("healthy", "unhealthy")
    assert not ExecutorHost.objects.due_for_check().filter(pk=fine.pk).exists()  # in an hour
    worker._check_hosts()  # nothing due: no second check
    assert not worker.checker.is_alive()


class DroppedAnswerExecutor(MockExecutor):
    """Starts the execution, then loses the answer, as an engine that goes away mid-start."""

    type_name = "dropped-answer"
    dropped: list[str] = []

    def launch(self, spec):
        execution_id = super().launch(spec)
        if not self.dropped:
            self.dropped.append(execution_id)
            raise ExecutorUnavailable("connection reset while starting", maybe_started=True)
        return execution_id


def test_a_launch_cut_off_mid_start_finds_what_it_started_instead_of_moving_on(settings):
    settings.CONTAINER_MANAGER = {
        "EXECUTORS": {"dropped-answer": "tests.test_routing.DroppedAnswerExecutor"}
    }
    DroppedAnswerExecutor.dropped.clear()
    flaky = host("flaky", executor_type="dropped-answer", weight=1000)
    host("other", weight=1)
    job = create_job("img", ["x"])
    run_until_idle()
    job.refresh_from_db()
    # Not launched a second time elsewhere: the execution it started is the one followed.
    assert (job.status, job.host, job.execution_id) == (
        "completed",
        flaky,
        DroppedAnswerExecutor.dropped[0],
    )
    assert job.attempt_set.get().tries == []

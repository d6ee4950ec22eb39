"""Three real Docker engines behind one queue: jobs spread by free capacity and weight, an
engine stopped mid-run is routed around (a launch on it falls back within the attempt), and it
gets work again once it is back. Private engines (tests/engines.py), real worker processes.
"""

import json
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from container_manager.api import create_job
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt

from .conftest import TEST_IMAGE
from .engines import PRIVATE_ENGINE_TESTS, PrivateEngine, require_dockerd
from .test_queue_processes import wait_until

pytestmark = PRIVATE_ENGINE_TESTS

SETTINGS = {
    "HEARTBEAT_INTERVAL": 0.5,
    "CANCEL_CHECK_INTERVAL": 0.2,
    # Healthy hosts are not checked during the test: a stopped engine is found out by the
    # launch that fails on it. Unhealthy ones are checked again quickly.
    "HEALTH_CHECK_INTERVAL": 3600,
    "HEALTH_RECHECK_BASE": 0.5,
    "HEALTH_RECHECK_MAX": 1.0,
}


@pytest.fixture
def engines(docker_engine):
    require_dockerd()
    started = []
    try:
        for _ in range(3):
            engine = PrivateEngine(extra_args=["--shutdown-timeout=1"])
            started.append(engine)
            engine.start()
            engine.load_test_image(docker_engine)
        yield started
    finally:
        for engine in started:
            engine.destroy()


@pytest.fixture
def hosts(engines):
    shape = {"alpha": (100, 2), "beta": (100, 2), "gamma": (200, 4)}  # weight, capacity
    return [
        ExecutorHost.objects.create(
            name=name,
            executor_type="docker",
            connection_string=engine.url,
            executor_config={"pull_policy": "never"},
            weight=weight,
            max_concurrent_jobs=capacity,
            health_status="healthy",
            next_health_check_at=timezone.now() + timedelta(hours=1),
        )
        for engine, (name, (weight, capacity)) in zip(engines, shape.items(), strict=True)
    ]


def submit(count, seconds=1.5, tag="job"):
    return [
        create_job(
            TEST_IMAGE, ["sh", "-c", f"sleep {seconds}; echo {tag}-{i}"], executor_type="docker"
        )
        for i in range(count)
    ]


def all_done(jobs):
    return (
        not ContainerJob.objects.filter(pk__in=[j.pk for j in jobs])
        .exclude(status="completed")
        .exists()
    )


def ran_on(jobs):
    return Counter(
        ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list(
            "host__name", flat=True
        )
    )


def test_three_engines_share_the_work_route_around_one_that_stops_and_take_it_back(
    engines, hosts, worker_processes
):
    alpha, beta, gamma = hosts
    worker = worker_processes.start(
        "--poll-interval",
        "0.05",
        "--max-concurrent",
        "8",
        env={"CONTAINER_MANAGER_SETTINGS": json.dumps(SETTINGS)},
    )

    # 1. Spread: never more than a host's capacity, the heavier engine the busiest.
    first = submit(16, tag="spread")
    peak = Counter()
    deadline = time.monotonic() + 90
    while not all_done(first) and time.monotonic() < deadline:
        running = Counter(
            ContainerJob.objects.filter(status__in=["launching", "running"]).values_list(
                "host__name", flat=True
            )
        )
        for name, count in running.items():
            peak[name] = max(peak[name], count)
        time.sleep(0.05)
    assert all_done(first), worker_processes.logs()[-4000:]
    assert peak["alpha"] <= 2 and peak["beta"] <= 2 and peak["gamma"] <= 4, peak
    spread = ran_on(first)
    assert set(spread) == {"alpha", "beta", "gamma"}, spread
    assert spread["gamma"] > max(spread["alpha"], spread["beta"]), spread

    # 2. Alpha's engine stops. Nobody knows until a launch on it fails: that launch moves on
    #    to another engine within the same attempt, and alpha is taken out of routing.
    #    (Fewer jobs than beta and gamma have free slots: with none free, a failed launch
    #    gives its claim back instead, and the job runs later, on a fresh attempt record.)
    engines[0].stop()
    second = submit(3, tag="outage")
    assert wait_until(lambda: all_done(second), 90), worker_processes.logs()[-4000:]
    assert "alpha" not in ran_on(second)
    moved = JobAttempt.objects.filter(job__in=second).exclude(tries=[])
    assert moved.exists(), worker_processes.logs()[-4000:]
    for attempt in moved:
        assert attempt.tries[0]["host"] == "alpha"
        assert "unreachable" in attempt.tries[0]["error"]
        assert attempt.number == 1 and attempt.status == "completed"
    assert all(
        job.attempts == 1 for job in ContainerJob.objects.filter(pk__in=[j.pk for j in second])
    )
    alpha.refresh_from_db()
    assert alpha.health_status == "unhealthy"

    # 3. Alpha's engine is back: a recheck passes and it receives work again.
    engines[0].start()
    assert wait_until(
        lambda: ExecutorHost.objects.get(pk=alpha.pk).health_status == "healthy", 30
    ), worker_processes.logs()[-4000:]
    third = submit(8, tag="back")
    assert wait_until(lambda: all_done(third), 90), worker_processes.logs()[-4000:]
    assert ran_on(third)["alpha"] >= 1, ran_on(third)
    assert worker.poll() is None, "the worker died"

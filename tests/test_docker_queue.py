"""The worker with real containers and real faults: killed workers, an unreachable engine, a
dropped database connection, timeouts and cancellation from another process (a stopped engine
and floods of output are in test_docker_faults)."""

import io
import json
import signal
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from container_manager.api import create_job
from container_manager.models import ContainerJob, ExecutorHost

from .conftest import TEST_IMAGE, own_labels
from .test_queue_processes import wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_container_left"),
]

FAST_LIVENESS = json.dumps(
    {
        "HEARTBEAT_INTERVAL": 0.5,
        "WORKER_TIMEOUT": 3,
        "CANCEL_CHECK_INTERVAL": 0.2,
        # busybox sleep as PID 1 ignores SIGTERM: it is killed after the grace period.
        "STOP_GRACE_SECONDS": 1,
    }
)


def creations_by_job(docker_engine, since):
    """How many containers were created for each job since ``since`` (from engine events)."""
    counts = {}
    events = docker_engine.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": own_labels()},
        decode=True,
    )
    for event in events:
        job_id = event["Actor"]["Attributes"]["container_manager.job_id"]
        counts[job_id] = counts.get(job_id, 0) + 1
    return counts


@pytest.mark.processes
def test_killed_worker_jobs_are_finished_by_another_and_none_runs_twice(
    docker_host, docker_engine, worker_processes
):
    since = int(time.time()) - 1
    jobs = [
        create_job(TEST_IMAGE, ["sh", "-c", f"sleep 4; echo done-{i}"], host=docker_host)
        for i in range(5)
    ]
    env = {"CONTAINER_MANAGER_SETTINGS": FAST_LIVENESS}
    doomed = worker_processes.start("--poll-interval", "0.1", "--max-concurrent", "5", env=env)
    assert wait_until(lambda: ContainerJob.objects.filter(status="running").count() == 5, 30), (
        worker_processes.logs()
    )
    execution_ids = {j.pk: j.execution_id for j in ContainerJob.objects.all()}
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    rescuer = worker_processes.start("--until-idle", "--poll-interval", "0.1", env=env)
    assert rescuer.wait(60) == 0, worker_processes.logs()
    for i, job in enumerate(jobs):
        job.refresh_from_db()
        assert (job.status, job.exit_code, job.stdout) == ("completed", 0, f"done-{i}\n")
        assert job.execution_id == execution_ids[job.pk]
        assert job.attempt_set.count() == 1
    created = creations_by_job(docker_engine, since)
    assert {str(j.pk): created.get(str(j.pk)) for j in jobs} == {str(j.pk): 1 for j in jobs}


def test_timeout_stops_the_container_and_keeps_its_logs(docker_host, docker_engine, settings):
    settings.CONTAINER_MANAGER = {"STOP_GRACE_SECONDS": 1}
    job = create_job(
        TEST_IMAGE, ["sh", "-c", "echo started; sleep 300"], host=docker_host, timeout_seconds=2
    )
    started = time.monotonic()
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.1")
    assert time.monotonic() - started < 15
    job.refresh_from_db()
    assert job.status == "timed_out"
    assert job.stdout == "started\n"
    assert "timed out after 2 s" in job.last_error


@pytest.mark.processes
def test_cancel_from_another_process_stops_the_container(
    docker_host, docker_engine, worker_processes
):
    job = create_job(TEST_IMAGE, ["sh", "-c", "echo started; sleep 300"], host=docker_host)
    worker_processes.start(
        "--until-idle", "--poll-interval", "0.1", env={"CONTAINER_MANAGER_SETTINGS": FAST_LIVENESS}
    )
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30)
    time.sleep(0.5)  # let it print
    requested = time.monotonic()
    call_command("manage_container_job", "cancel", str(job.pk), stdout=io.StringIO())
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "cancelled", 20), (
        worker_processes.logs()
    )
    assert time.monotonic() - requested < 5
    job.refresh_from_db()
    assert job.stdout == "started\n"
    assert worker_processes.procs[0].wait(20) == 0


@pytest.mark.processes
@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_worker_survives_its_database_connections_being_killed(docker_host, worker_processes):
    worker_processes.start("--poll-interval", "0.2")
    first = create_job(TEST_IMAGE, ["echo", "one"], host=docker_host)
    assert wait_until(lambda: ContainerJob.objects.get(pk=first.pk).status == "completed", 30)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1
    second = create_job(TEST_IMAGE, ["echo", "two"], host=docker_host)
    assert wait_until(lambda: ContainerJob.objects.get(pk=second.pk).status == "completed", 30), (
        worker_processes.logs()
    )
    assert ContainerJob.objects.get(pk=second.pk).stdout == "two\n"
    assert worker_processes.procs[0].poll() is None, "the worker died"


def test_unreachable_engine_holds_its_job_and_the_worker_goes_on(docker_host):
    dead = ExecutorHost.objects.create(
        name="dead", executor_type="docker", connection_string="unix:///nonexistent/docker.sock"
    )
    held = create_job(TEST_IMAGE, ["true"], host=dead)
    fine = create_job(TEST_IMAGE, ["echo", "ok"], host=docker_host)
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.1")
    held.refresh_from_db()
    fine.refresh_from_db()
    dead.refresh_from_db()
    # The launch reached nothing: the claim is given back, no attempt spent, and the host is
    # out of routing until a health check passes.
    assert (held.status, held.attempts, held.attempt_set.count()) == ("queued", 0, 0)
    assert dead.health_status == "unhealthy"
    assert "unreachable" in dead.health_message
    assert "/nonexistent/docker.sock" in dead.health_message
    assert (fine.status, fine.stdout) == ("completed", "ok\n")


def test_a_fallback_chain_whose_first_engine_is_unreachable_runs_on_the_second(docker_host):
    # Its engine went away after its last health check: the launch finds out.
    dead = ExecutorHost.objects.create(
        name="dead",
        executor_type="docker",
        connection_string="unix:///nonexistent/docker.sock",
        health_status="healthy",
        next_health_check_at=timezone.now() + timedelta(hours=1),
    )
    chain = ExecutorHost.objects.create(
        name="dead-then-local",
        executor_type="fallback",
        executor_config={"members": [dead.name, docker_host.name]},
    )
    job = create_job(TEST_IMAGE, ["echo", "second"], host=chain)
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.1")
    job.refresh_from_db()
    assert (job.status, job.stdout, job.host, job.attempts) == (
        "completed",
        "second\n",
        docker_host,
        1,
    )
    attempt = job.attempt_set.get()
    assert [t["host"] for t in attempt.tries] == ["dead"]
    assert "/nonexistent/docker.sock" in attempt.tries[0]["error"]
    assert attempt.routing.startswith(f"{docker_host.name}: the first fit host of chain")
    assert ExecutorHost.objects.get(pk=dead.pk).health_status == "unhealthy"
    shown = io.StringIO()
    call_command("manage_container_job", "show", str(job.pk), stdout=shown)
    assert f"dead → {docker_host.name}" in shown.getvalue()


def test_the_issue_example_end_to_end(docker_host, docker_engine):
    out = io.StringIO()
    call_command(
        "manage_container_job",
        "create",
        "--host",
        docker_host.name,
        "--image",
        TEST_IMAGE,
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
        stdout=out,
    )
    job = ContainerJob.objects.get(pk=json.loads(out.getvalue())["id"])
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.1")
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.stdout, job.stderr) == ("failed", 3, "hi\n", "oops\n")
    assert len(job.execution_id) == 64
    shown = io.StringIO()
    call_command("manage_container_job", "show", str(job.pk), stdout=shown)
    assert f"Execution ID: {job.execution_id}" in shown.getvalue()

"""The same job on every backend, through the whole app: the worker, the database, the CLI.

Each backend of the contract suite (tests/backends/) gets a host like the one its contract
executor runs on; the same job spec ends with the same fields filled, and ``show`` prints its
execution id alike. Then a cloud execution outlives the worker that launched it: another
worker re-attaches to it and never launches a second one. And each cloud API goes away
while its job runs, past the job's end, and comes back: the job is held, then completes.
"""

import io
import json
import signal
import time

import pytest
from django.core.management import call_command
from django.db import connection  # noqa: F401 - read by skipif

from container_manager.api import create_job
from container_manager.models import ContainerJob, ExecutorHost

from .conftest import TEST_IMAGE
from .test_executor_contract import BACKENDS, BEHAVIOUR, COMMAND
from .test_queue_processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(
    params=[pytest.param(name, marks=module.MARKS) for name, module in BACKENDS.items()]
)
def backend(request):
    return BACKENDS[request.param]


def host_for(request, backend, **behaviour) -> ExecutorHost:
    """A host in the database configured as the backend's contract executor is."""
    spec = backend.make_executor(request, **behaviour).host
    return ExecutorHost.objects.create(
        name=spec.name,
        executor_type=spec.executor_type,
        connection_string=spec.connection_string,
        executor_config=dict(spec.config),
    )


def test_the_same_job_ends_alike_on_every_backend(request, backend):
    host = host_for(request, backend, **BEHAVIOUR)
    job = create_job(TEST_IMAGE, list(COMMAND), host=host, name="alike")
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")

    job.refresh_from_db()
    expected = (
        ("hi\noops\n", "")
        if getattr(backend, "MERGED_STREAMS", False)
        else (
            "hi\n",
            "oops\n",
        )
    )
    assert (job.status, job.exit_code, (job.stdout, job.stderr)) == ("failed", 3, expected), (
        job.last_error
    )
    assert "code 3" in job.last_error  # in the platform's words where it has some
    assert job.execution_id and job.host == host and job.attempts == 1
    assert job.started_at and job.finished_at and job.queued_at
    attempt = job.attempt_set.get()
    assert (attempt.status, attempt.exit_code, attempt.execution_id) == (
        "failed",
        3,
        job.execution_id,
    )
    shown = io.StringIO()
    call_command("manage_container_job", "show", str(job.pk), stdout=shown)
    assert f"Execution ID: {job.execution_id}" in shown.getvalue().splitlines()


LIVENESS = json.dumps(
    {"HEARTBEAT_INTERVAL": 0.5, "WORKER_TIMEOUT": 3, "CANCEL_CHECK_INTERVAL": 0.2}
)


@pytest.mark.processes
def test_a_lost_workers_cloud_execution_is_reattached_never_run_twice(request, worker_processes):
    backend = BACKENDS["cloudrun"]
    executor = backend.make_executor(request, seconds=6, exit_code=0, stdout="done\n", stderr="")
    spec = executor.host
    host = ExecutorHost.objects.create(
        name=spec.name, executor_type=spec.executor_type, executor_config=dict(spec.config)
    )
    job = create_job(TEST_IMAGE, ["sh", "-c", "sleep 6; echo done"], host=host)
    env = {"CONTAINER_MANAGER_SETTINGS": LIVENESS}
    doomed = worker_processes.start("--poll-interval", "0.1", env=env)
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30), (
        worker_processes.logs()
    )
    execution_id = ContainerJob.objects.get(pk=job.pk).execution_id
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    rescuer = worker_processes.start("--until-idle", "--poll-interval", "0.1", env=env)
    assert rescuer.wait(60) == 0, worker_processes.logs()
    job.refresh_from_db()
    assert (job.status, job.stdout, job.execution_id) == ("completed", "done\n", execution_id)
    assert job.attempt_set.count() == 1
    assert len(executor.standin.calls("run_job")) == 1, worker_processes.logs()


# The outage scenarios run once, in the PostgreSQL pass (as those with private engines do).
@pytest.mark.processes
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="runs in the PostgreSQL pass only")
@pytest.mark.parametrize("name", ["cloudrun", "fargate", "kubernetes"])
def test_a_cloud_api_gone_mid_job_holds_the_job_and_it_completes_when_back(
    request, worker_processes, name
):
    backend = BACKENDS[name]
    executor = backend.make_executor(request, seconds=4, exit_code=0, stdout="done\n", stderr="")
    spec = executor.host
    host = ExecutorHost.objects.create(
        name=spec.name,
        executor_type=spec.executor_type,
        connection_string=spec.connection_string,
        executor_config=dict(spec.config),
    )
    job = create_job(TEST_IMAGE, ["sh", "-c", "sleep 4; echo done"], host=host)
    settings = {**json.loads(LIVENESS), "HEALTH_RECHECK_BASE": 0.5, "HEALTH_RECHECK_MAX": 2.0}
    worker_processes.start(
        "--poll-interval", "0.1", env={"CONTAINER_MANAGER_SETTINGS": json.dumps(settings)}
    )
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30), (
        worker_processes.logs()
    )
    execution_id = ContainerJob.objects.get(pk=job.pk).execution_id
    cloud_api = backend.api(request, executor)
    cloud_api.stop()
    try:
        # Past the execution's end: the worker cannot see it end, and holds the job.
        assert wait_until(lambda: "unreachable" in worker_processes.logs(), 15), (
            worker_processes.logs()
        )
        time.sleep(4)
        job.refresh_from_db()
        assert job.status == "running", (job.status, job.last_error)
    finally:
        cloud_api.restart()
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "completed", 60), (
        worker_processes.logs()[-4000:]
    )
    job.refresh_from_db()
    assert (job.stdout, job.execution_id, job.attempts) == ("done\n", execution_id, 1)
    # And the host, marked unhealthy meanwhile, passes a check again.
    assert wait_until(
        lambda: ExecutorHost.objects.get(pk=host.pk).health_status == "healthy", 30
    ), worker_processes.logs()[-4000:]

"""The same job on every backend, through the whole app: the worker, the database, the CLI.

Each backend of the contract suite (tests/backends/) gets a host like the one its contract
executor runs on; the same job spec ends with the same fields filled, and ``show`` prints its
execution id alike. Then a cloud execution outlives the worker that launched it: another
worker re-attaches to it and never launches a second one.
"""

import io
import json
import signal

import pytest
from django.core.management import call_command

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

"""One contract, the same assertions, for every executor type, written against the spec alone.

Executors take a HostSpec and a LaunchSpec (container_manager.spec): no model, no database.
So these tests build the specs by hand and use no database; a backend that needs a service
(Docker: an engine) gets only that. A new backend adds itself to ``BACKENDS``.
"""

import uuid

import pytest

from container_manager.conf import setting
from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.executors.docker import DockerExecutor
from container_manager.executors.mock import MockExecutor
from container_manager.spec import Confinement, HostSpec, LaunchSpec

from .conftest import TEST_IMAGE, docker_engine_url

# The command every backend runs, and what the mock is told to make of it.
COMMAND = ("sh", "-c", "sleep 0.3; echo hi; echo oops >&2; exit 3")
MOCK_CONFIG = {"duration_seconds": 0.3, "exit_code": 3, "stdout": "hi\n", "stderr": "oops\n"}


def docker_executor(request):
    request.getfixturevalue("docker_engine")
    host = HostSpec(
        name=f"contract-{uuid.uuid4().hex[:8]}",
        executor_type="docker",
        connection_string=docker_engine_url(),
        config={"pull_policy": "never"},
    )
    return DockerExecutor(host)


def mock_executor(request, **config):
    return MockExecutor(HostSpec(name="contract-mock", executor_type="mock", config=config))


BACKENDS = {
    "docker": docker_executor,
    "mock": lambda request: mock_executor(request, **MOCK_CONFIG),
}


# Backends that need a service are marked so the unit tier (scripts/test --fast) skips them.
NEEDS = {"docker": [pytest.mark.docker]}


@pytest.fixture(params=[pytest.param(name, marks=NEEDS.get(name, ())) for name in sorted(BACKENDS)])
def executor(request):
    executor = BACKENDS[request.param](request)
    started = []
    executor.launched = started
    yield executor
    for execution_id in started:
        executor.cleanup(execution_id)


def spec_for(executor, command=COMMAND, attempt=1, job_id=None):
    confinement = Confinement(
        user=None,
        read_only_root=False,
        privileged=False,
        host_network=False,
        host_pid=False,
        add_capabilities=tuple(setting("DEFAULT_CAPABILITIES")),
        pids_limit=64,
        mounts=(),
    )
    return LaunchSpec(
        job_id=job_id or str(uuid.uuid4()),
        attempt=attempt,
        host=executor.host.name,
        image=TEST_IMAGE,
        command=tuple(command),
        env={"GREETING": "hi"},
        confinement=confinement,
        timeout_seconds=60,
    )


def start(executor, spec):
    execution_id = executor.launch(spec)
    executor.launched.append(execution_id)
    return execution_id


def test_launch_status_wait_harvest_logs_cleanup(executor):
    execution_id = start(executor, spec_for(executor))

    assert execution_id
    assert executor.status(execution_id) == RUNNING
    assert executor.wait(execution_id, timeout=0.01) is False
    assert executor.wait(execution_id, timeout=30) is True
    assert executor.status(execution_id) == EXITED
    outcome = executor.harvest(execution_id)
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, "hi\n", "oops\n")
    assert b"hi" in b"".join(executor.stream_logs(execution_id))
    executor.cleanup(execution_id)
    executor.cleanup(execution_id)
    assert executor.status(execution_id) == NOT_FOUND


def test_a_launch_is_idempotent_per_attempt_and_found_by_it(executor):
    spec = spec_for(executor)
    execution_id = start(executor, spec)
    # Tried again after an answer that was lost: the same execution, not a second one.
    assert executor.launch(spec) == execution_id
    assert executor.find_execution(spec.job_id, spec.attempt) == execution_id
    assert executor.find_execution(spec.job_id, spec.attempt + 1) is None
    retry = start(executor, spec_for(executor, attempt=2, job_id=spec.job_id))
    assert retry != execution_id


def test_stop_ends_a_running_execution(executor):
    if isinstance(executor, MockExecutor):
        executor.config["duration_seconds"] = 60
    execution_id = start(executor, spec_for(executor, command=("sleep", "60")))
    executor.stop(execution_id, grace_seconds=1)
    assert executor.wait(execution_id, timeout=10) is True
    assert executor.harvest(execution_id).exit_code != 0


def test_list_executions_names_the_job_of_each(executor):
    spec = spec_for(executor)
    execution_id = start(executor, spec)
    listed = executor.list_executions()
    if isinstance(executor, MockExecutor):
        assert listed == {}  # the mock cannot list: the documented default
    else:
        assert listed[execution_id] == spec.job_id


def test_health_check_reports_healthy(executor):
    assert executor.health_check().healthy

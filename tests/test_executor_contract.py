"""One contract, the same assertions, for every executor type, written against the spec alone.

Executors take a HostSpec and a LaunchSpec (container_manager.spec): no model, no database.
So these tests build the specs by hand and use no database; a backend that needs a service
(Docker: an engine; a cloud backend: its stand-in) gets only that. A new backend adds a module
to ``tests/backends/`` (see its ``__init__``).
"""

import importlib
import uuid
from pathlib import Path

import pytest

from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.spec import LaunchSpec

from .conftest import TEST_IMAGE, database_independent
from .specs import confinement

pytestmark = database_independent()

# The command every backend runs, and what those that do not run it are told it produces.
# It runs for a second: long enough to be seen running on a machine busy with other tests
# (0.3 s was not, once, under a parallel browser test run).
COMMAND = ("sh", "-c", "sleep 1; echo hi; echo oops >&2; exit 3")
BEHAVIOUR = {"seconds": 1.0, "exit_code": 3, "stdout": "hi\n", "stderr": "oops\n"}

BACKENDS = {
    path.stem: importlib.import_module(f"tests.backends.{path.stem}")
    for path in sorted((Path(__file__).parent / "backends").glob("*.py"))
    if path.stem != "__init__"
}


@pytest.fixture(
    params=[pytest.param(name, marks=module.MARKS) for name, module in BACKENDS.items()]
)
def backend(request):
    return BACKENDS[request.param]


@pytest.fixture
def executor(request, backend):
    return started_executor(request, backend, **BEHAVIOUR)


def started_executor(request, backend, **behaviour):
    """An executor whose executions are cleaned up when the test ends."""
    executor = backend.make_executor(request, **behaviour)
    executor.launched = []
    request.addfinalizer(lambda: [executor.cleanup(e) for e in executor.launched])
    return executor


def spec_for(executor, command=COMMAND, attempt=1, job_id=None):
    return LaunchSpec(
        job_id=job_id or str(uuid.uuid4()),
        attempt=attempt,
        host=executor.host.name,
        image=TEST_IMAGE,
        command=tuple(command),
        env={"GREETING": "hi"},
        confinement=confinement(),
        timeout_seconds=60,
    )


def start(executor, spec):
    execution_id = executor.launch(spec)
    executor.launched.append(execution_id)
    return execution_id


def test_launch_status_wait_harvest_logs_cleanup(executor, backend):
    execution_id = start(executor, spec_for(executor))

    assert execution_id
    assert executor.status(execution_id) == RUNNING
    assert executor.wait(execution_id, timeout=0.01) is False
    assert executor.wait(execution_id, timeout=30) is True
    assert executor.status(execution_id) == EXITED
    outcome = executor.harvest(execution_id)
    if getattr(backend, "MERGED_STREAMS", False):
        # The platform keeps one log per container (CloudWatch, Kubernetes): both in stdout.
        assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, "hi\noops\n", "")
    else:
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


def test_stop_ends_a_running_execution(request, backend):
    executor = started_executor(request, backend, **{**BEHAVIOUR, "seconds": 60, "exit_code": 0})
    execution_id = start(executor, spec_for(executor, command=("sleep", "60")))
    executor.stop(execution_id, grace_seconds=1)
    assert executor.wait(execution_id, timeout=10) is True
    assert executor.harvest(execution_id).exit_code != 0


def test_list_executions_names_the_job_of_each(executor, backend):
    spec = spec_for(executor)
    execution_id = start(executor, spec)
    listed = executor.list_executions()
    if backend.CAN_LIST:
        assert listed[execution_id] == spec.job_id
    else:
        assert listed == {}  # the documented default of a backend that cannot list


def test_health_check_reports_healthy(executor):
    assert executor.health_check().healthy

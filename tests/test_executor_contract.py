"""One contract, the same assertions, for every executor type."""

import pytest

from container_manager.api import create_job
from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.launching import launch

from .conftest import TEST_IMAGE

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "mock"])
def host(request):
    # The mock is told to produce what the real container produces.
    if request.param == "mock":
        host = request.getfixturevalue("mock_host")
        host.executor_config = {
            "duration_seconds": 0.3,
            "exit_code": 3,
            "stdout": "hi\n",
            "stderr": "oops\n",
        }
        host.save()
        return host
    return request.getfixturevalue("docker_host")


def test_launch_status_logs_cleanup(host):
    job = create_job(
        TEST_IMAGE, ["sh", "-c", "sleep 0.3; echo hi; echo oops >&2; exit 3"], host=host
    )
    executor = host.get_executor()

    execution_id = launch(job, executor)

    assert execution_id
    assert job.execution_id == execution_id
    assert job.get_execution_identifier() == execution_id
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


def test_stop_ends_a_running_execution(host):
    host.executor_config = (
        {**host.executor_config, "duration_seconds": 60}
        if host.executor_type == "mock"
        else host.executor_config
    )
    job = create_job(TEST_IMAGE, ["sleep", "60"], host=host)
    executor = host.get_executor()
    execution_id = launch(job, executor)
    executor.stop(execution_id, grace_seconds=1)
    assert executor.wait(execution_id, timeout=10) is True
    assert executor.harvest(execution_id).exit_code != 0
    executor.cleanup(execution_id)


def test_health_check_reports_healthy(host):
    assert host.get_executor().health_check().healthy

"""The Cloud Run Jobs backend against the local stand-in (tests/standins/cloudrun.py): told
what each execution produces, like the mock; the official clients talk to it over HTTP."""

import uuid

from container_manager.executors.cloudrun import CloudRunExecutor
from container_manager.spec import HostSpec

from ..standins.cloudrun import CloudRunStandin

MARKS = []
CAN_LIST = True


def make_executor(request, seconds, exit_code, stdout, stderr):
    standin = CloudRunStandin(seconds=seconds, exit_code=exit_code, stdout=stdout, stderr=stderr)
    standin.start()
    request.addfinalizer(standin.stop)
    request.addfinalizer(lambda: _no_standin_errors(standin))
    config = {
        "project": "standin-project",
        "region": "europe-west1",
        "api_endpoint": standin.url,
        "logging_endpoint": standin.url,
        "timeout": 10,
        "poll_seconds": 0.05,
        "log_settle_seconds": 0,
    }
    host = HostSpec(
        name=f"contract-{uuid.uuid4().hex[:8]}", executor_type="cloudrun", config=config
    )
    executor = CloudRunExecutor(host)
    executor.standin = standin
    return executor


def api(request, executor):
    """The stand-in answering ``executor`` (``stop`` and ``restart`` it)."""
    return executor.standin


def _no_standin_errors(standin):
    # The stand-in parses every answer strictly: an unknown field would be a bug of its own.
    assert standin.errors == []

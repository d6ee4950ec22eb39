"""The Docker backend on the shared engine (a host name of its own; it runs the command)."""

import uuid

import pytest

from container_manager.executors.docker import DockerExecutor
from container_manager.spec import HostSpec

from ..conftest import docker_engine_url

MARKS = [pytest.mark.docker]
CAN_LIST = True


def make_executor(request, **behaviour):
    request.getfixturevalue("docker_engine")
    host = HostSpec(
        name=f"contract-{uuid.uuid4().hex[:8]}",
        executor_type="docker",
        connection_string=docker_engine_url(),
        config={"pull_policy": "never"},
    )
    return DockerExecutor(host)

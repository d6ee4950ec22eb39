import os

import pytest

from container_manager.models import ExecutorHost

TEST_IMAGE = os.environ.get("CONTAINER_MANAGER_TEST_IMAGE", "local/busybox:latest")
IN_CI = os.environ.get("CI") == "true"


def docker_engine_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.fixture(scope="session")
def docker_engine():
    """A reachable Docker engine with the test image, or a loud failure under CI."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_engine_url(), timeout=10)
        client.ping()
        client.images.get(TEST_IMAGE)
    except Exception as error:  # noqa: BLE001 - any failure means "no usable engine"
        message = (
            f"no usable Docker engine at {docker_engine_url()} with image {TEST_IMAGE} "
            f"({error}); run scripts/docker-engine.sh"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture
def docker_host(db, docker_engine):
    return ExecutorHost.objects.create(
        name="docker-local",
        executor_type="docker",
        connection_string=docker_engine_url(),
        executor_config={"pull_policy": "never"},
    )


@pytest.fixture
def mock_host(db):
    return ExecutorHost.objects.create(name="mock", executor_type="mock")

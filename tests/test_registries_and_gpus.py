"""Private registries and GPUs on Docker: a real registry with basic auth on 127.0.0.1, the
credentials sealed at rest and used for the pull, wrong ones named by registry, never by
password; GPU requests honoured by the policy and refused clearly by an engine without any."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from container_manager.api import create_job
from container_manager.models import ContainerJob, RegistryCredential, image_registry

from .conftest import TEST_IMAGE
from .engines import PrivateRegistry

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def registry(docker_engine):
    registry = PrivateRegistry()
    try:
        registry.start()
        yield registry
    finally:
        registry.destroy(docker_engine)


@pytest.fixture
def pulling_host(docker_host):
    docker_host.executor_config = {"pull_policy": "always"}
    docker_host.save()
    return docker_host


def run_worker():
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")


def test_an_image_of_a_private_registry_is_pulled_with_its_sealed_credentials(
    registry, docker_engine, pulling_host
):
    image = registry.push(docker_engine, TEST_IMAGE, "cm-tests/busybox")
    credential = RegistryCredential.objects.create(
        registry=registry.address, username=registry.username, password=registry.password
    )
    stored = RegistryCredential.objects.values_list("password", flat=True).get()
    assert stored.startswith("cmsecret:v1:") and registry.password not in stored
    assert str(credential) == f"{registry.username}@{registry.address}"

    job = create_job(image, ["echo", "pulled"], host=pulling_host)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.stdout) == ("completed", "pulled\n"), job.last_error


def test_wrong_credentials_name_the_registry_not_the_password(
    registry, docker_engine, pulling_host
):
    image = registry.push(docker_engine, TEST_IMAGE, "cm-tests/busybox")
    RegistryCredential.objects.create(
        registry=registry.address, username=registry.username, password="not-the-password-42"
    )
    job = create_job(image, ["true"], host=pulling_host)
    run_worker()
    job.refresh_from_db()
    assert job.status == "failed"
    assert f"registry {registry.address} refused the login of {registry.username}" in (
        job.last_error
    )
    assert "not-the-password-42" not in job.last_error
    assert registry.password not in job.last_error


def test_an_engine_without_gpus_refuses_a_gpu_job_clearly(docker_host):
    job = create_job(TEST_IMAGE, ["true"], host=docker_host, gpus=1)
    run_worker()
    job.refresh_from_db()
    assert job.status == "failed"
    assert f"Docker host '{docker_host.name}' cannot provide the 1 GPU(s)" in job.last_error


def test_gpu_requests_are_bounded_by_the_policy(docker_host, settings):
    settings.CONTAINER_MANAGER = {"MAX_GPUS": 0}
    with pytest.raises(ValidationError) as error:
        create_job(TEST_IMAGE, ["true"], host=docker_host, gpus=1)
    assert error.value.message_dict["gpus"] == [
        f"1 GPUs is over the maximum of 0 GPUs on host '{docker_host.name}' (rule: MAX_GPUS)"
    ]
    assert not ContainerJob.objects.exists()


@pytest.mark.parametrize(
    "image, registry",
    [
        ("alpine", "docker.io"),
        ("library/alpine:3.20", "docker.io"),
        ("ghcr.io/team/tool:1", "ghcr.io"),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000"),
        ("localhost/x", "localhost"),
    ],
)
def test_the_registry_of_an_image(image, registry):
    assert image_registry(image) == registry

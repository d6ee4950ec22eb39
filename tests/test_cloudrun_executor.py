"""The Cloud Run Jobs executor against the local stand-in of the Cloud Run Admin API v2 and
Cloud Logging (tests/standins/cloudrun.py), through the official clients over HTTP.

What a real project adds (IAM, quotas, image pulls, real timings) cannot be reached from here:
see /tmp/readme_cloudrun.md's recipe for trying it against a project of your own.
"""

import subprocess
import sys
import uuid

import pytest
from django.core.exceptions import ValidationError

from container_manager.conf import setting
from container_manager.exceptions import (
    ExecutorError,
    ExecutorUnavailable,
    HostRefused,
    LaunchError,
)
from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.executors.cloudrun import CloudRunExecutor
from container_manager.executors.cloudrun.definitions import ATTEMPT_ENV, JOB_ID_ENV
from container_manager.spec import HostSpec, LaunchSpec, Mount, RegistryAuth

from .conftest import database_independent
from .specs import confinement
from .standins.cloudrun import CloudRunStandin

pytestmark = database_independent()

PROJECT, REGION = "standin-project", "europe-west1"
IMAGE = "europe-docker.pkg.dev/standin-project/jobs/tool:1"


@pytest.fixture
def standin():
    server = CloudRunStandin(seconds=0.2, exit_code=0, stdout="hello\n", stderr="")
    server.start()
    yield server
    server.stop()
    assert server.errors == []  # every answer parsed strictly as the clients' own types


def executor_for(standin, name=None, **config):
    base = {
        "project": PROJECT,
        "region": REGION,
        "api_endpoint": standin.url,
        "logging_endpoint": standin.url,
        "timeout": 5,
        "poll_seconds": 0.05,
        "log_settle_seconds": 0,
    }
    base.update(config)
    host = HostSpec(name=name or f"cr-{uuid.uuid4().hex[:6]}", executor_type="cloudrun",
                    config=base)  # fmt: skip
    return CloudRunExecutor(host)


@pytest.fixture
def executor(standin):
    return executor_for(standin)


def spec_for(executor, **changes):
    values = {
        "job_id": str(uuid.uuid4()),
        "attempt": 1,
        "host": executor.host.name,
        "image": IMAGE,
        "command": ("python", "-c", "print('hello')"),
        "env": {"GREETING": "hi", "TOKEN": "s3cret-value"},
        "secret_names": frozenset({"TOKEN"}),
        "confinement": confinement(),
        "timeout_seconds": 60,
        "memory_mb": 512,
        "cpus": 0.5,
    }
    values.update(changes)
    return LaunchSpec(**values)


# -- job definitions and overrides ----------------------------------------------------------


def test_a_job_definition_is_created_once_and_reused(standin, executor):
    first = executor.launch(spec_for(executor))
    second = executor.launch(spec_for(executor))
    assert first != second
    assert len(standin.calls("create_job")) == 1
    assert standin.calls("update_job") == []
    assert len(standin.jobs) == 1
    job = next(iter(standin.jobs.values()))
    assert job["labels"]["container-manager-managed"] == "true"
    task = job["template"]["template"]
    assert task["maxRetries"] == 0  # the queue retries, not Cloud Run
    (container,) = task["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"] == {"memory": "512Mi", "cpu": "500m"}
    assert "env" not in container  # the definition holds no secret


def test_other_resources_get_their_own_definition_and_a_changed_one_is_put_back(standin, executor):
    executor.launch(spec_for(executor))
    executor.launch(spec_for(executor, memory_mb=1024))
    assert len(standin.jobs) == 2
    assert len(standin.calls("create_job")) == 2
    # Someone edits a definition by hand: the next launch puts its template back.
    name, job = next(
        (n, j)
        for n, j in standin.jobs.items()
        if j["template"]["template"]["containers"][0]["resources"]["limits"]["memory"] == "512Mi"
    )
    job["template"]["template"]["containers"][0]["resources"]["limits"]["memory"] = "4Gi"
    job["template"]["template"]["maxRetries"] = 3
    executor.launch(spec_for(executor))
    assert len(standin.calls("update_job")) == 1
    restored = standin.jobs[name]["template"]["template"]
    assert restored["containers"][0]["resources"]["limits"]["memory"] == "512Mi"
    assert restored["maxRetries"] == 0
    assert len(standin.jobs) == 2


def test_each_run_carries_its_overrides(standin, executor):
    spec = spec_for(executor, attempt=2, timeout_seconds=90)
    execution_id = executor.launch(spec)
    (run,) = standin.calls("run_job")
    overrides = run["body"]["overrides"]
    assert overrides["taskCount"] == 1
    assert overrides["timeout"] == "90s"
    (container,) = overrides["containerOverrides"]
    assert container["args"] == list(spec.command)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GREETING"] == "hi" and env["TOKEN"] == "s3cret-value"
    assert env[JOB_ID_ENV] == spec.job_id and env[ATTEMPT_ENV] == "2"
    # The execution id is the execution's full resource name.
    assert execution_id.startswith(f"projects/{PROJECT}/locations/{REGION}/jobs/cm-")
    assert "/executions/" in execution_id


def test_the_run_operation_is_parsed_strictly_and_ends_with_the_execution(standin, executor):
    """What the official client does with jobs:run's Operation (its polling parses every
    field strictly) works against the stand-in, and ends when the execution does."""
    execution_id = executor.launch(spec_for(executor))
    clients = executor.clients
    job_name = execution_id.split("/executions/")[0]
    operation = clients.jobs.run_job(request=clients.run_v2.RunJobRequest(name=job_name))
    assert operation.metadata.name.startswith(job_name + "/executions/")
    execution = operation.result(timeout=10)
    assert execution.succeeded_count == 1
    assert execution.completion_time is not None


def test_a_launch_tried_again_finds_the_attempt_from_another_worker(standin, executor):
    spec = spec_for(executor)
    execution_id = executor.launch(spec)
    other_worker = executor_for(standin, name=executor.host.name)
    assert other_worker.launch(spec) == execution_id
    assert other_worker.find_execution(spec.job_id, 1) == execution_id
    assert len(standin.calls("run_job")) == 1
    # Another host in the same project sees none of it.
    other_host = executor_for(standin)
    assert other_host.find_execution(spec.job_id, 1) is None
    assert other_host.list_executions() == {}
    assert executor.list_executions() == {execution_id: spec.job_id}


def test_a_job_cannot_claim_the_variables_that_link_it_to_its_attempt(executor):
    with pytest.raises(LaunchError, match=JOB_ID_ENV):
        executor.launch(spec_for(executor, env={JOB_ID_ENV: "someone-else"}))


# -- outcomes ---------------------------------------------------------------------------------


def test_success_reports_exit_code_0_and_the_output(executor):
    execution_id = executor.launch(spec_for(executor))
    assert executor.status(execution_id) == RUNNING
    assert executor.wait(execution_id, timeout=10)
    assert executor.status(execution_id) == EXITED
    outcome = executor.harvest(execution_id)
    assert (outcome.exit_code, outcome.stdout, outcome.stderr, outcome.error) == (
        0,
        "hello\n",
        "",
        "",
    )
    # Cloud Run reports no usage.
    assert outcome.peak_memory_bytes is None and outcome.cpu_seconds is None


def test_a_failing_execution_reports_its_exit_code(standin, executor):
    standin.behaviour.update(exit_code=7, stdout="working\n", stderr="boom\n")
    execution_id = executor.launch(spec_for(executor))
    assert executor.wait(execution_id, timeout=10)
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code == 7
    assert (outcome.stdout, outcome.stderr) == ("working\n", "boom\n")
    assert "exit code 7" in outcome.error


def test_harvesting_a_running_execution_is_refused(standin, executor):
    standin.behaviour["seconds"] = 30
    execution_id = executor.launch(spec_for(executor))
    with pytest.raises(ExecutorError, match="still running"):
        executor.harvest(execution_id)
    executor.cleanup(execution_id)


def test_stop_cancels_and_says_there_is_no_exit_code(standin, executor):
    standin.behaviour["seconds"] = 60
    execution_id = executor.launch(spec_for(executor))
    executor.stop(execution_id, grace_seconds=5)
    assert len(standin.calls("cancel_execution")) == 1
    assert executor.wait(execution_id, timeout=5)
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert "cancelled" in outcome.error and "no exit code" in outcome.error
    executor.stop(execution_id, grace_seconds=5)  # ended already: nothing to do


def test_cleanup_deletes_the_execution_and_is_safe_twice(standin, executor):
    execution_id = executor.launch(spec_for(executor))
    assert executor.wait(execution_id, timeout=10)
    executor.cleanup(execution_id)
    executor.cleanup(execution_id)
    assert executor.status(execution_id) == NOT_FOUND
    assert execution_id not in standin.executions
    assert executor.list_executions() == {}


def test_output_is_split_by_stream_capped_and_escaped(standin, executor, settings):
    settings.CONTAINER_MANAGER = {"MAX_OUTPUT_BYTES": 200}
    stdout = "".join(f"out line {i}\n" for i in range(100))
    standin.behaviour.update(stdout=stdout, stderr="bad\x00byte\nsecond\n")
    execution_id = executor.launch(spec_for(executor))
    assert executor.wait(execution_id, timeout=10)
    outcome = executor.harvest(execution_id)
    assert outcome.stdout.startswith("out line 0\n")
    assert outcome.stdout.rstrip().endswith("out line 99")
    assert "output truncated" in outcome.stdout and "bytes omitted" in outcome.stdout
    assert "out line 50\n" not in outcome.stdout
    assert outcome.stderr == "bad\\x00byte\nsecond\n"
    assert "out line" not in outcome.stderr
    combined = b"".join(executor.stream_logs(execution_id))
    assert b"out line 99\n" in combined and b"second\n" in combined


def test_output_that_reaches_logging_late_is_waited_for(standin):
    standin.log_delay_seconds = 0.5
    executor = executor_for(standin, log_settle_seconds=1.5)
    execution_id = executor.launch(spec_for(executor))
    assert executor.wait(execution_id, timeout=10)
    assert executor.harvest(execution_id).stdout == "hello\n"


def test_following_the_logs_ends_with_the_execution(standin, executor):
    standin.behaviour.update(seconds=0.3, stdout="a\nb\n")
    execution_id = executor.launch(spec_for(executor))
    assert b"".join(executor.stream_logs(execution_id, follow=True)) == b"a\nb\n"


# -- what Cloud Run cannot do -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"privileged": True}, "privileged"),
        ({"host_network": True}, "network namespace"),
        ({"host_pid": True}, "PID namespace"),
        ({"mounts": (Mount("/srv/data", "/data", True),)}, "bind mounts"),
        ({"add_capabilities": (*setting("DEFAULT_CAPABILITIES"), "NET_ADMIN")}, "NET_ADMIN"),
        ({"read_only_root": True}, "read-only root"),
        ({"user": "1000:1000"}, "a user"),
    ],
)
def test_confinement_cloud_run_cannot_express_is_refused(standin, executor, changes, says):
    with pytest.raises(LaunchError, match=says):
        executor.launch(spec_for(executor, confinement=confinement(**changes)))
    assert standin.requests == []  # refused before asking anything


def test_gpus_need_a_configured_gpu_type(standin, executor):
    with pytest.raises(LaunchError, match="gpu_type"):
        executor.launch(spec_for(executor, gpus=1))
    assert standin.requests == []
    with_gpus = executor_for(standin, gpu_type="nvidia-l4")
    with_gpus.launch(spec_for(with_gpus, gpus=1))
    (job,) = standin.jobs.values()
    task = job["template"]["template"]
    assert task["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert task["nodeSelector"] == {"accelerator": "nvidia-l4"}


def test_registry_credentials_for_another_registry_are_refused_without_the_password(
    standin, executor
):
    auth = RegistryAuth(registry="ghcr.io", username="robot", password="hunter2-pass")
    with pytest.raises(LaunchError) as refused:
        executor.launch(spec_for(executor, image="ghcr.io/team/tool:1", registry_auth=auth))
    message = str(refused.value)
    assert "ghcr.io" in message and "service account" in message
    assert "hunter2-pass" not in message
    assert standin.requests == []
    # Artifact Registry: Cloud Run pulls with the service account; the job runs.
    google = RegistryAuth(registry="europe-docker.pkg.dev", username="_json_key", password="k")
    assert executor.launch(spec_for(executor, registry_auth=google))


# -- faults ------------------------------------------------------------------------------------


def test_permission_denied_refuses_the_host_naming_the_permission(standin, executor):
    standin.fail_with(403, "PERMISSION_DENIED", "Permission 'run.jobs.get' denied on resource")
    with pytest.raises(HostRefused, match=r"run\.jobs\.get"):
        executor.launch(spec_for(executor))
    health = executor.health_check()
    assert not health.healthy and "run.jobs.list" in health.message


def test_running_refused_names_the_run_permission(standin, executor):
    standin.fail_with(403, "PERMISSION_DENIED", "Permission denied", methods=["run_job"])
    with pytest.raises(HostRefused, match=r"run\.jobs\.run"):
        executor.launch(spec_for(executor))


def test_quota_exhausted_refuses_the_host(standin, executor):
    standin.fail_with(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded for job executions", methods=["run_job"]
    )
    with pytest.raises(HostRefused, match="quota"):
        executor.launch(spec_for(executor))


def test_an_invalid_request_fails_the_job_not_the_host(standin, executor):
    standin.fail_with(400, "INVALID_ARGUMENT", "image is malformed", methods=["run_job"])
    with pytest.raises(LaunchError, match="malformed") as failed:
        executor.launch(spec_for(executor))
    assert not isinstance(failed.value, HostRefused | ExecutorUnavailable)


def test_an_unavailable_api_makes_the_host_unavailable(standin, executor):
    standin.fail_with(503, "UNAVAILABLE", "The service is currently unavailable.")
    with pytest.raises(ExecutorUnavailable) as down:
        executor.launch(spec_for(executor))
    assert not down.value.maybe_started
    assert not executor.health_check().healthy


def test_an_api_that_does_not_answer_makes_the_host_unavailable(standin):
    executor = executor_for(standin, timeout=0.5)
    standin.hang_seconds = 2
    with pytest.raises(ExecutorUnavailable):
        executor.status(f"projects/{PROJECT}/locations/{REGION}/jobs/cm-x/executions/cm-x-1")


def test_an_answer_lost_while_running_may_have_started_something(standin, executor):
    standin.fail_with(500, "INTERNAL", "backend error", methods=["run_job"])
    with pytest.raises(ExecutorUnavailable) as lost:
        executor.launch(spec_for(executor))
    assert lost.value.maybe_started


def test_nobody_listening_makes_the_host_unavailable(standin, executor):
    standin.stop()
    with pytest.raises(ExecutorUnavailable, match="could not be reached"):
        executor.launch(spec_for(executor))
    health = executor.health_check()
    assert not health.healthy and "could not be reached" in health.message


def test_without_the_client_library_connecting_says_how_to_install_it(monkeypatch, standin):
    monkeypatch.setitem(sys.modules, "google.cloud.run_v2", None)
    executor = executor_for(standin)
    with pytest.raises(ExecutorUnavailable, match=r"django-container-jobs\[cloudrun\]"):
        executor.launch(spec_for(executor))
    health = executor.health_check()
    assert not health.healthy and "django-container-jobs[cloudrun]" in health.message
    # Named first, before anything about the host's settings.
    bare = CloudRunExecutor(HostSpec(name="cloudrun", executor_type="cloudrun"))
    assert "django-container-jobs[cloudrun]" in bare.health_check().message


def test_the_package_imports_without_any_google_library():
    blocked = "import sys; sys.modules['google'] = None; "
    code = blocked + "import container_manager.executors.cloudrun as m; print(m.CloudRunExecutor)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "CloudRunExecutor" in result.stdout


def test_health_check_reports_healthy(standin, executor):
    health = executor.health_check()
    assert health.healthy, health.message
    (listed,) = standin.calls("list_jobs")
    assert listed["query"]["pageSize"] == "1"


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, says",
    [
        ({"region": REGION}, "'project' is required"),
        ({"project": PROJECT}, "'region' is required"),
        ({"project": PROJECT, "region": REGION, "max_retries": 3}, "can only be 0"),
        ({"project": PROJECT, "region": REGION, "colour": "blue"}, "unknown cloudrun option"),
        (
            {"project": PROJECT, "region": REGION, "api_endpoint": "http://run.example.com"},
            "loopback",
        ),
        (
            {"project": PROJECT, "region": REGION, "vpc_connector": "c", "vpc_network": "n"},
            "either",
        ),
        ({"project": PROJECT, "region": REGION, "vpc_network": "n"}, "go together"),
        ({"project": PROJECT, "region": REGION, "service_account": "nobody"}, "e-mail"),
    ],
)
def test_unusable_config_is_refused(config, says):
    with pytest.raises(ValidationError, match=says):
        CloudRunExecutor.validate_config(config)


def test_a_full_config_is_accepted():
    CloudRunExecutor.validate_config(
        {
            "project": PROJECT,
            "region": REGION,
            "service_account": "jobs@standin-project.iam.gserviceaccount.com",
            "vpc_network": "default",
            "vpc_subnet": "jobs",
            "vpc_egress": "private-ranges-only",
            "gpu_type": "nvidia-l4",
            "max_retries": 0,
            "timeout": 30,
        }
    )


def test_an_unusable_config_makes_the_host_unavailable(standin):
    executor = executor_for(standin, max_retries=2)
    with pytest.raises(ExecutorUnavailable, match="max_retries"):
        executor.launch(spec_for(executor))
    assert standin.requests == []

"""The Fargate executor against the moto stand-in (tests/standins/fargate.py): task
definitions and sizes, what run_task is sent, idempotent launches, outcomes and reasons,
refusals, and what AWS errors become. No database."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError

from container_manager.exceptions import (
    ExecutorError,
    ExecutorUnavailable,
    HostRefused,
    LaunchError,
)
from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.executors.fargate import FargateExecutor
from container_manager.executors.fargate.connection import INSTALL_HINT, translate
from container_manager.executors.fargate.definitions import fargate_size
from container_manager.spec import HostSpec, LaunchSpec, Mount, RegistryAuth

from .conftest import database_independent
from .specs import confinement
from .standins.fargate import (  # noqa: F401 - fargate_fixture is the "fargate" fixture
    EXECUTION_ROLE,
    LOG_GROUP,
    REGION,
    fargate_fixture,
    free_port,
)

pytestmark = database_independent()

IMAGE = "registry.example.com/team/tool:1"
COMMAND = ("sh", "-c", "echo hi; echo oops >&2; exit 3")


def spec_for(executor, job_id=None, attempt=1, **changes):
    values = {
        "job_id": job_id or str(uuid.uuid4()),
        "attempt": attempt,
        "host": executor.host.name,
        "image": IMAGE,
        "command": COMMAND,
        "env": {"GREETING": "hi"},
        "confinement": confinement(),
        "timeout_seconds": 60,
    }
    values.update(changes)
    return LaunchSpec(**values)


def executor_on(host):
    """An executor for ``host`` that reads a stopped task's log without waiting (the
    stand-in's log is complete at once; the real wait is tested on its own)."""
    executor = FargateExecutor(host)
    executor.log_settle_seconds = 0.0
    return executor


@pytest.fixture
def executor(fargate):
    executor = executor_on(fargate.host())
    fargate.behave(executor.config["cluster"], seconds=0.2, exit_code=3, stdout="hi\noops\n")
    return executor


def captured_run_task(executor):
    """The parameters of every run_task the executor sends, as boto3 builds them."""
    sent = []
    executor.clients.ecs.meta.events.register(
        "provide-client-params.ecs.RunTask", lambda params, **_: sent.append(dict(params))
    )
    return sent


def registered_definition(fargate, task_arn):
    task = fargate.ecs.describe_tasks(cluster=fargate.task(task_arn).cluster_name, tasks=[task_arn])
    arn = task["tasks"][0]["taskDefinitionArn"]
    return fargate.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]


# -- the lifecycle ----------------------------------------------------------------------------


def test_a_task_runs_ends_is_harvested_and_cleaned_up(executor, fargate):
    execution_id = executor.launch(spec_for(executor))

    assert execution_id.startswith(f"arn:aws:ecs:{REGION}:")
    assert executor.status(execution_id) == RUNNING
    assert executor.wait(execution_id, timeout=0.01) is False
    assert executor.wait(execution_id, timeout=30) is True
    assert executor.status(execution_id) == EXITED
    outcome = executor.harvest(execution_id)
    # CloudWatch keeps one stream: stderr's lines are in stdout, stderr is empty.
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, "hi\noops\n", "")
    assert (outcome.oom_killed, outcome.error) == (False, "")
    assert (outcome.peak_memory_bytes, outcome.cpu_seconds) == (None, None)
    assert b"".join(executor.stream_logs(execution_id)) == b"hi\noops\n"
    assert b"".join(executor.stream_logs(execution_id, follow=True)) == b"hi\noops\n"
    executor.cleanup(execution_id)
    executor.cleanup(execution_id)
    assert executor.status(execution_id) == NOT_FOUND
    # Another process sees it gone too: the task carries the mark.
    assert executor_on(executor.host).status(execution_id) == NOT_FOUND
    assert execution_id not in executor_on(executor.host).list_executions()


def test_output_is_capped_and_escaped_like_dockers(executor, fargate, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "MAX_OUTPUT_BYTES": 64}
    fargate.behave(executor.config["cluster"], seconds=0, exit_code=0)
    execution_id = executor.launch(spec_for(executor))
    lines = "".join(f"line {i}\n" for i in range(100)) + "bad \udcff byte\n"
    fargate.finish(execution_id, exit_code=0, stdout=lines)
    outcome = executor.harvest(execution_id)
    assert "output truncated" in outcome.stdout
    assert outcome.stdout.startswith("line 0\n")
    assert outcome.stdout.endswith("bad \\xff byte\n")


def test_stop_ends_a_running_task_with_sigterm(executor, fargate):
    fargate.behave(executor.config["cluster"], seconds=float("inf"))
    execution_id = executor.launch(spec_for(executor, command=("sleep", "600")))
    assert executor.status(execution_id) == RUNNING
    executor.stop(execution_id, grace_seconds=1)
    assert executor.wait(execution_id, timeout=10) is True
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code == 143
    assert "stopped by container_manager (UserInitiated)" in outcome.error
    task = fargate.task(execution_id)
    assert task.stopped_reason == "stopped by container_manager"
    executor.stop(execution_id, grace_seconds=1)  # again: nothing to do, no error
    fargate.finish(execution_id, exit_code=0)
    executor.stop(execution_id, grace_seconds=1)  # an ended task stays as it ended
    assert fargate.task(execution_id).stopped_reason == "Essential container in task exited"


def test_cleanup_stops_a_task_still_running(executor, fargate):
    fargate.behave(executor.config["cluster"], seconds=float("inf"))
    execution_id = executor.launch(spec_for(executor))
    executor.cleanup(execution_id)
    assert fargate.task(execution_id).desired_status == "STOPPED"
    assert executor.status(execution_id) == NOT_FOUND


def test_health_check_describes_the_cluster(executor, fargate):
    health = executor.health_check()
    assert health.healthy, health.message
    assert f"ECS cluster '{executor.config['cluster']}' in {REGION} is ACTIVE" in health.message
    missing = executor_on(fargate.host(cluster="no-such-cluster"))
    health = missing.health_check()
    assert not health.healthy
    assert "'no-such-cluster' does not exist" in health.message


# -- task definitions and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "memory_mb", "size"),
    [
        (None, None, (256, 512)),
        (0.25, 512, (256, 512)),
        (0.1, 100, (256, 512)),
        (0.25, 600, (256, 1024)),
        (0.25, 3000, (512, 3072)),
        (0.5, None, (512, 1024)),
        (1, 3000, (1024, 3072)),
        (1.5, 1024, (2048, 4096)),
        (2, 16384, (2048, 16384)),
        (4, 30 * 1024 + 1, (8192, 32768)),
        (16, 120 * 1024, (16384, 120 * 1024)),
    ],
)
def test_a_job_gets_the_smallest_fargate_size_that_covers_it(cpus, memory_mb, size):
    assert fargate_size(cpus, memory_mb) == size


@pytest.mark.parametrize(("cpus", "memory_mb"), [(17, None), (None, 120 * 1024 + 1)])
def test_a_job_larger_than_any_fargate_size_is_refused(cpus, memory_mb):
    with pytest.raises(LaunchError, match="no Fargate task size gives"):
        fargate_size(cpus, memory_mb)


def test_task_definitions_are_registered_once_per_image_and_size(executor, fargate):
    first = executor.launch(spec_for(executor, memory_mb=1000, cpus=0.5))
    second = executor.launch(spec_for(executor, memory_mb=1024, cpus=0.5))  # the same size
    other_size = executor.launch(spec_for(executor, memory_mb=4096, cpus=1))
    other_image = executor.launch(spec_for(executor, memory_mb=1024, image="other/image:2"))
    # Another process (no cache) finds the registered one in ECS.
    again = executor_on(executor.host).launch(spec_for(executor, memory_mb=900, cpus=0.4))

    arn = registered_definition(fargate, first)["taskDefinitionArn"]
    assert registered_definition(fargate, second)["taskDefinitionArn"] == arn
    assert registered_definition(fargate, again)["taskDefinitionArn"] == arn
    assert registered_definition(fargate, other_size)["taskDefinitionArn"] != arn
    assert registered_definition(fargate, other_image)["taskDefinitionArn"] != arn
    family = registered_definition(fargate, first)["family"]
    assert family.startswith("cm-")
    assert fargate.ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"] == [arn]


def test_the_task_definition_carries_size_logs_and_confinement(executor, fargate):
    spec = spec_for(
        executor,
        memory_mb=1500,
        cpus=0.25,
        working_dir="/work",
        confinement=confinement(
            user="1000:1000", read_only_root=True, add_capabilities=("CHOWN", "SYS_PTRACE")
        ),
    )
    definition = registered_definition(fargate, executor.launch(spec))
    container = definition["containerDefinitions"][0]
    assert (definition["cpu"], definition["memory"]) == ("256", "2048")
    assert definition["networkMode"] == "awsvpc"
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["executionRoleArn"] == EXECUTION_ROLE
    assert container["memory"] == 2048  # the container's hard limit
    assert container["image"] == IMAGE
    assert container["stopTimeout"] == 30
    assert container["user"] == "1000:1000"
    assert container["readonlyRootFilesystem"] is True
    assert container["workingDirectory"] == "/work"
    capabilities = container["linuxParameters"]["capabilities"]
    assert capabilities["add"] == ["SYS_PTRACE"]
    assert "CHOWN" not in capabilities["drop"]
    assert {"NET_RAW", "MKNOD", "SETUID", "KILL"} <= set(capabilities["drop"])
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": LOG_GROUP,
            "awslogs-region": REGION,
            "awslogs-stream-prefix": "cm",
        },
    }


# -- what run_task is sent --------------------------------------------------------------------


def test_run_task_is_sent_the_network_overrides_and_our_tags(executor, fargate):
    sent = captured_run_task(executor)
    spec = spec_for(executor, memory_mb=3000, cpus=1, env={"GREETING": "hi", "API_TOKEN": "s3"})
    execution_id = executor.launch(spec)

    (request,) = sent
    assert request["launchType"] == "FARGATE"
    assert "capacityProviderStrategy" not in request
    assert request["cluster"] == executor.config["cluster"]
    assert request["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": executor.config["subnets"],
            "securityGroups": executor.config["security_groups"],
            "assignPublicIp": "DISABLED",
        }
    }
    assert request["overrides"] == {
        "containerOverrides": [
            {
                "name": "job",
                "environment": [
                    {"name": "GREETING", "value": "hi"},
                    {"name": "API_TOKEN", "value": "s3"},  # in clear: see the README
                ],
                "command": list(COMMAND),
            }
        ],
        "cpu": "1024",
        "memory": "3072",
    }
    assert request["startedBy"] == f"cm-{spec.job_id}-1"
    assert len(request["clientToken"]) <= 64
    assert {t["key"]: t["value"] for t in request["tags"]} == spec.labels
    task = fargate.task(execution_id)
    assert task.launch_type == "FARGATE"
    assert task.started_by == f"cm-{spec.job_id}-1"


def test_a_capacity_provider_public_ip_and_platform_version(fargate):
    executor = executor_on(
        fargate.host(
            capacity_provider="FARGATE_SPOT", assign_public_ip=True, platform_version="1.4.0"
        )
    )
    sent = captured_run_task(executor)
    execution_id = executor.launch(spec_for(executor))
    (request,) = sent
    assert "launchType" not in request
    assert request["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 1}
    ]
    assert request["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "ENABLED"
    assert request["platformVersion"] == "1.4.0"
    assert fargate.task(execution_id).capacity_provider_name == "FARGATE_SPOT"


def test_overrides_over_ecs_limit_are_refused_without_quoting_secrets(executor):
    secret = "x" * 9000
    spec = spec_for(executor, env={"API_TOKEN": secret}, secret_names=frozenset({"API_TOKEN"}))
    with pytest.raises(LaunchError) as raised:
        executor.launch(spec)
    assert "ECS accepts at most 8,192" in str(raised.value)
    assert secret not in str(raised.value)


# -- one task per attempt -----------------------------------------------------------------------


def test_a_launch_is_idempotent_per_attempt(executor, fargate):
    spec = spec_for(executor)
    execution_id = executor.launch(spec)
    assert executor.launch(spec) == execution_id
    # A worker that lost the answer and restarted: a new process finds the task by its tags.
    other_process = executor_on(executor.host)
    assert other_process.launch(spec) == execution_id
    assert other_process.find_execution(spec.job_id, 1) == execution_id
    assert other_process.find_execution(spec.job_id, 2) is None
    tasks = fargate.ecs.list_tasks(cluster=executor.config["cluster"])["taskArns"]
    assert tasks == [execution_id]
    retry = executor.launch(spec_for(executor, job_id=spec.job_id, attempt=2))
    assert retry != execution_id
    assert executor.find_execution(spec.job_id, 2) == retry


def test_list_executions_names_only_this_hosts_tasks(executor, fargate):
    neighbour = executor_on(
        HostSpec(name="neighbour", executor_type="fargate", config=executor.config)
    )
    mine = executor.launch(spec := spec_for(executor))
    theirs = neighbour.launch(spec_for(neighbour))
    assert executor.list_executions() == {mine: spec.job_id}
    assert theirs in neighbour.list_executions()
    # The same job and attempt on the neighbour is not ours to re-attach to.
    assert neighbour.find_execution(spec.job_id, 1) is None


# -- outcomes -----------------------------------------------------------------------------------


def test_a_failed_task_reports_its_exit_code_and_output(executor, fargate):
    execution_id = executor.launch(spec_for(executor))
    fargate.finish(execution_id, exit_code=2, stdout="working\n", stderr="failed: no input\n")
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code == 2
    assert outcome.stdout == "working\nfailed: no input\n"
    assert outcome.error == ""  # the runner says "container exited with code 2"


def test_an_out_of_memory_kill_is_reported(executor, fargate):
    execution_id = executor.launch(spec_for(executor, memory_mb=512))
    fargate.finish(
        execution_id,
        exit_code=137,
        container_reason="OutOfMemoryError: Container killed due to memory usage",
    )
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code == 137
    assert outcome.oom_killed is True
    assert "killed for running out of memory (limit 512 MiB)" in outcome.error
    assert "OutOfMemoryError" in outcome.error


def test_a_task_that_never_started_has_no_exit_code(executor, fargate):
    execution_id = executor.launch(spec_for(executor))
    fargate.finish(
        execution_id,
        exit_code=None,
        starts=False,
        stopped_reason="CannotPullContainerError: pull image manifest has been retried 5 times",
        stop_code="TaskFailedToStart",
    )
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert (outcome.stdout, outcome.stderr) == ("", "")
    assert "the container has no exit code" in outcome.error
    assert "CannotPullContainerError" in outcome.error
    assert "TaskFailedToStart" in outcome.error


def test_a_task_stopped_before_its_container_ran_invents_no_exit_code(executor, fargate):
    fargate.behave(executor.config["cluster"], seconds=float("inf"), starts=False)
    execution_id = executor.launch(spec_for(executor))
    executor.stop(execution_id, grace_seconds=1)
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert "it never ran" in outcome.error
    assert "stopped by container_manager, UserInitiated" in outcome.error


def test_a_running_task_cannot_be_harvested(executor, fargate):
    fargate.behave(executor.config["cluster"], seconds=float("inf"))
    execution_id = executor.launch(spec_for(executor))
    with pytest.raises(ExecutorError, match="still RUNNING"):
        executor.harvest(execution_id)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus": 1}, "Fargate has no GPUs"),
        ({"confinement": confinement(privileged=True)}, "cannot run a privileged container"),
        ({"confinement": confinement(host_network=True)}, "the host's network"),
        ({"confinement": confinement(host_pid=True)}, "the host's PID namespace"),
        (
            {"confinement": confinement(mounts=(Mount("/srv/shared", "/data", True),))},
            "cannot bind-mount host directories (asked for: /data)",
        ),
        (
            {"confinement": confinement(add_capabilities=("CHOWN", "NET_ADMIN"))},
            "cannot add the capability NET_ADMIN",
        ),
    ],
)
def test_what_fargate_cannot_give_is_refused_before_anything_starts(
    executor, fargate, changes, message
):
    sent = captured_run_task(executor)
    with pytest.raises(LaunchError) as raised:
        executor.launch(spec_for(executor, **changes))
    assert message in str(raised.value)
    assert sent == []


def test_a_private_registry_needs_a_secret_arn_and_the_password_is_never_quoted(fargate):
    auth = RegistryAuth(registry="registry.example.com", username="ci", password="hunter2-pw")
    executor = executor_on(fargate.host())
    with pytest.raises(LaunchError) as raised:
        executor.launch(spec_for(executor, registry_auth=auth))
    assert "'registry.example.com'" in str(raised.value)
    assert "repository_credentials" in str(raised.value)
    assert "hunter2-pw" not in str(raised.value)

    secret_arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:registry-AbCdEf"
    mapped = executor_on(fargate.host(repository_credentials={"registry.example.com": secret_arn}))
    execution_id = mapped.launch(spec_for(mapped, registry_auth=auth))
    container = registered_definition(fargate, execution_id)["containerDefinitions"][0]
    assert container["repositoryCredentials"] == {"credentialsParameter": secret_arn}
    assert "hunter2-pw" not in json.dumps(registered_definition(fargate, execution_id))


# -- AWS errors ---------------------------------------------------------------------------------


def test_access_denied_is_the_host_refusing_naming_the_iam_action(executor, fargate):
    with fargate.deny("run_task", "ecs:RunTask"), pytest.raises(HostRefused) as raised:
        executor.launch(spec_for(executor))
    assert "AWS refused ecs:RunTask (AccessDeniedException)" in str(raised.value)
    assert "need permission for ecs:RunTask" in str(raised.value)
    with fargate.deny("describe_clusters", "ecs:DescribeClusters"):
        health = executor.health_check()
    assert not health.healthy
    assert "ecs:DescribeClusters" in health.message


# Real ECS answers ThrottlingException though its API model does not list it; moto says so.
@pytest.mark.filterwarnings("ignore:Exception.ECSException. with code ThrottlingException")
def test_throttling_is_the_host_unavailable(executor, fargate):
    with (
        fargate.failing("describe_tasks", "ThrottlingException", "Rate exceeded"),
        pytest.raises(ExecutorUnavailable, match="busy or failing"),
    ):
        executor.status(f"arn:aws:ecs:{REGION}:123456789012:task/x/0123")


def test_invalid_parameters_are_a_launch_error(executor, fargate):
    with (
        fargate.failing("run_task", "InvalidParameterException", "Invalid setting for subnet"),
        pytest.raises(LaunchError, match="InvalidParameterException: Invalid setting for subnet"),
    ):
        executor.launch(spec_for(executor))


def test_a_missing_cluster_is_the_host_refusing(fargate):
    executor = executor_on(fargate.host(cluster="no-such-cluster"))
    with pytest.raises(HostRefused, match="the cluster does not exist"):
        executor.launch(spec_for(executor))


def test_an_api_that_does_not_answer_is_the_host_unavailable(fargate):
    closed = executor_on(fargate.host(endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ExecutorUnavailable, match="AWS did not answer") as raised:
        closed.launch(spec_for(closed))
    assert raised.value.maybe_started is False  # the request never left
    health = closed.health_check()
    assert not health.healthy
    assert "did not answer" in health.message


def test_a_server_that_goes_away_mid_run_is_the_host_unavailable(fargate):
    from moto.server import ThreadedMotoServer

    # Another server on the same in-process backends: the task is there, then it is not.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    executor = executor_on(fargate.host(endpoint_url=f"http://{host}:{port}"))
    fargate.behave(executor.config["cluster"], seconds=float("inf"))
    execution_id = executor.launch(spec_for(executor))
    assert executor.status(execution_id) == RUNNING
    server.stop()
    with pytest.raises(ExecutorUnavailable):
        executor.status(execution_id)
    assert not executor.health_check().healthy


def test_a_lost_answer_to_run_task_may_have_started_the_task():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    lost = translate(ReadTimeoutError(endpoint_url="x"), "h", "starting", maybe_started=True)
    refused = translate(
        EndpointConnectionError(endpoint_url="x"), "h", "starting", maybe_started=True
    )
    assert isinstance(lost, ExecutorUnavailable) and lost.maybe_started
    assert isinstance(refused, ExecutorUnavailable) and not refused.maybe_started


# -- configuration and boto3 --------------------------------------------------------------------


def test_validate_config_names_what_is_wrong(fargate):
    good = dict(fargate.host().config)
    FargateExecutor.validate_config(good)
    cases = [
        ({k: v for k, v in good.items() if k != "subnets"}, "needs 'subnets'"),
        ({**good, "subnets": "subnet-1"}, "'subnets' must be a non-empty list"),
        ({**good, "assign_public_ip": "yes"}, "'assign_public_ip' must be true or false"),
        ({**good, "launch_type": "EC2"}, "'launch_type' must be 'FARGATE'"),
        ({**good, "capacity_provider": "my-ec2"}, "'FARGATE' or 'FARGATE_SPOT'"),
        ({**good, "launch_type": "FARGATE", "capacity_provider": "FARGATE"}, "exclude each other"),
        ({**good, "stop_timeout": 300}, "from 2 to 120"),
        ({**good, "execution_role_arn": "cm-role"}, "must be an IAM role ARN"),
        ({**good, "repository_credentials": {"ghcr.io": "pw"}}, "Secrets Manager secret"),
        ({**good, "secrets_manager": True}, "'secrets_manager' is not supported"),
        ({**good, "colour": "blue"}, "unknown fargate option 'colour'"),
    ]
    for config, message in cases:
        with pytest.raises(ValidationError) as raised:
            FargateExecutor.validate_config(config)
        assert message in " ".join(raised.value.messages), config


def test_an_unusable_config_makes_the_host_unavailable(fargate):
    executor = executor_on(HostSpec(name="f", executor_type="fargate", config={}))
    with pytest.raises(ExecutorUnavailable, match="unusable executor_config"):
        executor.launch(spec_for(executor))
    assert "needs 'cluster'" in executor.health_check().message


def test_without_boto3_the_host_says_how_to_install_it(fargate, monkeypatch):
    for module in ("boto3", "botocore", "botocore.config", "botocore.exceptions"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    executor = executor_on(fargate.host())
    with pytest.raises(ExecutorUnavailable) as raised:
        executor.launch(spec_for(executor))
    assert INSTALL_HINT in str(raised.value)
    health = executor.health_check()
    assert not health.healthy
    assert INSTALL_HINT in health.message
    # Even before its settings are filled in, a host says what to install first.
    unset = executor_on(HostSpec(name="new", executor_type="fargate", config={}))
    assert INSTALL_HINT in unset.health_check().message


def test_the_package_imports_without_boto3():
    code = (
        "import sys\n"
        "for name in ('boto3', 'botocore'): sys.modules[name] = None\n"
        "import django; django.setup()\n"
        "import container_manager.executors.fargate as f\n"
        "assert 'boto3' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(f.FargateExecutor.type_name)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fargate"


def test_a_task_that_just_stopped_is_read_once_its_log_has_settled(executor, fargate):
    executor.log_settle_seconds = 0.5
    execution_id = executor.launch(spec_for(executor))
    fargate.finish(execution_id, exit_code=0, stdout="last words\n")
    stopped_at = fargate.ecs.describe_tasks(
        cluster=executor.config["cluster"], tasks=[execution_id]
    )["tasks"][0]["stoppedAt"]
    outcome = executor.harvest(execution_id)
    assert outcome.stdout == "last words\n"
    assert (datetime.now(UTC) - stopped_at).total_seconds() >= 0.5

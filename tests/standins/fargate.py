"""ECS on Fargate and CloudWatch Logs, played by moto in server mode on 127.0.0.1.

The executor talks to it with boto3 over HTTP, as it would to AWS. Moto runs no container,
so this stand-in plays the part of the containers, on moto's in-process backend (the
``ThreadedMotoServer`` runs in this process):

- Tasks do not advance on their own: moto's state manager is told to keep ``ecs::task``
  where it is (``set_transition``), and a task ends when its cluster's behaviour says
  (``behave``: after ``seconds``, with an exit code, output and reasons) or when a test
  ends it (``finish``). Ending it does what ECS does: the task and its container are
  STOPPED, the container gets its exit code and reason, the task ``stoppedReason`` and
  ``stopCode``, and the output goes to the task's ``awslogs`` stream
  (``<prefix>/<container>/<task id>``), one event per line, stdout then stderr (CloudWatch
  keeps one stream per container).
- Until then a container has no exit code (moto's default of 0 is removed), as on ECS.
- ``stop_task`` ends the task as ECS does: ``stopCode`` ``UserInitiated``, the reason given,
  and exit code 143 (SIGTERM) for a container that was running; one that never started
  (``behave(..., starts=False)``) keeps no exit code. An unknown task gets ECS's
  ``InvalidParameterException`` instead of moto's 500.
- ``deny(operation, action)`` makes an ECS operation answer ``AccessDeniedException`` with the
  message IAM gives, ``failing(operation, code, message)`` any other error (throttling...);
  a stopped server (or a closed port) is an API that does not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from container_manager.spec import HostSpec

ACCOUNT = "123456789012"
REGION = "us-east-1"
EXECUTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/cm-task-execution"
LOG_GROUP = "/container-manager/jobs"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Never: tasks stay where they are until this stand-in (or a test) moves them.
FROZEN = {"progression": "manual", "times": 10**9}


@dataclass
class Behaviour:
    """How the tasks of one cluster end."""

    seconds: float = 0.0
    exit_code: int | None = 0
    stdout: str = ""
    stderr: str = ""
    container_reason: str = ""
    stopped_reason: str = "Essential container in task exited"
    stop_code: str = "EssentialContainerExited"
    starts: bool = True


class FargateStandIn:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._lock = threading.RLock()
        self._behaviours: dict[str, Behaviour] = {}
        self._plans: dict[str, tuple[float, Behaviour]] = {}
        self._failing: dict[str, tuple[str, str]] = {}
        self.set_transition("ecs::task", FROZEN)
        self._hook_backend()
        self.ecs = self.client("ecs")
        self.ec2 = self.client("ec2")
        self.logs = self.client("logs")
        with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
            self.logs.create_log_group(logGroupName=LOG_GROUP)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Answer again, at the same address and with the same state (moto's backends live in
        this process), after ``stop``."""
        from moto.server import ThreadedMotoServer

        host, port = self.server.get_host_and_port()
        self.server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.server.start()

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    # -- moto's state manager -----------------------------------------------------------

    def set_transition(self, model: str, transition: dict[str, Any]) -> None:
        """How moto advances ``model`` (``POST /moto-api/state-manager/set-transition``)."""
        body = json.dumps({"model_name": model, "transition": transition}).encode()
        request = urllib.request.Request(
            f"{self.url}/moto-api/state-manager/set-transition", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    # -- the in-process backends --------------------------------------------------------

    @property
    def backend(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][REGION]

    @property
    def logs_backend(self) -> Any:
        from moto.logs.models import logs_backends

        return logs_backends[ACCOUNT][REGION]

    def task(self, task_arn: str) -> Any:
        for tasks in self.backend.tasks.values():
            if task_arn in tasks:
                return tasks[task_arn]
        raise KeyError(task_arn)

    def _hook_backend(self) -> None:
        from moto.ecs.exceptions import ECSException, InvalidParameterException

        backend = self.backend
        originals = {
            name: getattr(backend, name)
            for name in (
                "run_task",
                "describe_tasks",
                "list_tasks",
                "stop_task",
                "register_task_definition",
                "describe_task_definition",
                "describe_clusters",
                "tag_resource",
            )
        }

        def guarded(name):
            def call(*args, **kwargs):
                if name in self._failing:
                    code, message = self._failing[name]
                    raise ECSException(code, message)
                self._settle()
                return hooks.get(name, originals[name])(*args, **kwargs)

            return call

        def run_task(*args, **kwargs):
            tasks = originals["run_task"](*args, **kwargs)
            with self._lock:
                for task in tasks:
                    behaviour = self._behaviours.get(task.cluster_name, Behaviour())
                    for container in task.containers:
                        container.exitCode = None
                        container.last_status = "RUNNING" if behaviour.starts else "PENDING"
                    self._plans[task.task_arn] = (time.monotonic() + behaviour.seconds, behaviour)
            return tasks

        def stop_task(cluster_str, task_str, reason):
            with self._lock:
                try:
                    task = next(
                        t
                        for tasks in self.backend.tasks.values()
                        for arn, t in tasks.items()
                        if arn == task_str or arn.endswith("/" + task_str.rsplit("/", 1)[-1])
                    )
                except StopIteration:
                    raise InvalidParameterException("The referenced task was not found.") from None
                if task.last_status == "STOPPED":
                    return task  # ECS leaves a stopped task as it was
                plan = self._plans.pop(task.task_arn, None)
                result = originals["stop_task"](cluster_str, task_str, reason)
                if plan is not None:  # it was still running: ECS's SIGTERM ends it
                    started = plan[1].starts
                    self._stop(
                        task,
                        Behaviour(
                            exit_code=143 if started else None,
                            stopped_reason=reason or "Task stopped by user",
                            stop_code="UserInitiated",
                            starts=started,
                        ),
                        write_logs=False,
                    )
                return result

        hooks = {"run_task": run_task, "stop_task": stop_task}
        for name in originals:
            setattr(backend, name, guarded(name))

    def _settle(self) -> None:
        """End every task whose time has come (as if its container had exited then)."""
        now = time.monotonic()
        with self._lock:
            due = [arn for arn, (at, _) in self._plans.items() if at <= now]
            for arn in due:
                _, behaviour = self._plans.pop(arn)
                if behaviour.seconds == float("inf"):
                    continue
                self._stop(self.task(arn), behaviour)

    def _stop(self, task: Any, behaviour: Behaviour, write_logs: bool = True) -> None:
        task.last_status = "STOPPED"
        task.desired_status = "STOPPED"
        task.stopped_reason = behaviour.stopped_reason
        task.stopCode = behaviour.stop_code
        task.stoppedAt = datetime.now(UTC)
        for container in task.containers:
            container.last_status = "STOPPED"
            container.exitCode = behaviour.exit_code if behaviour.starts else None
            if behaviour.container_reason:
                container.reason = behaviour.container_reason
        if write_logs and behaviour.starts:
            self.put_output(task.task_arn, behaviour.stdout + behaviour.stderr)

    def put_output(self, task_arn: str, text: str) -> None:
        """Put ``text`` in the task's awslogs stream, one event per line, as the driver does."""
        task = self.task(task_arn)
        definition = self.backend.describe_task_definition(task.task_definition_arn)
        container = definition.container_definitions[0]
        options = container["logConfiguration"]["options"]
        stream = f"{options['awslogs-stream-prefix']}/{container['name']}/{task.id}"
        group = options["awslogs-group"]
        with contextlib.suppress(Exception):
            self.logs_backend.create_log_stream(group, stream)
        now = int(time.time() * 1000)
        events = [
            {"timestamp": now + i, "message": line} for i, line in enumerate(text.splitlines())
        ]
        if events:
            self.logs_backend.put_log_events(group, stream, events)

    # -- what tests use -----------------------------------------------------------------

    def network(self, cluster: str | None = None) -> dict[str, Any]:
        """A cluster, a VPC with a subnet and a security group: a host's executor_config."""
        cluster = cluster or f"cm-{uuid.uuid4().hex[:8]}"
        self.ecs.create_cluster(clusterName=cluster)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        # moto gives a task's network interface a DNS name only in a VPC with DNS host names.
        self.ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = self.ec2.create_security_group(
            GroupName=f"cm-{uuid.uuid4().hex[:8]}", Description="jobs", VpcId=vpc
        )["GroupId"]
        return {
            "cluster": cluster,
            "subnets": [subnet],
            "security_groups": [group],
            "region": REGION,
            "log_group": LOG_GROUP,
            "execution_role_arn": EXECUTION_ROLE,
            "endpoint_url": self.url,
            "poll_interval": 0.05,
        }

    def host(self, name: str | None = None, **config: Any) -> HostSpec:
        """A Fargate host on a cluster of its own (``config`` overrides its settings)."""
        settings = {**self.network(), **config}
        settings = {k: v for k, v in settings.items() if v is not None}
        return HostSpec(
            name=name or f"fargate-{uuid.uuid4().hex[:8]}",
            executor_type="fargate",
            config=settings,
        )

    def behave(self, cluster: str, **behaviour: Any) -> None:
        """How the tasks started on ``cluster`` from now on end (see ``Behaviour``)."""
        with self._lock:
            self._behaviours[cluster] = Behaviour(**behaviour)

    def finish(self, task_arn: str, **behaviour: Any) -> None:
        """End a task now, as ``behaviour`` says."""
        with self._lock:
            self._plans.pop(task_arn, None)
            self._stop(self.task(task_arn), Behaviour(**behaviour))

    @contextlib.contextmanager
    def failing(self, operation: str, code: str, message: str):
        """Within the block, the backend's ``operation`` answers the error ``code``."""
        self._failing[operation] = (code, message)
        try:
            yield
        finally:
            self._failing.pop(operation, None)

    def deny(self, operation: str, action: str):
        """Within the block, ``operation`` answers AccessDeniedException, as IAM words it."""
        return self.failing(
            operation,
            "AccessDeniedException",
            f"User: arn:aws:iam::{ACCOUNT}:user/cm-worker is not authorized to perform: "
            f"{action} on resource: * because no identity-based policy allows the action",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_STANDIN: FargateStandIn | None = None
_STANDIN_LOCK = threading.Lock()


def standin(request: pytest.FixtureRequest) -> FargateStandIn:
    """The session's stand-in, started on first use and stopped when the session ends; the
    test gets fake credentials and no AWS settings from the environment."""
    global _STANDIN
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with _STANDIN_LOCK:
        if _STANDIN is None:
            _STANDIN = FargateStandIn()
            request.config.add_cleanup(_stop_standin)
        return _STANDIN


def _stop_standin() -> None:
    global _STANDIN
    if _STANDIN is not None:
        _STANDIN.stop()
        _STANDIN = None


@pytest.fixture(name="fargate")
def fargate_fixture(request):
    """The Fargate stand-in (moto on 127.0.0.1), for this test."""
    return standin(request)

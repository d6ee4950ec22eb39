"""The Fargate executor: a job's attempt as one ECS task on Fargate, from run_task to its
stopped record.

The execution id is the task's ARN. Every task carries tags linking it to its job
(``container_manager.job_id``, ``.attempt``, ``.host``, ``.managed="true"``) and a
``startedBy`` of its own attempt, so what a worker started is found again with ``list_tasks``
and ``describe_tasks``; a launch looks for its attempt's task first and passes a
``clientToken`` derived from the host, job and attempt, which makes it idempotent per attempt.

ECS cannot block until a task ends: ``wait`` polls ``describe_tasks`` (every ``poll_interval``
seconds, 2 by default: DescribeTasks is rate-limited per account). ``stop`` is ``stop_task``:
ECS sends SIGTERM, then SIGKILL after the task definition's ``stopTimeout`` (the host's
``stop_timeout``, not the caller's grace). A stopped task cannot be deleted (ECS keeps its
record for a while, about an hour, then drops it): ``cleanup`` stops a task still running and
tags it ``container_manager.harvested=true``, after which it counts as gone (``status`` is
NOT_FOUND, ``find_execution`` and ``list_executions`` skip it). Task definitions are reused
(see ``definitions``) and never deregistered.

What a harvest reports: the container's exit code and ECS's reasons (the task's
``stoppedReason`` and ``stopCode``, the container's ``reason``, where an out-of-memory kill
shows as ``OutOfMemoryError``); the output from CloudWatch Logs, all of it as stdout (see
``logs``). Peak memory and CPU time are not reported (None): ECS does not give them per task
without Container Insights. A container that never ran (stopped before it started, image not
pulled) has no exit code; the harvest says so instead of inventing one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ... import logs
from ...exceptions import ExecutorError, ExecutorUnavailable, HostError, HostRefused, LaunchError
from ...spec import ATTEMPT_LABEL, HOST_LABEL, JOB_ID_LABEL, MANAGED_LABEL, LaunchSpec
from ..base import EXITED, NOT_FOUND, RUNNING, BaseExecutor, Health, Outcome
from .connection import Clients, aws_errors, connect, error_code, load, translate
from .definitions import CONTAINER_NAME, fargate_size, refusals, task_definition
from .logs import read_output, stream_name
from .options import DEFAULT_POLL_INTERVAL, validate_config

logger = logs.get_logger(__name__)

HARVESTED_TAG = "container_manager.harvested"
STOP_REASON = "stopped by container_manager"
# ECS's limit on a run_task's overrides, JSON formatting included.
MAX_OVERRIDES_CHARS = 8192
DESCRIBE_BATCH = 100
MASK = "••••••"


def tag_value(value: str) -> str:
    """``value`` as ECS accepts in a tag (letters, digits, spaces and ``+-=._:/@``)."""
    return re.sub(r"[^\w\s+\-=.:/@]", "_", value)[:256]


def started_by(job_id: str, attempt: int) -> str:
    """The task's ``startedBy``: readable when the job id allows, a hash otherwise."""
    readable = f"cm-{job_id}-{attempt}"
    if len(readable) <= 128 and re.fullmatch(r"[A-Za-z0-9_/-]+", readable):
        return readable
    return "cm-" + hashlib.sha256(f"{job_id}\0{attempt}".encode()).hexdigest()[:48]


def client_token(host: str, job_id: str, attempt: int) -> str:
    return hashlib.sha256(f"{host}\0{job_id}\0{attempt}".encode()).hexdigest()[:64]


def tags_of(task: dict[str, Any]) -> dict[str, str]:
    return {tag.get("key", ""): tag.get("value", "") for tag in task.get("tags") or []}


class FargateExecutor(BaseExecutor):
    type_name = "fargate"
    status_poll_interval = DEFAULT_POLL_INTERVAL
    # Seconds after a task's stop before its log is read (see _let_logs_settle).
    log_settle_seconds: float = 5.0

    @classmethod
    def missing_client(cls) -> str | None:
        try:
            load("boto3")
        except ExecutorUnavailable as error:
            return str(error)
        return None

    def __init__(self, host):
        super().__init__(host)
        # The base class's wait polls describe_tasks this often (it is rate-limited).
        self.status_poll_interval = self.poll_interval
        self.log_settle_seconds = float(
            self.config.get("log_settle_seconds", type(self).log_settle_seconds)
        )
        self._clients: Clients | None = None
        self._lock = threading.Lock()
        # Task definition family -> ARN, and ARN -> its log options (both never change).
        self._definitions: dict[str, str] = {}
        self._log_options: dict[str, dict[str, str]] = {}
        # Tasks cleaned up whose tag could not be set: gone for this process at least.
        self._forgotten: set[str] = set()

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def validate_config(cls, config):
        validate_config(config)

    @property
    def poll_interval(self) -> float:
        return float(self.config.get("poll_interval", self.status_poll_interval))

    @property
    def cluster(self) -> str:
        return str(self.config.get("cluster", ""))

    @property
    def clients(self) -> Clients:
        """The AWS clients, made on first use (nothing is contacted until a call)."""
        with self._lock:
            if self._clients is None:
                load("boto3")  # without it, that is the first thing to say
                self.check_usable_config("Fargate")
                self._clients = connect(self.host.name, self.config)
            return self._clients

    def _call(
        self,
        service: str,
        operation: str,
        doing: str,
        cls: type[ExecutorError] = ExecutorError,
        maybe_started: bool = False,
        **kwargs: Any,
    ) -> Any:
        client = getattr(self.clients, service)
        try:
            return getattr(client, operation)(**kwargs)
        except aws_errors() as error:
            raise translate(error, self.host.name, doing, service, cls, maybe_started) from error

    # -- launching --------------------------------------------------------------------

    def launch(self, spec):
        try:
            return self._launch(spec)
        except ExecutorError as error:
            raise self._scrubbed(error, spec) from error.__cause__

    def _launch(self, spec: LaunchSpec) -> str:
        if problems := refusals(spec):
            raise LaunchError("; ".join(problems))
        definition = task_definition(spec, self.config, self.clients.region)
        if existing := self.find_execution(spec.job_id, spec.attempt):
            logger.info("job %s: attempt %s has task %s", spec.job_id, spec.attempt, existing)
            return existing
        definition_arn = self._definition_arn(definition, spec.image)
        cpu, memory = fargate_size(spec.cpus, spec.memory_mb)
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            # Secret values too, in clear: ECS has no other way for a value that is not in
            # Secrets Manager (see the README).
            "environment": [{"name": k, "value": v} for k, v in spec.env.items()],
        }
        if spec.command:  # else the image's own command
            container["command"] = list(spec.command)
        overrides = {"containerOverrides": [container], "cpu": str(cpu), "memory": str(memory)}
        size = len(json.dumps(overrides["containerOverrides"], separators=(",", ":")))
        if size > MAX_OVERRIDES_CHARS:
            raise LaunchError(
                f"the job's command and environment take {size:,} characters in the task's "
                f"overrides; ECS accepts at most {MAX_OVERRIDES_CHARS:,}"
            )
        request: dict[str, Any] = {
            "cluster": self.cluster,
            "taskDefinition": definition_arn,
            "count": 1,
            "startedBy": started_by(spec.job_id, spec.attempt),
            "clientToken": client_token(self.host.name, spec.job_id, spec.attempt),
            "tags": [{"key": k, "value": tag_value(v)} for k, v in spec.labels.items()],
            "overrides": overrides,
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(self.config["subnets"]),
                    "securityGroups": list(self.config["security_groups"]),
                    "assignPublicIp": (
                        "ENABLED" if self.config.get("assign_public_ip") else "DISABLED"
                    ),
                }
            },
        }
        if provider := self.config.get("capacity_provider"):
            request["capacityProviderStrategy"] = [{"capacityProvider": provider, "weight": 1}]
        else:
            request["launchType"] = self.config.get("launch_type", "FARGATE")
        if self.config.get("platform_version"):
            request["platformVersion"] = self.config["platform_version"]
        try:
            response = self._call(
                "ecs",
                "run_task",
                f"starting a task of '{spec.image}'",
                LaunchError,
                maybe_started=True,
                **request,
            )
        except ExecutorError:
            # Executors live as long as the worker: a definition deregistered since it was
            # looked up must not fail every later launch of the family.
            with self._lock:
                self._definitions.pop(definition["family"], None)
            raise
        tasks = response.get("tasks") or []
        if not tasks:
            reasons = "; ".join(
                f"{failure.get('reason', '?')}"
                + (f" ({failure['detail']})" if failure.get("detail") else "")
                for failure in response.get("failures") or []
            )
            raise HostRefused(
                f"ECS started no task of '{spec.image}' on Fargate host '{self.host.name}': "
                f"{reasons or 'no reason given'}"
            )
        return str(tasks[0]["taskArn"])

    def _scrubbed(self, error: ExecutorError, spec: LaunchSpec) -> ExecutorError:
        message = str(error)
        secrets = [value for value in spec.secret_values if value in message]
        if not secrets:
            return error
        for value in secrets:
            message = message.replace(value, MASK)
        if isinstance(error, HostError):
            return type(error)(message, maybe_started=error.maybe_started)
        return type(error)(message)

    def _definition_arn(self, definition: dict[str, Any], image: str) -> str:
        """The ARN of the task definition ``definition`` describes: the one registered
        already (this process's cache, then ECS), else a new one."""
        family = definition["family"]
        with self._lock:
            if family in self._definitions:
                return self._definitions[family]
        try:
            found = self.clients.ecs.describe_task_definition(taskDefinition=family)
            arn = found["taskDefinition"]["taskDefinitionArn"]
            if found["taskDefinition"].get("status", "ACTIVE") != "ACTIVE":
                arn = None
        except aws_errors() as error:
            if error_code(error) != "ClientException":  # ClientException: no such family
                raise translate(
                    error, self.host.name, f"looking up task definition {family}"
                ) from error
            arn = None
        if arn is None:
            registered = self._call(
                "ecs",
                "register_task_definition",
                f"registering a task definition for '{image}'",
                LaunchError,
                **definition,
            )
            arn = registered["taskDefinition"]["taskDefinitionArn"]
        with self._lock:
            self._definitions[family] = arn
        return str(arn)

    # -- finding tasks ------------------------------------------------------------------

    def _task_arns(self, doing: str, **filters: Any) -> list[str]:
        """ARNs of the cluster's tasks matching ``filters``, running and stopped (ECS lists
        only one desired status at a time)."""
        arns: list[str] = []
        for desired in ("RUNNING", "STOPPED"):
            token = None
            while True:
                kwargs = {"cluster": self.cluster, "desiredStatus": desired, **filters}
                if token:
                    kwargs["nextToken"] = token
                page = self._call("ecs", "list_tasks", doing, **kwargs)
                arns.extend(a for a in page.get("taskArns", []) if a not in arns)
                token = page.get("nextToken")
                if not token:
                    break
        return arns

    def _describe(self, arns: list[str], doing: str) -> dict[str, dict[str, Any]]:
        """{task ARN: task, with its tags} for those of ``arns`` ECS still knows."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(arns), DESCRIBE_BATCH):
            batch = arns[start : start + DESCRIBE_BATCH]
            response = self._call(
                "ecs", "describe_tasks", doing, cluster=self.cluster, tasks=batch, include=["TAGS"]
            )
            for task in response.get("tasks") or []:
                found[task["taskArn"]] = task
        return found

    def _task(self, execution_id: str, doing: str) -> dict[str, Any] | None:
        """The task, or None if ECS no longer knows it or it was cleaned up."""
        if execution_id in self._forgotten:
            return None
        task = self._describe([execution_id], doing).get(execution_id)
        if task is None or tags_of(task).get(HARVESTED_TAG) == "true":
            return None
        return task

    def _ours(self, task: dict[str, Any]) -> bool:
        tags = tags_of(task)
        return (
            tags.get(MANAGED_LABEL) == "true"
            and tags.get(HOST_LABEL) == tag_value(self.host.name)
            and tags.get(HARVESTED_TAG) != "true"
            and task["taskArn"] not in self._forgotten
        )

    def find_execution(self, job_id, attempt):
        doing = f"looking up the task of job {job_id}"
        arns = self._task_arns(doing, startedBy=started_by(job_id, attempt))
        matches = [
            task
            for task in self._describe(arns, doing).values()
            if self._ours(task)
            and tags_of(task).get(JOB_ID_LABEL) == tag_value(job_id)
            and tags_of(task).get(ATTEMPT_LABEL) == str(attempt)
        ]
        matches.sort(key=lambda task: task.get("lastStatus") == "STOPPED")  # running first
        return matches[0]["taskArn"] if matches else None

    def list_executions(self):
        doing = "listing tasks"
        tasks = self._describe(self._task_arns(doing), doing)
        return {
            arn: tags_of(task).get(JOB_ID_LABEL, "")
            for arn, task in tasks.items()
            if self._ours(task)
        }

    # -- following a task ---------------------------------------------------------------

    def status(self, execution_id):
        task = self._task(execution_id, f"describing task {execution_id}")
        if task is None:
            return NOT_FOUND
        return EXITED if task.get("lastStatus") == "STOPPED" else RUNNING

    def _log_source(self, task: dict[str, Any]) -> tuple[str, str] | None:
        """(log group, stream) of the task's container, from its task definition."""
        arn = task["taskDefinitionArn"]
        with self._lock:
            options = self._log_options.get(arn)
        if options is None:
            found = self._call(
                "ecs", "describe_task_definition", f"describing {arn}", taskDefinition=arn
            )
            containers = found["taskDefinition"].get("containerDefinitions") or []
            definition: dict[str, Any] = next(
                (c for c in containers if c.get("name") == CONTAINER_NAME), {}
            )
            log_config = definition.get("logConfiguration") or {}
            options = dict(log_config.get("options") or {})
            if log_config.get("logDriver") != "awslogs":
                options = {}
            with self._lock:
                self._log_options[arn] = options
        if "awslogs-group" not in options or "awslogs-stream-prefix" not in options:
            return None
        return options["awslogs-group"], stream_name(options, CONTAINER_NAME, task["taskArn"])

    def harvest(self, execution_id, deadline=None):
        task = self._task(execution_id, f"describing task {execution_id}")
        if task is None:
            raise ExecutorError(
                f"task {execution_id} is no longer known on Fargate host '{self.host.name}' "
                "(ECS keeps a stopped task for about an hour)"
            )
        if task.get("lastStatus") != "STOPPED":
            raise ExecutorError(
                f"task {execution_id} on Fargate host '{self.host.name}' is still "
                f"{task.get('lastStatus', 'starting')}; it can only be harvested once stopped"
            )
        containers = task.get("containers") or []
        container: dict[str, Any] = next(
            (c for c in containers if c.get("name") == CONTAINER_NAME),
            containers[0] if containers else {},
        )
        exit_code = container.get("exitCode")
        reason = container.get("reason") or ""
        stopped_reason = task.get("stoppedReason") or ""
        stop_code = task.get("stopCode") or ""
        oom_killed = "OutOfMemory" in reason
        errors = []
        if oom_killed:
            limit = container.get("memory") or task.get("memory")
            limit_text = f"limit {limit} MiB" if limit else "the task's memory"
            errors.append(
                f"container was killed for running out of memory ({limit_text}): {reason}"
            )
        elif reason:
            errors.append(f"ECS reported for the container: {reason}")
        if exit_code is None:
            errors.append(
                "the container has no exit code: it never ran, or ECS did not record how it "
                f"ended (task stopped: {stopped_reason or 'no reason given'}"
                + (f", {stop_code})" if stop_code else ")")
            )
        elif stop_code and stop_code != "EssentialContainerExited":
            errors.append(f"ECS stopped the task: {stopped_reason or stop_code} ({stop_code})")
        output = None
        source = self._log_source(task)
        if source is not None:
            group, stream = source
            self._let_logs_settle(task, deadline)
            try:
                output = read_output(self.clients.logs, group, stream, deadline)
            except aws_errors() as error:
                raise translate(
                    error, self.host.name, f"reading the log of task {execution_id}", "logs"
                ) from error
        return Outcome(
            exit_code=exit_code,
            stdout=output.text() if output is not None else "",
            stderr="",  # CloudWatch Logs does not keep stderr apart: it is in stdout
            oom_killed=oom_killed,
            error="; ".join(errors),
            peak_memory_bytes=None,  # not reported by ECS per task
            cpu_seconds=None,
        )

    def _let_logs_settle(self, task: dict[str, Any], deadline: float | None) -> None:
        """CloudWatch makes events readable a moment after the driver sends them: a task that
        stopped just now is read ``log_settle_seconds`` after its ``stoppedAt`` (within the
        deadline), so the last lines, which usually say why it ended, are there."""
        stopped_at = task.get("stoppedAt")
        if not isinstance(stopped_at, datetime):
            return
        if stopped_at.tzinfo is None:
            stopped_at = stopped_at.replace(tzinfo=UTC)
        left = self.log_settle_seconds - (datetime.now(UTC) - stopped_at).total_seconds()
        if deadline is not None:
            left = min(left, deadline - time.monotonic())
        if left > 0:
            time.sleep(left)

    def stream_logs(self, execution_id, follow=False):
        if follow:
            self.wait(execution_id, float("inf"))
        task = self._task(execution_id, f"describing task {execution_id}")
        if task is None:
            raise ExecutorError(
                f"task {execution_id} is no longer known on Fargate host '{self.host.name}'"
            )
        source = self._log_source(task)
        if source is None:
            return iter(())
        return self._stream(*source, execution_id)

    def _stream(self, group: str, stream: str, execution_id: str) -> Iterator[bytes]:
        output = read_output(self.clients.logs, group, stream)
        yield output.text().encode()

    # -- ending -----------------------------------------------------------------------

    def stop(self, execution_id, grace_seconds):
        # ECS sends SIGTERM, then SIGKILL after the task definition's stopTimeout: the grace
        # is the host's stop_timeout, fixed when the task definition was registered.
        try:
            self._call(
                "ecs",
                "stop_task",
                f"stopping task {execution_id}",
                cluster=self.cluster,
                task=execution_id,
                reason=STOP_REASON,
            )
        except HostError:
            raise
        except ExecutorError as error:
            if "not found" not in str(error).lower():
                raise

    def cleanup(self, execution_id):
        task = self._task(execution_id, f"describing task {execution_id}")
        if task is None:
            return
        if task.get("lastStatus") != "STOPPED" and task.get("desiredStatus") != "STOPPED":
            self.stop(execution_id, 0)  # nothing of a finished attempt stays running
        try:
            self._call(
                "ecs",
                "tag_resource",
                f"marking task {execution_id} as harvested",
                resourceArn=execution_id,
                tags=[{"key": HARVESTED_TAG, "value": "true"}],
            )
        except HostError:
            raise
        except ExecutorError as error:
            # ECS would not tag it: this process forgets it all the same.
            logger.debug("task %s: %s", execution_id, error)
        with self._lock:
            self._forgotten.add(execution_id)

    # -- health -----------------------------------------------------------------------

    def health_check(self):
        try:
            response = self._call(
                "ecs", "describe_clusters", "checking health", clusters=[self.cluster]
            )
        except ExecutorError as error:
            return Health(False, str(error))
        clusters = response.get("clusters") or []
        if not clusters:
            return Health(
                False,
                f"ECS cluster '{self.cluster}' does not exist in {self.clients.region} "
                f"(Fargate host '{self.host.name}')",
            )
        cluster = clusters[0]
        if cluster.get("status") != "ACTIVE":
            return Health(
                False,
                f"ECS cluster '{self.cluster}' is {cluster.get('status', 'not active')}, "
                "not ACTIVE",
            )
        running = cluster.get("runningTasksCount", 0)
        pending = cluster.get("pendingTasksCount", 0)
        return Health(
            True,
            f"ECS cluster '{self.cluster}' in {self.clients.region} is ACTIVE: "
            f"{running} task{'' if running == 1 else 's'} running, {pending} pending",
        )

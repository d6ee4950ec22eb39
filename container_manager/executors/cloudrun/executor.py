"""The Cloud Run Jobs executor: a job's attempt as one execution of a Cloud Run Job.

The execution id is the execution's full resource name
(``projects/P/locations/R/jobs/J/executions/E``). Launching is idempotent per attempt: before
running the Job, its executions are searched for one whose override env names this attempt
(``CONTAINER_MANAGER_JOB_ID`` / ``CONTAINER_MANAGER_ATTEMPT``), since Cloud Run has no
per-execution labels; ``find_execution`` and ``list_executions`` search the same way across
this host's Jobs (those labelled with its name).

What Cloud Run reports: whether an execution runs or ended (succeeded, failed or cancelled
task counts and completion time), the task's exit code (``Task.last_attempt_result``), and
output through Cloud Logging. It reports no peak memory or CPU time (``None``), no exit code
for a cancelled task, and has no stop grace of ours: cancelling sends SIGTERM, then SIGKILL
after Cloud Run's own grace period (10 seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from ... import logs as job_logs
from ...exceptions import ExecutorError, ExecutorUnavailable, HostError, LaunchError
from ..base import EXITED, NOT_FOUND, RUNNING, BaseExecutor, Health, Outcome
from . import logs
from .config import DEFAULT_LOG_SETTLE_SECONDS, DEFAULT_POLL_SECONDS, DEFAULT_TIMEOUT
from .config import validate_config as check_config
from .connection import (
    Clients,
    api_exceptions,
    connect,
    is_not_found,
    logging_client,
    run_v2,
    translate,
    transport_errors,
)
from .definitions import (
    HOST_LABEL,
    MANAGED_LABEL,
    attempt_of,
    check_env,
    covers,
    host_label,
    job_id,
    job_template,
    overrides,
    refusal,
    summary,
)

logger = job_logs.get_logger(__name__)

RUN_PERMISSION = "run.jobs.run (run.jobs.runWithOverrides with overrides)"


class CloudRunExecutor(BaseExecutor):
    type_name = "cloudrun"

    def __init__(self, host):
        super().__init__(host)
        # The base class's wait polls status this often (each poll is an API call).
        self.status_poll_interval = self.poll_seconds
        self._clients: Clients | None = None
        self._logging: Any = None
        self._lock = threading.Lock()

    @classmethod
    def missing_client(cls) -> str | None:
        try:
            run_v2()
        except ExecutorUnavailable as error:
            return str(error)
        return None

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def validate_config(cls, config):
        check_config(config)

    @property
    def api_timeout(self) -> float:
        return float(self.config.get("timeout", DEFAULT_TIMEOUT))

    @property
    def poll_seconds(self) -> float:
        return float(self.config.get("poll_seconds", DEFAULT_POLL_SECONDS))

    @property
    def parent(self) -> str:
        return f"projects/{self.config.get('project')}/locations/{self.config.get('region')}"

    @property
    def clients(self) -> Clients:
        with self._lock:
            if self._clients is None:
                run_v2()  # a missing client library is named first, whatever the config
                self.check_usable_config("Cloud Run")
                self._clients = connect(self.host, self.config)
            return self._clients

    def _logging_client(self) -> Any:
        with self._lock:
            if self._logging is None:
                self._logging = logging_client(self.host, self.config)
            return self._logging

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        doing: str,
        permission: str = "",
        launching: bool = False,
        maybe_started: bool = False,
    ) -> Any:
        """One API call, its errors translated (no automatic retries: the queue retries)."""
        try:
            return method(request=request, retry=None, timeout=self.api_timeout)
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            raise translate(
                self.host, error, doing, permission, launching, maybe_started
            ) from error

    def _each(self, pager: Any, doing: str, permission: str) -> Iterator[Any]:
        """Every item of a list call's pager (later pages are fetched while iterating)."""
        try:
            yield from pager
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            raise translate(self.host, error, doing, permission) from error

    # -- launching --------------------------------------------------------------------

    def launch(self, spec):
        if reason := refusal(spec, self.config):
            raise LaunchError(reason)
        check_env(spec)
        clients = self.clients
        run = clients.run_v2
        job = job_template(run, spec, self.config, self.host.name)
        job_name = f"{self.parent}/jobs/{job_id(job, self.host.name)}"
        self._ensure_job(job_name, job)
        if existing := self._find_in(job_name, spec.job_id, spec.attempt):
            logger.info("job %s: attempt %s runs already", spec.job_id, spec.attempt)
            return existing
        request = run.RunJobRequest(name=job_name, overrides=overrides(run, spec))
        operation = self._call(
            clients.jobs.run_job,
            request,
            f"running job {spec.job_id} (image '{spec.image}')",
            RUN_PERMISSION,
            launching=True,
            maybe_started=True,
        )
        execution = operation.metadata
        if execution is not None and execution.name:
            return execution.name
        # Started, but the answer does not say as what: look for it.
        if found := self._find_in(job_name, spec.job_id, spec.attempt):
            return found
        raise ExecutorUnavailable(
            f"Cloud Run host '{self.host.name}' ran {job_name} for job {spec.job_id} but did "
            "not say which execution it started",
            maybe_started=True,
        )

    def _ensure_job(self, name: str, job: Any) -> None:
        """Create the Job when missing, put its template back when it differs, else reuse."""
        clients = self.clients
        short = name.rsplit("/", 1)[-1]
        try:
            existing = clients.jobs.get_job(name=name, retry=None, timeout=self.api_timeout)
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            if not is_not_found(error):
                raise translate(
                    self.host, error, f"looking up Cloud Run job {short}", "run.jobs.get"
                ) from error
            existing = None
        if existing is None:
            request = clients.run_v2.CreateJobRequest(parent=self.parent, job=job, job_id=short)
            try:
                operation = clients.jobs.create_job(
                    request=request, retry=None, timeout=self.api_timeout
                )
            except api_exceptions().AlreadyExists:
                return  # another worker created it a moment ago, from the same template
            except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
                raise translate(
                    self.host, error, f"creating Cloud Run job {short}", "run.jobs.create", True
                ) from error
            self._finish(operation, f"creating Cloud Run job {short}", "run.jobs.create")
            logger.info("created Cloud Run job %s", name)
            return
        if covers(summary(existing), summary(job)):
            return
        job.name = name
        operation = self._call(
            clients.jobs.update_job,
            clients.run_v2.UpdateJobRequest(job=job),
            f"updating Cloud Run job {short}",
            "run.jobs.update",
            launching=True,
        )
        self._finish(operation, f"updating Cloud Run job {short}", "run.jobs.update")
        logger.info("updated Cloud Run job %s: its template had changed", name)

    def _finish(self, operation: Any, doing: str, permission: str) -> None:
        try:
            operation.result(timeout=self.api_timeout, retry=None)
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            raise translate(self.host, error, doing, permission, launching=True) from error
        except TimeoutError as error:  # concurrent.futures.TimeoutError is TimeoutError
            raise ExecutorUnavailable(
                f"Cloud Run host '{self.host.name}': {doing} did not finish within "
                f"{self.api_timeout:g} s"
            ) from error

    # -- finding executions -----------------------------------------------------------

    def _executions(self, parent: str) -> Iterator[Any]:
        clients = self.clients
        pager = self._call(
            clients.executions.list_executions,
            clients.run_v2.ListExecutionsRequest(parent=parent),
            "listing Cloud Run executions",
            "run.executions.list",
        )
        yield from self._each(pager, "listing Cloud Run executions", "run.executions.list")

    def _find_in(self, job_name: str, job_id_: str, attempt: int) -> str | None:
        for execution in self._executions(job_name):
            if attempt_of(execution) == (job_id_, attempt):
                return str(execution.name)
        return None

    def _our_jobs(self) -> set[str]:
        clients = self.clients
        pager = self._call(
            clients.jobs.list_jobs,
            clients.run_v2.ListJobsRequest(parent=self.parent),
            "listing Cloud Run jobs",
            "run.jobs.list",
        )
        label = host_label(self.host.name)
        return {
            job.name.rsplit("/", 1)[-1]
            for job in self._each(pager, "listing Cloud Run jobs", "run.jobs.list")
            if job.labels.get(MANAGED_LABEL) == "true" and job.labels.get(HOST_LABEL) == label
        }

    def _our_executions(self) -> Iterator[tuple[Any, tuple[str, int]]]:
        jobs = self._our_jobs()
        if not jobs:
            return
        for execution in self._executions(f"{self.parent}/jobs/-"):
            linked = attempt_of(execution)
            if linked and _job_of(execution.name) in jobs:
                yield execution, linked

    def find_execution(self, job_id, attempt):
        for execution, linked in self._our_executions():
            if linked == (job_id, attempt):
                return str(execution.name)
        return None

    def list_executions(self):
        return {str(execution.name): linked[0] for execution, linked in self._our_executions()}

    # -- following an execution -------------------------------------------------------

    def _get(self, execution_id: str) -> Any:
        """The Execution, or None if it does not exist."""
        clients = self.clients
        try:
            return clients.executions.get_execution(
                name=execution_id, retry=None, timeout=self.api_timeout
            )
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            if is_not_found(error):
                return None
            raise translate(
                self.host,
                error,
                f"looking up execution {_short(execution_id)}",
                "run.executions.get",
            ) from error

    def status(self, execution_id):
        execution = self._get(execution_id)
        if execution is None:
            return NOT_FOUND
        return EXITED if _ended(execution) else RUNNING

    def harvest(self, execution_id, deadline=None):
        execution = self._get(execution_id)
        if execution is None:
            raise ExecutorError(
                f"execution {execution_id} no longer exists on Cloud Run host {self.host.name}"
            )
        if not _ended(execution):
            raise ExecutorError(
                f"execution {_short(execution_id)} on Cloud Run host {self.host.name} is still "
                "running; it can only be harvested once it has ended"
            )
        exit_code, oom_killed, errors = self._result(execution)
        stdout, stderr = self._output(execution, deadline, errors)
        return Outcome(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            oom_killed=oom_killed,
            error="; ".join(errors),
            # Cloud Run reports neither peak memory nor CPU time per execution.
            peak_memory_bytes=None,
            cpu_seconds=None,
        )

    def _result(self, execution: Any) -> tuple[int | None, bool, list[str]]:
        """(exit code, killed for memory, errors) from the execution's task."""
        clients = self.clients
        pager = self._call(
            clients.tasks.list_tasks,
            clients.run_v2.ListTasksRequest(parent=execution.name),
            f"reading the task of {_short(execution.name)}",
            "run.tasks.list",
        )
        tasks = list(self._each(pager, "listing Cloud Run tasks", "run.tasks.list"))
        task = min(tasks, key=lambda t: t.index) if tasks else None
        errors: list[str] = []
        result = None
        if task is not None and "last_attempt_result" in task:
            result = task.last_attempt_result
        exit_code: int | None = None
        message = ""
        if result is not None:
            exit_code = int(result.exit_code)
            message = result.status.message if result.status.code else ""
            if result.term_signal and exit_code == 0:
                exit_code = 128 + int(result.term_signal)
        if execution.cancelled_count:
            if result is None:
                errors.append(
                    "the execution was cancelled: Cloud Run reports no exit code for a "
                    "cancelled task"
                )
            else:
                errors.append("the execution was cancelled")
        elif result is None:
            if execution.succeeded_count:
                exit_code = 0
            else:
                errors.append(
                    "Cloud Run reported no exit code for the task"
                    + (f": {_condition(execution)}" if _condition(execution) else "")
                )
        if execution.failed_count and exit_code == 0:
            exit_code = None  # failed, yet "exit code 0": killed (timeout...), not exited
            errors.append("the task failed without an exit code of its own")
        if message:
            errors.append(f"Cloud Run reported: {message}")
        oom_killed = "memory limit" in message.lower()
        return exit_code, oom_killed, errors

    def _output(self, execution: Any, deadline: float | None, errors: list[str]):
        settle = float(self.config.get("log_settle_seconds", DEFAULT_LOG_SETTLE_SECONDS))
        ended = execution.completion_time if "completion_time" in execution else None
        if ended is not None and settle > 0:
            wait = settle - (datetime.now(UTC) - ended).total_seconds()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            if wait > 0:
                time.sleep(wait)
        try:
            stdout, stderr = logs.read_output(
                self._logging_client(), self.config["project"], self._query(execution), deadline
            )
        except ExecutorUnavailable:
            raise
        except ExecutorError as error:
            errors.append(f"output not read: {error}")
            return "", ""
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            translated = translate(
                self.host, error, "reading output from Cloud Logging", "logging.logEntries.list"
            )
            if isinstance(translated, ExecutorUnavailable):
                raise translated from error
            errors.append(f"output not read: {translated}")
            return "", ""
        return stdout.text(), stderr.text()

    def _query(self, execution: Any) -> str:
        created = execution.create_time if "create_time" in execution else None
        return logs.log_filter(
            self.config["project"], _job_of(execution.name), _short(execution.name), created
        )

    def stream_logs(self, execution_id, follow=False):
        execution = self._get(execution_id)
        if execution is None:
            raise ExecutorError(
                f"execution {execution_id} no longer exists on Cloud Run host {self.host.name}"
            )
        query = self._query(execution)
        client = self._logging_client()
        project = self.config["project"]
        sent = 0
        while True:
            final = not follow or _ended(execution)
            if final and follow:
                settle = float(self.config.get("log_settle_seconds", DEFAULT_LOG_SETTLE_SECONDS))
                time.sleep(settle)
            try:
                lines = [line for _, line in logs.entries(client, project, query)]
            except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
                raise translate(
                    self.host,
                    error,
                    "reading output from Cloud Logging",
                    "logging.logEntries.list",
                ) from error
            yield from lines[sent:]
            sent = len(lines)
            if final:
                return
            time.sleep(self.poll_seconds)
            execution = self._get(execution_id)
            if execution is None:
                return

    # -- ending -----------------------------------------------------------------------

    def stop(self, execution_id, grace_seconds):
        # Cloud Run has no grace of ours: SIGTERM, then SIGKILL after its own grace period.
        clients = self.clients
        try:
            clients.executions.cancel_execution(
                name=execution_id, retry=None, timeout=self.api_timeout
            )
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            if is_not_found(error):
                return
            translated = translate(
                self.host,
                error,
                f"cancelling execution {_short(execution_id)}",
                "run.executions.cancel",
            )
            if isinstance(translated, HostError):
                raise translated from error
            # Refused (an execution that has ended cannot be cancelled): fine if it has.
            execution = self._get(execution_id)
            if execution is not None and not _ended(execution):
                raise translated from error

    def cleanup(self, execution_id):
        execution = self._get(execution_id)
        if execution is None:
            return
        if not _ended(execution):
            self.stop(execution_id, 0)
        clients = self.clients
        try:
            clients.executions.delete_execution(
                name=execution_id, retry=None, timeout=self.api_timeout
            )
        except (api_exceptions().GoogleAPICallError, *transport_errors()) as error:
            if is_not_found(error):
                return
            raise translate(
                self.host,
                error,
                f"deleting execution {_short(execution_id)}",
                "run.executions.delete",
            ) from error

    # -- health -----------------------------------------------------------------------

    def health_check(self):
        try:
            clients = self.clients
            self._call(
                clients.jobs.list_jobs,
                clients.run_v2.ListJobsRequest(parent=self.parent, page_size=1),
                "listing Cloud Run jobs",
                "run.jobs.list",
            )
        except ExecutorError as error:
            return Health(False, str(error))
        return Health(True, f"Cloud Run Jobs API answers for {self.parent}")


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _job_of(execution_name: str) -> str:
    """The job's short name in ``projects/P/locations/R/jobs/J/executions/E``."""
    parts = execution_name.split("/")
    return parts[5] if len(parts) > 5 else ""


def _ended(execution: Any) -> bool:
    if "completion_time" in execution:
        return True
    done = execution.succeeded_count + execution.failed_count + execution.cancelled_count
    return done >= max(execution.task_count, 1)


def _condition(execution: Any) -> str:
    for condition in execution.conditions:
        if condition.type_ == "Completed" and condition.message:
            return str(condition.message)
    return ""

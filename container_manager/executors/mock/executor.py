"""A deterministic executor for tests and demos: nothing runs, but everything is recorded.

Configured through the host's ``executor_config``:
``duration_seconds`` (how long an execution "runs", default 0), ``exit_code`` (default 0),
``stdout`` / ``stderr`` (default: stdout echoes the command), ``launch_error`` (a message:
every launch fails with it).

Executions live in this process's memory, so a mock execution cannot be re-attached to
from another worker process; use Docker for that. ``MockExecutor.unreachable`` holds the names
of hosts that are "down": every call to them raises ``ExecutorUnavailable`` until the name is
removed, and their executions go on meanwhile (tests of outages in one process).
"""

import shlex
import threading
import time
import uuid

from django.core.exceptions import ValidationError

from ...output import capped_text
from ..base import (
    EXITED,
    NOT_FOUND,
    RUNNING,
    BaseExecutor,
    ExecutorError,
    ExecutorUnavailable,
    Health,
    LaunchError,
    Outcome,
)

CONFIG_TYPES = {
    "duration_seconds": (int, float),
    "exit_code": (int,),
    "stdout": (str,),
    "stderr": (str,),
    "launch_error": (str,),
}

# SIGTERM's conventional exit status, as a stopped container would report.
STOPPED_EXIT_CODE = 143


class MockExecutor(BaseExecutor):
    type_name = "mock"
    status_poll_interval = 0.01

    _executions: dict[str, dict] = {}
    _by_attempt: dict[tuple[str, int], str] = {}
    _lock = threading.Lock()
    unreachable: set[str] = set()

    def _check_reachable(self):
        if self.host.name in self.unreachable:
            raise ExecutorUnavailable(f"mock host '{self.host.name}' is unreachable")

    @classmethod
    def validate_config(cls, config):
        for key, value in config.items():
            if key not in CONFIG_TYPES:
                known = ", ".join(sorted(CONFIG_TYPES))
                raise ValidationError(f"unknown mock option {key!r} (known: {known})")
            if isinstance(value, bool) or not isinstance(value, CONFIG_TYPES[key]):
                raise ValidationError(f"mock option {key!r} has the wrong type")
        if config.get("duration_seconds", 0) < 0:
            raise ValidationError("mock option 'duration_seconds' cannot be negative")

    def launch(self, spec):
        self._check_reachable()
        self.validate_config(self.config)
        if self.config.get("launch_error"):
            raise LaunchError(self.config["launch_error"])
        if existing := self.find_execution(spec.job_id, spec.attempt):
            return existing
        execution_id = f"mock-{uuid.uuid4()}"
        default_stdout = f"mock: {shlex.join(spec.command) or spec.image}\n"
        with self._lock:
            self._executions[execution_id] = {
                "ends_at": time.monotonic() + float(self.config.get("duration_seconds", 0)),
                "exit_code": self.config.get("exit_code", 0),
                "stdout": self.config.get("stdout", default_stdout),
                "stderr": self.config.get("stderr", ""),
                "attempt": (spec.job_id, spec.attempt),
            }
            self._by_attempt[(spec.job_id, spec.attempt)] = execution_id
        return execution_id

    def find_execution(self, job_id, attempt):
        self._check_reachable()
        with self._lock:
            execution_id = self._by_attempt.get((job_id, attempt))
            return execution_id if execution_id in self._executions else None

    def _get(self, execution_id):
        with self._lock:
            return self._executions.get(execution_id)

    def status(self, execution_id):
        self._check_reachable()
        execution = self._get(execution_id)
        if execution is None:
            return NOT_FOUND
        return RUNNING if time.monotonic() < execution["ends_at"] else EXITED

    def harvest(self, execution_id, deadline=None):
        self._check_reachable()
        execution = self._get(execution_id)
        if execution is None:
            raise ExecutorError(f"mock execution {execution_id} not found")
        return Outcome(
            exit_code=execution["exit_code"],
            stdout=capped_text(execution["stdout"].encode()),
            stderr=capped_text(execution["stderr"].encode()),
        )

    def stream_logs(self, execution_id, follow=False):
        self._check_reachable()
        if follow:
            self.wait(execution_id, float("inf"))
        execution = self._get(execution_id)
        if execution is not None:
            yield (execution["stdout"] + execution["stderr"]).encode()

    def stop(self, execution_id, grace_seconds):
        self._check_reachable()
        with self._lock:
            execution = self._executions.get(execution_id)
            if execution and time.monotonic() < execution["ends_at"]:
                execution["ends_at"] = time.monotonic()
                execution["exit_code"] = STOPPED_EXIT_CODE

    def cleanup(self, execution_id):
        self._check_reachable()
        with self._lock:
            execution = self._executions.pop(execution_id, None)
            if execution:
                self._by_attempt.pop(execution["attempt"], None)

    def health_check(self):
        if self.host.name in self.unreachable:
            return Health(False, f"mock host '{self.host.name}' is unreachable")
        return Health(True, "mock executor is always available")

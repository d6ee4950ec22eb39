"""The one interface every executor implements.

An executor starts a job somewhere and names what it started with one opaque string, the
execution id. Everything the rest of the app does with a running job goes through these
methods and that id, so no code outside this package needs to know which backend it talks to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from django.core.exceptions import ValidationError

from ..exceptions import (
    ExecutorError,
    ExecutorUnavailable,
    HostError,
    HostRefused,
    LaunchError,
)
from ..spec import HostSpec, LaunchSpec

__all__ = [
    "EXITED",
    "NOT_FOUND",
    "RUNNING",
    "BaseExecutor",
    "ExecutorError",
    "ExecutorUnavailable",
    "Health",
    "HostError",
    "HostRefused",
    "LaunchError",
    "Outcome",
    "check_options",
    "positive_seconds",
]

# How one option of a host's executor_config is checked: whether a value will do, and what
# it must be (or a function of the value saying what is wrong with it).
OptionCheck = tuple[Callable[[Any], bool], str | Callable[[Any], str]]


def positive_seconds(value: Any) -> bool:
    """A finite number of seconds greater than 0 (an option's check)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_options(backend: str, config: Any, checks: Mapping[str, OptionCheck]) -> None:
    """What every backend checks of its executor_config: a JSON object of known options, each
    value passing its check. Raises ValidationError naming the option otherwise."""
    if not isinstance(config, dict):
        raise ValidationError(f"{backend} executor_config must be a JSON object")
    for key, value in config.items():
        if key not in checks:
            known = ", ".join(sorted(checks))
            raise ValidationError(f"unknown {backend} option {key!r} (known: {known})")
        check, requirement = checks[key]
        if not check(value):
            said = requirement(value) if callable(requirement) else requirement
            raise ValidationError(f"{backend} option {key!r} {said}, not {value!r}")


# What ``status`` answers.
RUNNING = "running"
EXITED = "exited"
NOT_FOUND = "not_found"


@dataclass
class Outcome:
    """What one finished execution produced."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    oom_killed: bool = False
    error: str = ""
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None


@dataclass
class Health:
    healthy: bool
    message: str


class BaseExecutor:
    """Subclasses set ``type_name`` and implement the operations below."""

    type_name: ClassVar[str] = ""
    # Seconds between status checks for backends that cannot block until completion.
    # (An instance may set its own, e.g. from its host's configuration.)
    status_poll_interval: float = 0.2

    def __init__(self, host: HostSpec):
        self.host = host
        self.config = dict(host.config)

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Raise ValidationError naming the key when ``executor_config`` is unusable."""

    def check_usable_config(self, backend: str) -> None:
        """Check the host's executor_config again before the backend is first used: a host
        saved around validation is refused here, as unavailable, saying why."""
        try:
            self.validate_config(self.config)
        except ValidationError as error:
            raise ExecutorUnavailable(
                f"{backend} host '{self.host.name}' has an unusable executor_config: "
                + "; ".join(error.messages)
            ) from None

    @classmethod
    def member_names(cls, config: dict[str, Any]) -> list[str]:
        """The hosts a host of this type routes its jobs to, in order: a host that runs
        nothing itself (a fallback chain) names them; every other host runs jobs: []."""
        return []

    @classmethod
    def missing_client(cls) -> str | None:
        """Why this backend cannot run here: its client library (an extra) is not installed,
        and how to install it; None when it can. Read by ``manage.py check``."""
        return None

    @classmethod
    def validate_host(cls, host: HostSpec) -> None:
        """Raise ValidationError ({field: message}) when the host's settings are unsafe or
        unusable for this backend (called when a host is validated). Nothing by default."""

    def launch(self, spec: LaunchSpec) -> str:
        """Start one attempt as ``spec`` describes and return its execution id.

        The spec has passed the container policy; an executor that cannot express part of
        its confinement must refuse it (``LaunchError``) rather than run it less confined.
        Idempotent per attempt: a launch may be tried again for the same attempt after one
        whose answer was lost (the host went away mid-call), so when an execution of this
        attempt already exists, return it rather than start a second one.

        Raise ``HostError`` (``ExecutorUnavailable``, ``HostRefused``) when the host is the
        trouble and nothing was started: the attempt may then move to another host.
        """
        raise NotImplementedError

    def status(self, execution_id: str) -> str:
        """One of RUNNING, EXITED or NOT_FOUND."""
        raise NotImplementedError

    def wait(self, execution_id: str, timeout: float) -> bool:
        """Block until the execution ends or ``timeout`` seconds pass; True if it ended.

        Backends that can be told of completion (Docker's wait) override this; the default
        checks ``status`` at a short interval.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.status(execution_id) != RUNNING:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.status_poll_interval, left))

    def harvest(self, execution_id: str, deadline: float | None = None) -> Outcome:
        """Exit code, capped output and usage of an execution that has ended.

        ``deadline`` (a ``time.monotonic()`` value) bounds the time spent reading output: past
        it, what was read so far is kept, marked as cut.
        """
        raise NotImplementedError

    def stream_logs(self, execution_id: str, follow: bool = False) -> Iterator[bytes]:
        """Combined output as it comes, for ``logs --follow``."""
        raise NotImplementedError

    def stop(self, execution_id: str, grace_seconds: float) -> None:
        """Ask the execution to stop; kill it if it has not after ``grace_seconds``."""
        raise NotImplementedError

    def find_execution(self, job_id: str, attempt: int) -> str | None:
        """The id of what was started for this attempt of the job, if it can be found.

        Used to recover a job whose worker died between starting it and recording its id,
        so it is re-attached to rather than started twice. Backends that can look
        executions up (Docker by label) override this.
        """
        return None

    def list_executions(self) -> dict[str, str]:
        """Everything this host holds that was started for a job: {execution_id: job id}.

        Lets a worker remove what an attempt left behind when its cleanup could not run
        (the backend was unreachable at the time). Backends that cannot list return {}.
        """
        return {}

    def cleanup(self, execution_id: str) -> None:
        """Remove whatever the execution left behind. Safe to call twice."""

    def health_check(self) -> Health:
        raise NotImplementedError

"""The one interface every executor implements.

An executor starts a job somewhere and names what it started with one opaque string, the
execution id. Everything the rest of the app does with a running job goes through these
methods and that id, so no code outside this package needs to know which backend it talks to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..policy import check_job
from ..secrets import SecretError, scrub_error

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..models import ContainerJob, ExecutorHost


class ExecutorError(Exception):
    """Something an executor could not do; the message is written on the job as it is."""


class LaunchError(ExecutorError):
    """The job could not be started (bad image, rejected request...)."""


class ExecutorUnavailable(ExecutorError):
    """The backend could not be reached at all (daemon down, network, auth)."""


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
    """Subclasses set ``type_name`` and implement the hooks below ``launch``."""

    type_name: ClassVar[str] = ""
    # Seconds between status checks for backends that cannot block until completion.
    status_poll_interval: ClassVar[float] = 0.2

    def __init__(self, host: ExecutorHost):
        self.host = host
        self.config = dict(host.executor_config or {})

    @classmethod
    def validate_config(cls, config: dict) -> None:
        """Raise ValidationError naming the key when ``executor_config`` is unusable."""

    @classmethod
    def validate_host(cls, host: ExecutorHost) -> None:
        """Raise ValidationError ({field: message}) when the host's settings are unsafe or
        unusable for this backend (called by ``ExecutorHost.clean``). Nothing by default."""

    def launch(self, job: ContainerJob) -> str:
        """Start ``job``, record what was started on it, and return the execution id.

        The container policy is checked first, whoever calls this: what the policy refuses
        is never started (``policy.PolicyViolation``). An error never quotes the clear value
        of one of the job's secrets (see ``secrets``).
        """
        check_job(job)
        try:
            execution_id = self.start(job)
        except SecretError as error:  # a secret no configured key decrypts: named, not shown
            raise LaunchError(str(error)) from None
        except Exception as error:
            if (scrubbed := scrub_error(error, job)) is not error:
                raise scrubbed from None
            raise
        job.set_execution_identifier(execution_id)
        return execution_id

    # -- hooks -------------------------------------------------------------------------

    def start(self, job: ContainerJob) -> str:
        """Start the job's current attempt and return its execution id.

        Idempotent per attempt: a launch may be tried again for the same attempt after one
        whose answer was lost (the host went away mid-call), so when an execution of this
        attempt already exists, return it rather than start a second one.
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

    def find_execution(self, job: ContainerJob) -> str | None:
        """The id of what was started for the job's current attempt, if it can be found.

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

"""The job state machine: every status a job can have and every move between them.

All status changes go through ``check_transition`` (called by ``ContainerJob.save`` and
``ContainerJob.transition``), so an invalid move raises wherever it is attempted.
"""

from django.db import models

from .exceptions import ContainerManagerError


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    LAUNCHING = "launching", "Launching"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    RETRYING = "retrying", "Retrying"


S = JobStatus

# A job may be created as pending (held back) or queued (ready to run).
INITIAL = frozenset({S.PENDING, S.QUEUED})
# A worker holds these: an executor may have something running for them.
ACTIVE = frozenset({S.LAUNCHING, S.RUNNING})
TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED})
# Ended, but not well: a retry (or a reroute) queues these again.
RETRYABLE = TERMINAL - {S.COMPLETED}
# Ended by the job itself, not well: what "failed members" of an array are.
FAILURES = frozenset({S.FAILED, S.TIMED_OUT})
# No worker holds these yet: rerouting them changes where they will run.
WAITING = frozenset({S.PENDING, S.QUEUED, S.RETRYING})

TRANSITIONS: dict[str, frozenset[str]] = {
    # Failed unrun: a job it depends on failed, timed out or was cancelled.
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.LAUNCHING, S.CANCELLED}),
    # Back to queued: the worker let go before anything was started (shutdown, lost claim).
    S.LAUNCHING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    # A finished job may be queued again by hand (retry) or retried automatically.
    S.FAILED: frozenset({S.RETRYING, S.QUEUED}),
    S.TIMED_OUT: frozenset({S.RETRYING, S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELLED}),
}


class InvalidTransition(ContainerManagerError, ValueError):
    def __init__(self, old: str, new: str):
        old, new = str(old), str(new)
        allowed = ", ".join(sorted(map(str, TRANSITIONS.get(old, ())))) or "none"
        super().__init__(
            f"status cannot go from '{old}' to '{new}' (allowed from '{old}': {allowed})"
        )
        self.old, self.new = old, new


def check_transition(old: str | None, new: str) -> None:
    """Raise InvalidTransition unless a job may move from ``old`` to ``new``.

    ``old`` is None for a job that is not in the database yet.
    """
    if new not in S.values:
        raise InvalidTransition(str(old), new)
    if old is None:
        if new not in INITIAL:
            raise InvalidTransition("new", new)
        return
    if old == new:
        return
    if new not in TRANSITIONS.get(old, ()):
        raise InvalidTransition(old, new)

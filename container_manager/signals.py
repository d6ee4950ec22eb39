"""Signals about jobs, for the user's own code: each sent once per change, after it commits.

Every status change of a job sends ``job_status_changed`` (``job``, ``old_status``,
``new_status``; ``old_status`` is None for a new job). Three more name the moments most code
waits for:

- ``job_queued``: the job is ready to run (created, released, retried, or queued again);
- ``job_started``: its container runs (``job.execution_id`` is set);
- ``job_finished``: it has its final status (``status``: completed, failed, timed_out or
  cancelled, whatever ended it: an exit code, its timeout, a cancel, a lost worker). An
  attempt that failed and will be retried is not finished: the job goes on to ``retrying``.

A signal is sent when the transaction that made the change commits (at once outside one),
from the thread that made it: the worker's, for what workers do. A receiver's exception is
logged, never raised: it cannot undo the change, nor stop a worker.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.dispatch import Signal

from . import logs
from .states import TERMINAL, JobStatus

logger = logs.get_logger(__name__)

job_status_changed = Signal()
job_queued = Signal()
job_started = Signal()
job_finished = Signal()


def announce(job: Any, old_status: str | None, new_status: str) -> None:
    """Send the signals of ``job``'s move once the current transaction commits."""
    if old_status == new_status:
        return
    transaction.on_commit(lambda: _send(job, old_status, new_status))


def _send(job: Any, old_status: str | None, new_status: str) -> None:
    sender = type(job)
    _send_one(job_status_changed, sender, job=job, old_status=old_status, new_status=new_status)
    if new_status == JobStatus.QUEUED:
        _send_one(job_queued, sender, job=job)
    elif new_status == JobStatus.RUNNING:
        _send_one(job_started, sender, job=job)
    # A failure moved on to ``retrying`` in the same transaction has not finished the job.
    elif new_status in TERMINAL and job.status == new_status:
        _send_one(job_finished, sender, job=job, status=new_status)


def _send_one(signal: Signal, sender: type, **named: Any) -> None:
    for receiver, result in signal.send_robust(sender, **named):
        if isinstance(result, Exception):
            logger.error(
                "a receiver of a job signal failed: %r raised %r",
                receiver,
                result,
                exc_info=(type(result), result, result.__traceback__),
            )

"""Running one claimed attempt of a job: launch, supervise, harvest, record.

The outcome of an attempt (status, exit code, output, usage, error) is written in one
atomic update, so nobody ever sees a finished job without its output. Database
transactions never span a call to the executor.
"""

import logging
import time

from django.db import transaction
from django.utils import timezone

from .conf import setting
from .executors import ExecutorError, Outcome
from .models import ContainerJob, JobAttempt
from .states import JobStatus

logger = logging.getLogger(__name__)


def run_attempt(job: ContainerJob) -> None:
    """Take a job this worker claimed (status ``launching``) to a final status."""
    try:
        executor = job.host.get_executor()
        execution_id = executor.launch(job)
    except Exception as error:  # noqa: BLE001 - every failure must end up on the job
        record_outcome(job, JobStatus.FAILED, Outcome(exit_code=None), describe(error, "launch"))
        return

    try:
        started = timezone.now()
        with transaction.atomic():
            moved = job.transition(JobStatus.RUNNING, execution_id=execution_id, started_at=started)
            current_attempt(job).update(execution_id=execution_id)
        if not moved:
            logger.warning(
                "job %s changed while launching (now %s); stopping it", job.pk, job.status
            )
            executor.stop(execution_id, 0)
            return
        logger.info("job %s running as %s on %s", job.pk, execution_id, job.host.name)
        status, error = supervise(executor, job, execution_id)
        outcome = executor.harvest(execution_id)
        record_outcome(job, status, outcome, error)
    except Exception as error:  # noqa: BLE001
        record_outcome(job, JobStatus.FAILED, Outcome(exit_code=None), describe(error, "run"))
    finally:
        try:
            executor.cleanup(execution_id)
        except Exception:  # noqa: BLE001 - cleanup trouble must not hide the outcome
            logger.exception("cleanup of %s for job %s failed", execution_id, job.pk)


def supervise(executor, job: ContainerJob, execution_id: str):
    """Wait for the execution to end, stopping it on timeout or cancel request.

    Returns (status, error): status None means "decided by the exit code".
    """
    deadline = time.monotonic() + job.timeout_seconds
    check_every = setting("CANCEL_CHECK_INTERVAL")
    grace = setting("STOP_GRACE_SECONDS")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            executor.stop(execution_id, grace)
            return JobStatus.TIMED_OUT, f"timed out after {job.timeout_seconds} s; stopped"
        if executor.wait(execution_id, min(left, check_every)):
            return None, ""
        if cancel_requested(job):
            executor.stop(execution_id, grace)
            return JobStatus.CANCELLED, "cancelled on request; stopped"


def cancel_requested(job: ContainerJob) -> bool:
    return ContainerJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=False).exists()


def record_outcome(job: ContainerJob, status, outcome: Outcome, error: str = "") -> None:
    """Write the whole outcome of the current attempt at once."""
    if status is None:
        status = JobStatus.COMPLETED if outcome.exit_code == 0 else JobStatus.FAILED
    if not error and status == JobStatus.FAILED:
        error = outcome.error or f"container exited with code {outcome.exit_code}"
    elif outcome.error and outcome.error not in error:
        error = f"{error}; {outcome.error}" if error else outcome.error
    finished = timezone.now()
    with transaction.atomic():
        moved = job.transition(
            status,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            peak_memory_bytes=outcome.peak_memory_bytes,
            cpu_seconds=outcome.cpu_seconds,
            last_error=error,
            finished_at=finished,
        )
        if moved:
            current_attempt(job).update(
                status=status, exit_code=outcome.exit_code, error=error, finished_at=finished
            )
    if not moved:
        logger.error("job %s could not be marked %s: it is %s", job.pk, status, job.status)
    else:
        logger.info("job %s %s (exit code %s)", job.pk, status, outcome.exit_code)


def current_attempt(job: ContainerJob):
    return JobAttempt.objects.filter(job=job, number=job.attempts)


def describe(error: Exception, stage: str) -> str:
    if isinstance(error, ExecutorError):
        return str(error)
    return f"internal error during {stage}: {type(error).__name__}: {error}"

"""Running one claimed attempt of a job: launch, follow, harvest, record.

The outcome of an attempt (status, exit code, output, usage, error) is written in one
atomic update, so nobody ever sees a finished job without its output. Database
transactions never span a call to the executor.
"""

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, close_old_connections, transaction
from django.utils import timezone

from . import policy
from .conf import setting
from .executors import ExecutorError, Outcome
from .executors.base import NOT_FOUND
from .models import ContainerJob, JobAttempt
from .states import JobStatus

logger = logging.getLogger(__name__)

# Why an attempt failed; ContainerJob.retry_on lists the kinds worth another attempt.
LAUNCH_ERROR = "launch_error"
EXIT_CODE = "exit_code"
TIMEOUT = "timeout"
EXECUTOR_ERROR = "executor_error"
WORKER_LOST = "worker_lost"
# Refused by the container policy: never retried (not a kind ContainerJob.retry_on accepts).
POLICY = "policy"


@dataclass
class Verdict:
    """How an execution ended, before its outcome is harvested."""

    status: str | None  # None: decided by the exit code
    error: str = ""
    kind: str = ""


# The worker let go of the job (shutdown): another worker will re-attach to it.
RELEASED = Verdict(status=None, error="released", kind="released")


class Runner:
    """Carries one job to a final status; ``release`` tells it the worker is leaving."""

    def __init__(self, job: ContainerJob, release: threading.Event):
        self.job = job
        self.release = release

    def run(self) -> None:
        """For a job this worker claimed (status ``launching``)."""
        job = self.job
        try:
            executor = job.host.get_executor()
            # Checks the policy again: it may have changed since the job was made.
            execution_id = executor.launch(job)
        except policy.PolicyViolation as error:
            self.record(JobStatus.FAILED, Outcome(None), policy.refusal(error), POLICY)
            return
        except Exception as error:  # noqa: BLE001 - every failure must end up on the job
            self.record(JobStatus.FAILED, Outcome(None), describe(error, "launch"), LAUNCH_ERROR)
            return
        if not self.mark_running(executor, execution_id):
            return
        self.follow(executor, execution_id)

    def resume(self) -> None:
        """For a job adopted from a lost worker: re-attach, never start it a second time."""
        job = self.job
        try:
            executor = job.host.get_executor()
            execution_id = job.execution_id
            if job.status == JobStatus.LAUNCHING:
                execution_id = executor.find_execution(job)
                if execution_id is None:
                    # Nothing was started: give the claim back without spending an attempt.
                    requeue_unstarted(job)
                    return
                if not self.mark_running(executor, execution_id):
                    return
            if executor.status(execution_id) == NOT_FOUND:
                self.record(
                    JobStatus.FAILED,
                    Outcome(None),
                    f"the worker running this job was lost, and execution {execution_id} "
                    "no longer exists; its outcome is unknown",
                    WORKER_LOST,
                )
                return
        except Exception as error:  # noqa: BLE001
            self.record(
                JobStatus.FAILED, Outcome(None), describe(error, "recovery"), EXECUTOR_ERROR
            )
            return
        logger.info("job %s: re-attached to %s", job.pk, execution_id)
        self.follow(executor, execution_id)

    # -- steps -------------------------------------------------------------------------

    def mark_running(self, executor, execution_id: str) -> bool:
        job = self.job
        with transaction.atomic():
            moved = job.transition(
                JobStatus.RUNNING, execution_id=execution_id, started_at=timezone.now()
            )
            if moved:
                current_attempt(job).update(execution_id=execution_id)
        if not moved:
            logger.warning(
                "job %s changed while launching (now %s); stopping it", job.pk, job.status
            )
            executor.stop(execution_id, 0)
            executor.cleanup(execution_id)
        else:
            logger.info("job %s running as %s on %s", job.pk, execution_id, job.host.name)
        return moved

    def follow(self, executor, execution_id: str) -> None:
        job = self.job
        try:
            verdict = self.supervise(executor, execution_id)
            if verdict is RELEASED:
                logger.info("job %s released with %s still running", job.pk, execution_id)
                return
            outcome = executor.harvest(execution_id)
        except Exception as error:  # noqa: BLE001
            verdict, outcome = (
                Verdict(JobStatus.FAILED, describe(error, "run"), EXECUTOR_ERROR),
                Outcome(None),
            )
        if self.record(verdict.status, outcome, verdict.error, verdict.kind):
            try:
                executor.cleanup(execution_id)
            except Exception:  # noqa: BLE001 - cleanup trouble must not hide the outcome
                logger.exception("cleanup of %s for job %s failed", execution_id, job.pk)

    def supervise(self, executor, execution_id: str) -> Verdict:
        """Wait for the execution to end, stopping it on timeout or cancel request."""
        job = self.job
        started = job.started_at or timezone.now()
        left = (started + timedelta(seconds=job.timeout_seconds) - timezone.now()).total_seconds()
        deadline = time.monotonic() + left
        check_every = setting("CANCEL_CHECK_INTERVAL")
        grace = setting("STOP_GRACE_SECONDS")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                executor.stop(execution_id, grace)
                return Verdict(
                    JobStatus.TIMED_OUT,
                    f"timed out after {job.timeout_seconds} s; stopped",
                    TIMEOUT,
                )
            if executor.wait(execution_id, min(left, check_every)):
                return Verdict(None)
            if self.release.is_set():
                return RELEASED
            if cancel_requested(job):
                executor.stop(execution_id, grace)
                return Verdict(JobStatus.CANCELLED, "cancelled on request; stopped")

    def record(self, status, outcome: Outcome, error: str = "", kind: str = "") -> bool:
        """Write the attempt's outcome, and schedule a retry when one is due.

        A database hiccup (a dropped connection) must not lose an outcome that the executor
        can no longer give again, so the write is tried a few times.
        """
        for attempt in range(5):
            try:
                return record_outcome(self.job, status, outcome, error, kind)
            except DatabaseError:
                if attempt == 4:
                    raise
                logger.warning("job %s: database error writing outcome; retrying", self.job.pk)
                time.sleep(0.5 * (attempt + 1))
                close_old_connections()
                self.job.refresh_from_db()
        return False


def record_outcome(job: ContainerJob, status, outcome: Outcome, error="", kind="") -> bool:
    if status is None:
        status = JobStatus.COMPLETED if outcome.exit_code == 0 else JobStatus.FAILED
        kind = EXIT_CODE
    if not error and status == JobStatus.FAILED:
        error = outcome.error or f"container exited with code {outcome.exit_code}"
    elif outcome.error and outcome.error not in error:
        error = f"{error}; {outcome.error}" if error else outcome.error
    finished = timezone.now()
    retry_at = retry_time(job, status, kind)
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
            if retry_at is not None:
                job.transition(JobStatus.RETRYING, scheduled_for=retry_at)
    if not moved:
        logger.error("job %s could not be marked %s: it is %s", job.pk, status, job.status)
    elif retry_at is not None:
        logger.info("job %s %s (%s); retry at %s", job.pk, status, error, retry_at.isoformat())
    else:
        logger.info("job %s %s (exit code %s)", job.pk, status, outcome.exit_code)
    return moved


def retry_time(job: ContainerJob, status: str, kind: str):
    """When the next attempt may start, or None when there is to be no retry."""
    if status not in (JobStatus.FAILED, JobStatus.TIMED_OUT) or job.attempts >= job.max_attempts:
        return None
    if kind not in job.retry_on:
        return None
    return timezone.now() + timedelta(seconds=backoff_seconds(job.attempts))


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff after ``attempt`` failed attempts, with some taken off at random."""
    delay = min(
        setting("RETRY_BACKOFF_MAX"),
        setting("RETRY_BACKOFF_BASE") * setting("RETRY_BACKOFF_FACTOR") ** (attempt - 1),
    )
    return delay * (1 - setting("RETRY_JITTER") * random.random())


def requeue_unstarted(job: ContainerJob) -> None:
    with transaction.atomic():
        if job.transition(JobStatus.QUEUED, worker=None, attempts=job.attempts - 1):
            JobAttempt.objects.filter(job=job, number=job.attempts + 1).delete()
    logger.info("job %s: its worker was lost before starting it; queued again", job.pk)


def cancel_requested(job: ContainerJob) -> bool:
    return ContainerJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=False).exists()


def current_attempt(job: ContainerJob):
    return JobAttempt.objects.filter(job=job, number=job.attempts)


def describe(error: Exception, stage: str) -> str:
    if isinstance(error, ExecutorError):
        return str(error)
    return f"internal error during {stage}: {type(error).__name__}: {error}"

"""Running one claimed attempt of a job: launch, follow, harvest, record.

The outcome of an attempt (status, exit code, output, usage, error) is written in one
atomic update, so nobody ever sees a finished job without its output. Database
transactions never span a call to the executor.

Outages are part of the job. Each write is retried through a database restart
(``db.retry_transient``); should the database stay away longer, the runner ends without
recording anything and the worker's watchdog resumes the job once it is back. A host that
stops answering is taken out of routing: a launch that reached nothing gives its claim back
without spending an attempt, and a running execution is followed through the outage for
``ENGINE_OUTAGE_GRACE`` seconds and harvested from what the host reports when it returns.
"""

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from . import logs, policy
from .conf import setting
from .db import TRANSIENT_ERRORS, reset_connection, retry_transient
from .exceptions import ExecutorError, ExecutorUnavailable, HostError, PolicyViolation
from .executors.base import NOT_FOUND, Outcome
from .launching import launch
from .models import ContainerJob, ExecutorHost, JobAttempt
from .output import storable
from .queue import reroute
from .states import ACTIVE, JobStatus
from .units import backoff

logger = logs.get_logger(__name__)

# Why an attempt failed; ContainerJob.retry_on lists the kinds worth another attempt.
LAUNCH_ERROR = "launch_error"
EXIT_CODE = "exit_code"
TIMEOUT = "timeout"
EXECUTOR_ERROR = "executor_error"
WORKER_LOST = "worker_lost"
# Refused by the container policy: never retried (not a kind ContainerJob.retry_on accepts).
POLICY = "policy"

# Seconds between calls to a host that does not answer, while its outage grace lasts.
OUTAGE_RETRY_PAUSE = 1.0
# Harvesting gets at least this long, even when the job's time is up.
MIN_HARVEST_SECONDS = 2.0


@dataclass
class Verdict:
    """How an execution ended, before its outcome is harvested."""

    status: str | None  # None: decided by the exit code
    error: str = ""
    kind: str = ""


# The worker let go of the job (shutdown, or another worker took it over): another worker
# will re-attach to it.
RELEASED = Verdict(status=None, error="released", kind="released")


class Released(Exception):
    """The worker let go of the job while its host was unreachable."""


class OutageTooLong(ExecutorError):
    """The host stayed unreachable past ``ENGINE_OUTAGE_GRACE``."""


class Runner:
    """Carries one job to a final status; ``release`` tells it the worker is leaving."""

    def __init__(self, job: ContainerJob, release: threading.Event):
        self.job = job
        self.release = release
        self.owner = job.worker_id
        # The attempt's execution once known: written on the attempt with its outcome.
        self.execution_id = ""
        # time.monotonic() by which the job's timeout is up (set by ``supervise``)
        self.deadline: float | None = None
        # time.monotonic() when the host stopped answering
        self.outage_started: float | None = None
        self.outage_seconds = 0.0  # how long the host was unreachable while followed

    @property
    def host(self) -> ExecutorHost:
        """The job's host: a runner only gets a job that was claimed, and claiming routed it
        to a host (``queue.claim_jobs``; ``queue.reroute`` may move it to another)."""
        host = self.job.host
        assert host is not None, f"job {self.job.pk} has no host"
        return host

    def run(self) -> None:
        """For a job this worker claimed (status ``launching``)."""
        try:
            launched = self.launch()
        except Released:
            return  # let go while its host was away: another worker looks for what started
        if launched is None or not self.mark_running(*launched):
            return
        self.follow(*launched)

    def launch(self):
        """(executor, execution id) of the started attempt, or None when it was not started.

        A launch that fails for a host-level reason (``HostError``: unreachable, refused) moves
        on to the next fit host within the same attempt, each try recorded on the attempt;
        with none left, the claim is given back without spending the attempt.
        """
        job = self.job
        tried: list[int] = []
        while True:
            try:
                executor = self.host.get_executor()
                # Checks the policy again: it may have changed since the job was made.
                return executor, launch(job, executor)
            except TRANSIENT_ERRORS:
                raise  # nothing recorded: the worker's watchdog resumes the job
            except PolicyViolation as error:
                self.record(JobStatus.FAILED, Outcome(None), policy.refusal(error), POLICY)
                return None
            except HostError as error:
                if isinstance(error, ExecutorUnavailable):
                    self.mark_host_unreachable(error)
                if error.maybe_started and (found := self.find_started(executor)):
                    return executor, found
                tried.append(self.host.pk)
                failed_on = self.host.name
                moved = retry_transient(
                    lambda error=error: reroute(job, tried, str(error)),
                    f"job {job.pk}: routing it to another host",
                )
                if moved is None:
                    give_back_claim(job, f"host {failed_on} could not launch it: {error}")
                    return None
                logs.bind(host=self.host.name)
                logger.warning(
                    "job %s: %s failed (%s); trying %s", job.pk, failed_on, error, moved.reason
                )
            except Exception as error:  # noqa: BLE001 - every failure must end up on the job
                self.record(
                    JobStatus.FAILED, Outcome(None), describe(error, "launch"), LAUNCH_ERROR
                )
                return None

    def find_started(self, executor) -> str | None:
        """The execution of this attempt that a launch interrupted mid-start may have left
        running, once the host answers again (for up to ``ENGINE_OUTAGE_GRACE``)."""
        try:
            return self.until_reachable(
                executor.find_execution, str(self.job.pk), self.job.attempts
            )
        except OutageTooLong:
            # Past the grace nothing more can be known now: the attempt moves on, and what
            # may run there is swept once the job is finished (see janitor).
            return None

    def resume(self) -> None:
        """For a job this worker holds without following it (adopted from a lost worker, or
        left by a runner that ended early): re-attach, never start it a second time."""
        job = self.job
        if not retry_transient(self.still_mine, f"job {job.pk}: resuming"):
            return
        try:
            executor = self.host.get_executor()
            execution_id = job.execution_id
            if job.status == JobStatus.LAUNCHING:
                try:
                    execution_id = executor.find_execution(str(job.pk), job.attempts)
                except ExecutorUnavailable as error:
                    # Launches are idempotent per attempt (see BaseExecutor.launch): should
                    # something have started, the next launch of this attempt finds it.
                    self.mark_host_unreachable(error)
                    give_back_claim(job, f"host {self.host.name} is unreachable: {error}")
                    return
                if execution_id is None:
                    # Nothing was started: give the claim back without spending an attempt.
                    give_back_claim(job, "its worker was lost before starting it")
                    return
                if not self.mark_running(executor, execution_id):
                    return
            self.execution_id = execution_id
            if self.until_reachable(executor.status, execution_id) == NOT_FOUND:
                self.record(
                    JobStatus.FAILED,
                    Outcome(None),
                    f"the worker running this job was lost, and execution {execution_id} "
                    "no longer exists; its outcome is unknown",
                    WORKER_LOST,
                )
                return
        except TRANSIENT_ERRORS:
            raise
        except Released:
            return
        except Exception as error:  # noqa: BLE001
            self.record(
                JobStatus.FAILED, Outcome(None), describe(error, "recovery"), EXECUTOR_ERROR
            )
            return
        logger.info("job %s: re-attached to %s", job.pk, execution_id)
        self.follow(executor, execution_id)

    # -- steps -------------------------------------------------------------------------

    def still_mine(self) -> bool:
        """Whether the job is still active and held by this runner's worker."""
        self.job.refresh_from_db()
        return self.job.status in ACTIVE and self.job.worker_id == self.owner

    def mark_running(self, executor, execution_id: str) -> bool:
        job = self.job

        def step():
            # One UPDATE of the job: the attempt's record gets the execution id with its
            # outcome (``record_outcome``), in the write that ends it.
            moved = job.transition(
                JobStatus.RUNNING, execution_id=execution_id, started_at=timezone.now()
            )
            # A retry after a commit whose answer was lost finds the move already made.
            return moved or (job.status == JobStatus.RUNNING and job.execution_id == execution_id)

        moved = retry_transient(step, f"job {job.pk}: marking it running")
        if not moved:
            logger.warning(
                "job %s changed while launching (now %s); stopping it", job.pk, job.status
            )
            executor.stop(execution_id, 0)
            executor.cleanup(execution_id)
        else:
            logger.info("job %s running as %s on %s", job.pk, execution_id, self.host.name)
        return moved

    def follow(self, executor, execution_id: str) -> None:
        job = self.job
        self.execution_id = execution_id
        logs.bind(execution_id=execution_id)
        try:
            verdict = self.supervise(executor, execution_id)
            if verdict is RELEASED:
                logger.info("job %s released with %s still running", job.pk, execution_id)
                return
            assert self.deadline is not None  # set by supervise
            harvest_by = max(
                self.deadline + setting("STOP_GRACE_SECONDS"), _in(MIN_HARVEST_SECONDS)
            )
            outcome = self.until_reachable(executor.harvest, execution_id, harvest_by)
        except TRANSIENT_ERRORS:
            raise
        except Released:
            logger.info("job %s released while its host was unreachable", job.pk)
            return
        except Exception as error:  # noqa: BLE001
            verdict, outcome = (
                Verdict(JobStatus.FAILED, describe(error, "run"), EXECUTOR_ERROR),
                Outcome(None),
            )
        verdict = self.explain_outage(verdict, outcome)
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
        self.deadline = time.monotonic() + left
        check_every = setting("CANCEL_CHECK_INTERVAL")
        grace = setting("STOP_GRACE_SECONDS")
        while True:
            left = self.deadline - time.monotonic()
            # Asked first, so an execution that ended during an outage is not called timed out.
            if self.until_reachable(executor.wait, execution_id, max(0.0, min(left, check_every))):
                return Verdict(None)
            if left <= 0:
                self.until_reachable(executor.stop, execution_id, grace)
                return Verdict(
                    JobStatus.TIMED_OUT,
                    f"timed out after {job.timeout_seconds} s; stopped",
                    TIMEOUT,
                )
            if self.release.is_set():
                return RELEASED
            cancel_requested, owner = self.read_requests()
            if owner != self.owner:
                logger.warning("job %s was taken over by another worker", job.pk)
                return RELEASED
            if cancel_requested:
                self.until_reachable(executor.stop, execution_id, grace)
                return Verdict(JobStatus.CANCELLED, "cancelled on request; stopped")

    def read_requests(self) -> tuple[bool, object]:
        """(cancel requested?, the worker holding the job) as the database says now.

        While the database is away the job goes on as it was: a container does not need it.
        """
        try:
            row = ContainerJob.objects.filter(pk=self.job.pk).values_list(
                "cancel_requested_at", "worker_id"
            )
            cancel_requested_at, owner = row.get()
        except TRANSIENT_ERRORS as error:
            logger.warning("job %s: database unavailable (%s); following on", self.job.pk, error)
            reset_connection()
            return False, self.owner
        return cancel_requested_at is not None, owner

    # -- outages -----------------------------------------------------------------------

    def until_reachable(self, call, *args):
        """``call(*args)``, tried again while the host is unreachable, up to the grace."""
        while True:
            try:
                result = call(*args)
            except ExecutorUnavailable as error:
                self.unreachable(error)
                if self.release.wait(OUTAGE_RETRY_PAUSE):
                    raise Released() from None
                continue
            if self.outage_started is not None:
                lasted = time.monotonic() - self.outage_started
                self.outage_seconds += lasted
                self.outage_started = None
                logger.info(
                    "job %s: host %s answers again after %.0f s",
                    self.job.pk,
                    self.host.name,
                    lasted,
                )
            return result

    def unreachable(self, error: ExecutorUnavailable) -> None:
        now = time.monotonic()
        grace = setting("ENGINE_OUTAGE_GRACE")
        if self.outage_started is None:
            self.outage_started = now
            logger.warning(
                "job %s: host %s unreachable (%s); following it for up to %g s",
                self.job.pk,
                self.host.name,
                error,
                grace,
            )
            self.mark_host_unreachable(error)
        elif now - self.outage_started > grace:
            raise OutageTooLong(
                f"host {self.host.name} was unreachable for more than {grace:g} s "
                f"(ENGINE_OUTAGE_GRACE) while this job ran; its outcome is unknown. "
                f"Last error: {error}"
            )

    def mark_host_unreachable(self, error: ExecutorError) -> None:
        try:
            if ExecutorHost.objects.mark_unreachable(self.host, str(error)):
                logger.warning("host %s marked unhealthy: %s", self.host.name, error)
        except TRANSIENT_ERRORS:
            reset_connection()  # the recheck will find it out anyway

    def explain_outage(self, verdict: Verdict, outcome: Outcome) -> Verdict:
        """A failed exit during a host outage is most likely the outage's doing: say so."""
        if not self.outage_seconds or verdict.status is not None or outcome.exit_code == 0:
            return verdict
        return Verdict(
            JobStatus.FAILED,
            f"container exited with code {outcome.exit_code} around an outage of host "
            f"{self.host.name} (unreachable for {self.outage_seconds:.0f} s): most likely "
            "it was stopped with its engine",
            EXECUTOR_ERROR,
        )

    # -- the outcome -------------------------------------------------------------------

    def record(self, status, outcome: Outcome, error: str = "", kind: str = "") -> bool:
        """Write the attempt's outcome, and schedule a retry when one is due.

        The executor may not be able to give this outcome again, so the write outlives a
        database restart (``DATABASE_RETRY_SECONDS``).
        """
        job, execution_id = self.job, self.execution_id
        return retry_transient(
            lambda: record_outcome(job, status, outcome, error, kind, execution_id),
            f"job {job.pk}: recording its outcome",
        )


def record_outcome(
    job: ContainerJob, status, outcome: Outcome, error="", kind="", execution_id=""
) -> bool:
    """Write the attempt's end on the job and on its attempt record (with ``execution_id``,
    the attempt's execution, when it got one), queueing a retry when one is due."""
    if status is None:
        status = JobStatus.COMPLETED if outcome.exit_code == 0 else JobStatus.FAILED
        kind = EXIT_CODE
    if not error and status == JobStatus.FAILED:
        error = outcome.error or f"container exited with code {outcome.exit_code}"
    elif outcome.error and outcome.error not in error:
        error = f"{error}; {outcome.error}" if error else outcome.error
    error = storable(error)
    finished = timezone.now()
    number = job.attempts
    retry_at = retry_time(job, status, kind)
    with transaction.atomic():
        moved = job.transition(
            status,
            will_retry=retry_at is not None,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            peak_memory_bytes=outcome.peak_memory_bytes,
            cpu_seconds=outcome.cpu_seconds,
            last_error=error,
            failure_kind="" if status == JobStatus.COMPLETED else kind,
            finished_at=finished,
        )
        if moved:
            ended = {"status": status, "exit_code": outcome.exit_code, "error": error}
            if execution_id:
                ended["execution_id"] = execution_id
            current_attempt(job).update(**ended, finished_at=finished)
            if retry_at is not None:
                job.transition(JobStatus.RETRYING, scheduled_for=retry_at)
    if not moved:
        # A retry after a commit whose answer was lost: the attempt is already written.
        if JobAttempt.objects.filter(
            job=job, number=number, status=status, finished_at__isnull=False
        ).exists():
            return True
        logger.error("job %s could not be marked %s: it is %s", job.pk, status, job.status)
    elif retry_at is not None:
        logger.info("job %s %s (%s); retry at %s", job.pk, status, error, retry_at.isoformat())
    else:
        said = f": {error}" if error else ""
        logger.info("job %s %s (exit code %s)%s", job.pk, status, outcome.exit_code, said)
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
    return backoff(
        attempt,
        setting("RETRY_BACKOFF_BASE"),
        setting("RETRY_BACKOFF_MAX"),
        setting("RETRY_BACKOFF_FACTOR"),
        setting("RETRY_JITTER"),
    )


def give_back_claim(job: ContainerJob, why: str) -> None:
    """Queue a launching job again without spending an attempt: nothing was started."""

    def step():
        with transaction.atomic():
            # The error says why it waits; the attempt was not spent, so its record goes.
            moved = job.transition(
                JobStatus.QUEUED, worker=None, attempts=job.attempts - 1, last_error=storable(why)
            )
            if moved:
                JobAttempt.objects.filter(job=job, number=job.attempts + 1).delete()
                return True
        return False

    if retry_transient(step, f"job {job.pk}: giving its claim back"):
        logger.info("job %s queued again (%s)", job.pk, why)


def current_attempt(job: ContainerJob):
    return JobAttempt.objects.filter(job=job, number=job.attempts)


def describe(error: Exception, stage: str) -> str:
    if isinstance(error, ExecutorError):
        return str(error)
    return f"internal error during {stage}: {type(error).__name__}: {error}"


def _in(seconds: float) -> float:
    return time.monotonic() + seconds

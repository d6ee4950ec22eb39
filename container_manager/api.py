"""The Python API: create a job in one call, wait for it, release, cancel, retry, reroute,
duplicate or delete it (``bulk_operations`` does these to many jobs).

The CLI and the admin are thin layers over these functions.
"""

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from . import envfile, limits, notify
from . import secrets as sealing
from .db import retry_transient
from .exceptions import ExecutorError
from .executors.base import RUNNING
from .fields import NUL_MESSAGE, short_repr
from .models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, as_job_id
from .output import LastLine, decode_output, split_incomplete_utf8
from .routing import check_routable
from .states import ACTIVE, RETRYABLE, JobStatus


def _lookup(model, value, field):
    if value is None or isinstance(value, model):
        return value
    if not isinstance(value, str):
        raise ValidationError({field: f"must be a name, not {short_repr(value)}"})
    if "\x00" in value:
        # Not even looked up: PostgreSQL refuses NUL in a query as in a column.
        raise ValidationError({field: NUL_MESSAGE})
    try:
        return model.objects.get(name=value)
    except model.DoesNotExist:
        what = model._meta.verbose_name
        raise ValidationError({field: f"no {what} named {short_repr(value)}"}) from None


def _dependencies(values) -> list[ContainerJob]:
    """The jobs ``values`` names (jobs or job ids), each once; ValidationError on
    ``depends_on`` naming what is not a job."""
    if values is None:
        return []
    if not isinstance(values, list | tuple | set | frozenset):
        raise ValidationError(
            {"depends_on": f"must be a list of jobs or job ids, not {short_repr(values)}"}
        )
    ids = []
    for value in values:
        if (job_id := as_job_id(value)) is None:
            raise ValidationError({"depends_on": f"{short_repr(value)} is not a job id"})
        ids.append(job_id)
    found = ContainerJob.objects.in_bulk(ids)
    if missing := [str(pk) for pk in ids if pk not in found]:
        raise ValidationError({"depends_on": f"no job with id {', '.join(missing)}"})
    return list(found.values())


def lookup_host(host: ExecutorHost | str | None) -> ExecutorHost | None:
    """``host`` itself, or the host of that name (ValidationError on ``host`` if none)."""
    return _lookup(ExecutorHost, host, "host")


def with_secrets(env: dict, secrets: dict) -> dict:
    """``env`` with ``secrets`` added, sealed. Raises ValidationError for the ``secrets`` field."""
    envfile.validate_env_mapping(secrets, "secrets")
    if both := sorted(env.keys() & secrets.keys()):
        raise ValidationError(f"{', '.join(both)} given both in env and in secrets")
    # Checked before sealing, which costs an encryption per value.
    if problem := limits.env_size_error({**env, **secrets}, "with the secrets, the environment"):
        raise ValidationError(problem)
    try:
        return {**env, **{key: sealing.seal(value, key) for key, value in secrets.items()}}
    except sealing.SecretError as error:
        raise ValidationError(str(error)) from None


# What a job asks for: what to run, where it asked to run, its limits, confinement and retries.
# duplicate_job copies these; bulk specs give them (host, env and template under create_job's
# names). The outcome fields (status, output, attempts, times) are not among them.
SPEC_FIELDS = (
    "name",
    "image",
    "command",
    "working_dir",
    "environment_template",
    "environment_overrides",
    "memory_limit",
    "cpu_limit",
    "gpus",
    "timeout_seconds",
    "run_as_user",
    "read_only_root",
    "privileged",
    "host_network",
    "host_pid",
    "capabilities",
    "mounts",
    "requested_host",
    "executor_type",
    "host_labels",
    "priority",
    "max_attempts",
    "retry_on",
    "webhook_url",
)


# The hosts, template and user a job refers to. Checking that they exist costs a query each,
# per job: a caller that checked a job with the same ones (bulk creation, from one spec) may
# skip them.
REFERENCES = ("requested_host", "host", "environment_template", "created_by")


def _placed_on(requested: ExecutorHost | None) -> ExecutorHost | None:
    """The ``host`` of a job asking for ``requested``: where it runs is routing's choice at
    launch, and a named host (not a fallback chain) is that choice already."""
    return requested if requested is not None and not requested.member_names else None


def _validate(job: ContainerJob, references_checked: bool = False) -> None:
    """Every field of ``job``, and whether a host could ever take it; ValidationError names
    each bad field, the requested host as ``host`` (the argument's name in the API)."""
    try:
        # No unique or constraint checks: ids are fresh uuids, a schedule's due time and an
        # array's index are set by code the database holds to them, and each check would
        # cost a query per job.
        job.full_clean(
            validate_unique=False,
            validate_constraints=False,
            exclude=REFERENCES if references_checked else None,
        )
        if not references_checked:
            check_routable(job)
    except ValidationError as error:
        found = error.update_error_dict({})
        if "requested_host" in found:
            found["host"] = found.pop("requested_host")
        raise ValidationError(found) from None


def build_job(
    image: str,
    command: list[str] | None = None,
    *,
    host: ExecutorHost | str | None = None,
    env: dict[str, str] | None = None,
    env_template: EnvironmentVariableTemplate | str | None = None,
    hold: bool = False,
    secrets: dict[str, str] | None = None,
    references_checked: bool = False,
    **fields,
) -> ContainerJob:
    """A validated, unsaved job: what ``create_job`` saves (see there for the arguments).

    ``references_checked=True`` skips the checks that query the database (the host, template
    and creator exist; a host could take the job): for a caller that built a job with the
    same host, template, creator and routing request already, as bulk creation does once
    per spec. Raises ValidationError naming each bad field.
    """
    requested = _lookup(ExecutorHost, host, "host")
    template = _lookup(EnvironmentVariableTemplate, env_template, "env_template")
    if env is not None and not isinstance(env, dict):
        # Not even copied: dict("x") would fail with a message naming nothing.
        raise ValidationError({"env": f"must be an object of NAME to value, not {short_repr(env)}"})
    env = dict(env or {})
    errors = {}
    if secrets:
        try:
            env = with_secrets(env, secrets)
        except ValidationError as error:
            errors["secrets"] = error.messages
    job = ContainerJob(
        image=image,
        # A tuple is as good as a list; a string is not an argv and fails validation.
        command=list(command) if isinstance(command, list | tuple) else (command or []),
        requested_host=requested,
        host=_placed_on(requested),
        environment_template=template,
        environment_overrides=env,
        status=JobStatus.PENDING if hold else JobStatus.QUEUED,
        **fields,
    )
    try:
        _validate(job, references_checked)
    except ValidationError as error:
        raise ValidationError({**error.update_error_dict({}), **errors}) from None
    if errors:
        raise ValidationError(errors)
    return job


def create_job(
    image: str,
    command: list[str] | None = None,
    *,
    host: ExecutorHost | str | None = None,
    env: dict[str, str] | None = None,
    env_template: EnvironmentVariableTemplate | str | None = None,
    hold: bool = False,
    secrets: dict[str, str] | None = None,
    depends_on: list | None = None,
    **fields,
) -> ContainerJob:
    """Validate and save a job, queued to run (or pending, with ``hold=True``).

    ``env`` values of variables whose names match ``SECRET_ENV_PATTERNS`` are stored sealed
    (encrypted); ``secrets`` are variables stored sealed whatever their names.
    ``depends_on``: jobs (or their ids) that must complete first. The job waits, pending,
    until they all have (workers queue it then), and fails unrun if one of them fails, times
    out or is cancelled. They exist before it, so dependencies can form no cycle.
    ``fields`` are any other ContainerJob fields (name, memory_limit, cpu_limit,
    timeout_seconds, priority, scheduled_for, max_attempts, working_dir, created_by).
    Raises ValidationError naming each bad field; nothing is saved then.
    """
    dependencies = _dependencies(depends_on)
    if dependencies and hold:
        raise ValidationError(
            {"depends_on": "a job that waits for others cannot also be held (hold)"}
        )
    job = build_job(
        image,
        command,
        host=host,
        env=env,
        env_template=env_template,
        hold=hold or bool(dependencies),
        secrets=secrets,
        **fields,
    )
    with transaction.atomic():
        job.save(force_insert=True)
        job.depends_on.set(dependencies)
    return job


def cancel_job(job: ContainerJob) -> ContainerJob:
    """Cancel a job from any process.

    A job nothing runs yet is cancelled at once; for a running one a cancel request is
    recorded and the worker that holds it stops the container and writes the outcome.
    """
    while True:
        if job.is_terminal:
            raise ValidationError({"status": f"job is already {job.status}; nothing to cancel"})
        if job.status in ACTIVE:
            ContainerJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=True).update(
                cancel_requested_at=timezone.now()
            )
            job.refresh_from_db()
            return job
        if job.transition(JobStatus.CANCELLED, finished_at=timezone.now()):
            return job
        # A worker claimed it meanwhile: look again.


def _changed_meanwhile(job: ContainerJob) -> ValidationError:
    return ValidationError({"status": f"job changed meanwhile; it is now {job.status}"})


def _queue_again(job: ContainerJob, attempts: int, **fields) -> None:
    """Queue a finished job for ``attempts`` more attempts, writing ``fields`` in the same
    UPDATE; refused if another process moved it first."""
    with transaction.atomic():
        moved = job.transition(
            JobStatus.QUEUED,
            max_attempts=job.attempts + attempts,
            cancel_requested_at=None,
            worker=None,
            scheduled_for=timezone.now(),
            **fields,
        )
    if not moved:
        raise _changed_meanwhile(job)


def retry_job(job: ContainerJob, attempts: int = 1) -> ContainerJob:
    """Queue a failed, timed-out or cancelled job again for ``attempts`` more attempts.

    Earlier attempts stay in the job's history; the job's output and error are replaced
    when the new attempt ends.
    """
    if attempts < 1:
        raise ValidationError({"attempts": "must be at least 1"})
    if job.status not in RETRYABLE:
        raise ValidationError(
            {
                "status": f"only failed, timed-out or cancelled jobs can be retried; "
                f"this one is {job.status}"
            }
        )
    _queue_again(job, attempts)
    return job


def _refuse_reroute(job: ContainerJob) -> None:
    if job.status in ACTIVE:
        where = f" on {job.host.name}" if job.host else ""
        raise ValidationError({"status": f"it is {job.status}{where}; cancel it first"})
    if job.status == JobStatus.COMPLETED:
        raise ValidationError({"status": "completed; duplicate it to run again"})


def reroute_job(job: ContainerJob, host: ExecutorHost | str | None) -> ContainerJob:
    """Run ``job`` on ``host`` (a host, a fallback chain, or its name) from now on.

    A job waiting to run (pending, queued, retrying) keeps its status and its place in the
    queue; a failed, timed-out or cancelled one is queued again, as ``retry_job`` does.
    Refused (ValidationError): a job launching or running (cancel it first), a completed
    one (duplicate it to run again), a host that cannot take the job (not active, its
    policy refuses it), and a job another process moved meanwhile.
    """
    target = lookup_host(host)
    if target is None:
        raise ValidationError({"host": "is required: the host or fallback chain to run on"})
    _refuse_reroute(job)
    placement = {"requested_host": target, "host": _placed_on(target)}
    # Checked on a copy: a refused job is left as it was.
    moved = copy.copy(job)
    for field, value in placement.items():
        setattr(moved, field, value)
    _validate(moved)
    if job.status in RETRYABLE:
        _queue_again(job, 1, **placement)
        return job
    # Only while it still waits: a worker that claimed it meanwhile has routed it already.
    if not ContainerJob.objects.filter(pk=job.pk, status=job.status).update(**placement):
        job.refresh_from_db()
        raise _changed_meanwhile(job)
    for field, value in placement.items():
        setattr(job, field, value)
    return job


def duplicate_job(job: ContainerJob, created_by=None) -> ContainerJob:
    """A new queued job with ``job``'s spec (``SPEC_FIELDS``: what to run, where it asked
    to run, limits, confinement, retries, and its environment overrides as stored, sealed
    values still sealed), validated as ``create_job`` validates; none of its outcome.
    """
    spec = {
        field.attname: copy.deepcopy(getattr(job, field.attname))
        for field in ContainerJob._meta.concrete_fields
        if field.name in SPEC_FIELDS
    }
    twin = ContainerJob(
        **spec,
        host=_placed_on(job.requested_host),
        status=JobStatus.QUEUED,
        created_by=created_by,
    )
    _validate(twin)
    twin.save(force_insert=True)
    return twin


def delete_job(job: ContainerJob) -> None:
    """Delete a job, with its attempts, unless a worker holds it (ValidationError: cancel it
    first) or jobs wait for it (ValidationError: they would never learn how it ended).
    Raises ContainerJob.DoesNotExist for a job deleted meanwhile."""
    with transaction.atomic():
        # Locked: a worker cannot claim it between the look and the delete.
        status = (
            ContainerJob.objects.select_for_update()
            .filter(pk=job.pk)
            .values_list("status", flat=True)
            .first()
        )
        if status is None:
            raise ContainerJob.DoesNotExist(f"job {job.pk} no longer exists")
        if status in ACTIVE:
            raise ValidationError({"status": f"it is {status}: cancel it first"})
        waiting = job.dependents.filter(status=JobStatus.PENDING)
        if waiting_ids := [str(pk) for pk in waiting.values_list("pk", flat=True)[:5]]:
            raise ValidationError(
                {"status": f"jobs wait for it ({', '.join(waiting_ids)}): cancel them first"}
            )
        ContainerJob.objects.filter(pk=job.pk).delete()


def release_job(job: ContainerJob) -> ContainerJob:
    """Queue a held (pending) job, created with ``hold=True``, to be run.

    It runs as soon as a worker takes it, or at its ``scheduled_for`` if that is still in
    the future. Raises ValidationError (on ``status``) for a job that is not pending, or
    that another process moved meanwhile (released, cancelled): only one caller releases.
    """
    if job.status != JobStatus.PENDING:
        raise ValidationError(
            {"status": f"only held (pending) jobs can be released; this one is {job.status}"}
        )
    if waits_for := job.waits_for(most=5):
        raise ValidationError(
            {
                "status": f"it waits for jobs it depends on ({waits_for}): workers queue it "
                "once they have all completed"
            }
        )
    now = timezone.now()
    # The row's own scheduled_for decides, in the same UPDATE: a time set meanwhile (the
    # admin's change page edits held jobs) is kept if it is still ahead.
    moved = job.transition(
        JobStatus.QUEUED,
        scheduled_for=Case(
            When(scheduled_for__gt=now, then=F("scheduled_for")), default=Value(now)
        ),
    )
    if not moved:
        raise _changed_meanwhile(job)
    # transition() set the expression on the instance: read back what was written.
    job.refresh_from_db(fields=["scheduled_for"])
    return job


def wait_for_job(job: ContainerJob, timeout: float | None = None, interval: float = 0.2):
    """Block until the job ends (or ``timeout`` seconds pass); returns it refreshed.

    On PostgreSQL the job's ending wakes the caller at once (a notification); elsewhere the
    job is looked at every ``interval`` seconds. A database restart meanwhile is waited out
    for up to ``DATABASE_RETRY_SECONDS``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with notify.job_endings(job.pk, poll=interval) as pause:
        look_again(job)
        while not job.is_terminal:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job.pk} still {job.status} after {timeout} s")
            pause(left)
            look_again(job)
    return job


logger = logging.getLogger(__name__)

# How often a follower looks at a job that has not started (or cannot be streamed).
FOLLOW_POLL_SECONDS = 0.5


def stored_output(job: ContainerJob, streams=("stdout", "stderr")) -> Iterator[str]:
    """The output a worker stored for ``job``: each stream's text, a line apart."""
    texts = [getattr(job, stream) for stream in streams if getattr(job, stream)]
    for number, text in enumerate(texts, start=1):
        yield text
        if number < len(texts) and not text.endswith("\n"):
            yield "\n"


def follow_output(
    job: ContainerJob,
    poll: float = FOLLOW_POLL_SECONDS,
    say: Callable[[str], None] = logger.info,
) -> Iterator[str]:
    """What ``job`` prints (stdout and stderr together), as text, as it is printed, until
    it ends, through all its attempts. A job that has not started is waited for, and so is
    its next attempt. When its host stops answering (an engine restarting, say), the job is
    waited for and read on from where it was once the host answers again. A job that has
    ended, or that its executor cannot stream (cleaned up already, or seen only by another
    process), gives its stored output once it ends. ``say`` hears why nothing comes for a
    while.

    Bytes are decoded as they are stored (``decode_output``), a character cut between two
    chunks decoded whole.
    """
    job = _started(job, poll, say)
    while not job.is_terminal:
        if not job.host or not job.get_execution_identifier():
            yield from stored_output(wait_for_job(job, interval=poll))
            return
        execution = _FollowedExecution(job)
        yield from execution.follow(poll, say)
        yield from execution.rest()
        moved_on = execution.moved_on(poll, say)
        if moved_on is None:  # nothing recorded its end: no worker holds the job now
            return
        if moved_on.is_terminal:
            yield from execution.ending(moved_on, say)
            return
        why = f" ({moved_on.last_error.splitlines()[0]})" if moved_on.last_error else ""
        say(f"Attempt {execution.attempt} of job {job.pk} ended{why}; following the next.")
        job = _started(moved_on, poll, say)
    yield from stored_output(job)


def _started(job: ContainerJob, poll: float, say: Callable[[str], None]) -> ContainerJob:
    """``job`` once it runs or has ended, refreshed."""
    if not job.is_terminal and job.status != JobStatus.RUNNING:
        say(f"Waiting for job {job.pk} to start (it is {job.status})...")
    while not job.is_terminal and job.status != JobStatus.RUNNING:
        time.sleep(poll)
        look_again(job)
    return job


def look_again(job: ContainerJob) -> None:
    """``job.refresh_from_db()`` for a waiter or a follower: through a database restart (a
    read, safe to repeat) for up to ``DATABASE_RETRY_SECONDS``."""
    retry_transient(job.refresh_from_db, f"following job {job.pk}")


# How long a follower waits, once an execution has ended, for the job's record to show it.
ENDING_WAIT_SECONDS = 10.0


class _FollowedExecution:
    """One attempt's execution, followed: its output is given once, in order, whatever
    breaks its stream, by counting the bytes given and skipping them when reading again."""

    def __init__(self, job: ContainerJob):
        assert job.host is not None
        self.job = job
        self.attempt = job.attempts
        self.execution_id = job.get_execution_identifier()
        self.executor = job.host.get_executor()
        self.given = 0  # bytes of its output given so far
        self.pending = b""  # the start of a character cut at the end of a chunk
        self.last_line = LastLine("\n")
        self.unsure = False  # the stream broke off: what was given may be short

    def follow(self, poll: float, say: Callable[[str], None]) -> Iterator[str]:
        """Its output until it has ended, or until the job's record shows it no longer
        runs (a worker stopped it, or gave it up with its host)."""
        away = False  # its host did not answer the last time it was asked
        while True:
            try:
                for text in self._read_on():
                    if away:
                        say(f"Job {self.job.pk}'s host answers again; reading on.")
                        away = False
                    yield text
                self.unsure = False
                if self.executor.status(self.execution_id) != RUNNING:
                    return
            except ExecutorError as error:
                self.unsure = True
                if not away:
                    say(f"Cannot read job {self.job.pk} from its host ({error}); waiting.")
                away = True
            # Its stream broke off while it runs, or its host is away: read on after a while.
            time.sleep(poll)
            if not self._still_running():
                return

    def _read_on(self) -> Iterator[str]:
        seen = 0
        for chunk in self.executor.stream_logs(self.execution_id, follow=True):
            fresh = chunk[max(0, self.given - seen) :]
            seen += len(chunk)
            if fresh:
                self.given += len(fresh)
                complete, self.pending = split_incomplete_utf8(self.pending + fresh)
                if complete:
                    yield self.last_line.feed(decode_output(complete))

    def _still_running(self) -> bool:
        job = self.job
        look_again(job)
        return job.status == JobStatus.RUNNING and job.get_execution_identifier() == (
            self.execution_id
        )

    def moved_on(self, poll: float, say: Callable[[str], None]) -> ContainerJob | None:
        """The job once its record no longer shows this execution running (ended, or on
        to its next attempt). While a worker holds the job that is waited for, however long
        the worker takes (it follows an unreachable host for ``ENGINE_OUTAGE_GRACE``);
        otherwise for ``ENDING_WAIT_SECONDS``, then None."""
        deadline = time.monotonic() + ENDING_WAIT_SECONDS
        with notify.job_endings(self.job.pk, poll=poll) as pause:
            while self._still_running():
                if time.monotonic() >= deadline:
                    if self.job.worker_id is None:
                        return None
                    say(f"Job {self.job.pk}'s execution has ended; waiting for its worker.")
                    deadline = math.inf
                pause(min(poll, max(0.0, deadline - time.monotonic())))
        return self.job

    def rest(self) -> Iterator[str]:
        """A character left cut at the very end of its output, as it is."""
        if self.pending:
            yield self.last_line.feed(decode_output(self.pending))
            self.pending = b""

    def ending(self, job: ContainerJob, say: Callable[[str], None]) -> Iterator[str]:
        """What the ended job's record holds that was not given: all of it when nothing
        of its last execution was, else the last lines without a newline a stream leaves
        out (Docker's often does; its executor gives them back while the container is
        there, and the worker may have removed it first)."""
        if job.get_execution_identifier() != self.execution_id:
            say(f"Attempt {job.attempts} of job {job.pk} ran meanwhile; its output:")
            yield from stored_output(job)
            return
        if self.given == 0:
            yield from stored_output(job)
            return
        if self.unsure:
            say(
                f"Its host was away, so some of it may be missing here: "
                f"`manage_container_job logs {job.pk}` prints it whole."
            )
        yield from self.last_line.unseen(
            stored.rpartition("\n")[2] for stored in (job.stdout, job.stderr)
        )

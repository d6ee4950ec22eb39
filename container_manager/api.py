"""The Python API: create a job in one call, wait for it, release, cancel or retry it.

The CLI and the admin are thin layers over these functions.
"""

import time

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from . import envfile, limits
from . import secrets as sealing
from .fields import NUL_MESSAGE, short_repr
from .models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost
from .routing import check_routable
from .states import ACTIVE, TERMINAL, JobStatus


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


def _with_secrets(env: dict, secrets: dict) -> dict:
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


def create_job(
    image: str,
    command: list[str] | None = None,
    *,
    host: ExecutorHost | str | None = None,
    env: dict[str, str] | None = None,
    env_template: EnvironmentVariableTemplate | str | None = None,
    hold: bool = False,
    secrets: dict[str, str] | None = None,
    **fields,
) -> ContainerJob:
    """Validate and save a job, queued to run (or pending, with ``hold=True``).

    ``env`` values of variables whose names match ``SECRET_ENV_PATTERNS`` are stored sealed
    (encrypted); ``secrets`` are variables stored sealed whatever their names.
    ``fields`` are any other ContainerJob fields (name, memory_limit, cpu_limit,
    timeout_seconds, priority, scheduled_for, max_attempts, working_dir, created_by).
    Raises ValidationError naming each bad field; nothing is saved then.
    """
    requested = _lookup(ExecutorHost, host, "host")
    env = dict(env or {})
    errors = {}
    if secrets:
        try:
            env = _with_secrets(env, secrets)
        except ValidationError as error:
            errors["secrets"] = error.messages
    job = ContainerJob(
        image=image,
        # A tuple is as good as a list; a string is not an argv and fails validation.
        command=list(command) if isinstance(command, list | tuple) else (command or []),
        requested_host=requested,
        # Where it runs is routing's choice at launch; a named host is that choice already.
        host=requested if requested is not None and not requested.member_names else None,
        environment_template=_lookup(EnvironmentVariableTemplate, env_template, "env_template"),
        environment_overrides=env,
        status=JobStatus.PENDING if hold else JobStatus.QUEUED,
        **fields,
    )
    try:
        job.full_clean()
        check_routable(job)
    except ValidationError as error:
        found = error.update_error_dict({})
        if "requested_host" in found:  # the argument is called host here
            found["host"] = found.pop("requested_host")
        raise ValidationError({**found, **errors}) from None
    if errors:
        raise ValidationError(errors)
    job.save(force_insert=True)
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


def retry_job(job: ContainerJob, attempts: int = 1) -> ContainerJob:
    """Queue a failed, timed-out or cancelled job again for ``attempts`` more attempts.

    Earlier attempts stay in the job's history; the job's output and error are replaced
    when the new attempt ends.
    """
    if attempts < 1:
        raise ValidationError({"attempts": "must be at least 1"})
    if job.status not in TERMINAL - {JobStatus.COMPLETED}:
        raise ValidationError(
            {
                "status": f"only failed, timed-out or cancelled jobs can be retried; "
                f"this one is {job.status}"
            }
        )
    with transaction.atomic():
        moved = job.transition(
            JobStatus.QUEUED,
            max_attempts=job.attempts + attempts,
            cancel_requested_at=None,
            worker=None,
            scheduled_for=timezone.now(),
        )
    if not moved:
        raise ValidationError({"status": f"job changed meanwhile; it is now {job.status}"})
    return job


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
        raise ValidationError({"status": f"job changed meanwhile; it is now {job.status}"})
    # transition() set the expression on the instance: read back what was written.
    job.refresh_from_db(fields=["scheduled_for"])
    return job


def wait_for_job(job: ContainerJob, timeout: float | None = None, interval: float = 0.2):
    """Block until the job ends (or ``timeout`` seconds pass); returns it refreshed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job.refresh_from_db()
    while not job.is_terminal:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job.pk} still {job.status} after {timeout} s")
        time.sleep(interval)
        job.refresh_from_db()
    return job

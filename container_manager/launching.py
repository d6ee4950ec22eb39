"""From a job to a launch: the one place an attempt's launch description is made.

``launch_spec`` checks the container policy (it may have changed since the job was made),
unseals the job's secrets and computes its confinement, once per attempt; ``launch`` hands
that spec to the host's executor and makes sure no error it raises quotes a secret value.
Executors see only the spec (``spec.LaunchSpec``), never the job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import logs, policy
from .exceptions import LaunchError, SecretError
from .models import RegistryCredential
from .secrets import MASK
from .spec import LaunchSpec, RegistryAuth

if TYPE_CHECKING:
    from .executors.base import BaseExecutor
    from .models import ContainerJob


def launch_spec(job: ContainerJob) -> LaunchSpec:
    """The description of the job's current attempt on its host.

    Raises ``PolicyViolation`` for what the policy refuses (nothing is started), and
    ``LaunchError`` naming a secret that no configured key decrypts.
    """
    policy.check_job(job)
    try:
        env = job.get_environment()
    except SecretError as error:
        raise LaunchError(str(error)) from None
    shown = job.get_environment_display()
    # Only a claimed job is launched, and claiming routes it to a host (queue.claim_jobs).
    assert job.host is not None, f"job {job.pk} is launched without a host"
    return LaunchSpec(
        job_id=str(job.pk),
        attempt=job.attempts,
        host=job.host.name,
        name=job.name,
        image=job.image,
        command=tuple(job.command or ()),
        env=env,
        secret_names=frozenset(key for key, value in shown.items() if value == MASK),
        working_dir=job.working_dir or None,
        memory_mb=job.memory_limit,
        cpus=job.cpu_limit,
        timeout_seconds=job.timeout_seconds,
        confinement=policy.confinement(job),
        gpus=job.gpus,
        registry_auth=registry_auth(job.image),
    )


def registry_auth(image: str) -> RegistryAuth | None:
    credential = RegistryCredential.for_image(image)
    if credential is None:
        return None
    try:
        return credential.auth()
    except SecretError as error:
        raise LaunchError(str(error)) from None


def launch(job: ContainerJob, executor: BaseExecutor) -> str:
    """Start the job's current attempt with ``executor``; record and return the execution id."""
    spec = launch_spec(job)
    logs.bind(secrets=tuple(spec.secret_values))  # masked in whatever is logged about the job
    try:
        execution_id = executor.launch(spec)
    except Exception as error:
        if (scrubbed := scrub_error(error, spec)) is not error:
            raise scrubbed from None
        raise
    job.set_execution_identifier(execution_id)
    logs.bind(execution_id=execution_id)
    return execution_id


def scrub_error(error: Exception, spec: LaunchSpec) -> Exception:
    """``error`` without the clear values of the spec's secrets, to raise instead of it.

    A backend may quote what it rejected (Docker: ``invalid environment variable: =...``).
    Such values are replaced by ``MASK`` in the message and the chained errors that carried
    them are dropped; an error whose text cannot be cleaned is replaced by one that says so.
    """
    values = spec.secret_values
    if not values or not any(
        value in str(link) or value in repr(link.args) for link in _chain(error) for value in values
    ):
        return error

    def scrub(text: str) -> str:
        for value in values:
            text = text.replace(value, MASK)
        return text

    error.args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in error.args)
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True
    if any(value in str(error) for value in values):
        return LaunchError(
            f"launching failed with {type(error).__name__}; its message quoted a secret value "
            "of the job's environment and is not shown"
        )
    return error


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__

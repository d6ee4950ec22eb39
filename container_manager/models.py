"""What the app stores: where jobs run (hosts), what they run (jobs), and what happened
(attempts, workers). Status moves are checked by the state machine in ``states``.
"""

import math
import shlex
import uuid
import zoneinfo
from contextlib import nullcontext
from datetime import UTC, timedelta
from hashlib import sha256
from secrets import token_urlsafe
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlsplit

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import envfile, fields, limits, policy, secrets, signals, webhook_body
from .conf import setting
from .exceptions import ExecutorError
from .executors import Health, executor_for, get_executor_class, validate_executor_type
from .output import storable
from .spec import HostSpec, RegistryAuth
from .states import ACTIVE, FAILURES, TERMINAL, InvalidTransition, JobStatus, check_transition
from .units import backoff

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


def recheck_delay(failures: int) -> float:
    """Seconds before a host is checked again: ``HEALTH_CHECK_INTERVAL`` while it is healthy,
    and after ``failures`` failed checks in a row a pause growing from HEALTH_RECHECK_BASE."""
    if not failures:
        return setting("HEALTH_CHECK_INTERVAL")
    return backoff(failures, setting("HEALTH_RECHECK_BASE"), setting("HEALTH_RECHECK_MAX"))


class HostLoad(TypedDict):
    """What ``ExecutorHostQuerySet.with_load`` adds to each host."""

    load: int


class ExecutorHostQuerySet(models.QuerySet):
    def with_load(self) -> "models.QuerySet[HostWithLoad]":
        """Hosts annotated with ``load``: the jobs launching or running on each, counted
        across all workers. The one place a host's load is computed.

        A subquery per host over ``cm_job_status_host_idx`` reads only the few active jobs;
        a join would walk every job the host ever ran (a second per million)."""
        active = (
            ContainerJob.objects.filter(host=models.OuterRef("pk"), status__in=ACTIVE)
            .order_by()
            .values("host")
            .annotate(jobs=models.Count("*"))
            .values("jobs")
        )
        return self.annotate(load=Coalesce(models.Subquery(active), 0))

    def due_for_check(self):
        """Active hosts whose next health check has come (never checked: at once)."""
        return self.filter(is_active=True).filter(
            models.Q(next_health_check_at__isnull=True)
            | models.Q(next_health_check_at__lte=timezone.now())
        )

    def take_check(self, host) -> bool:
        """Reserve ``host``'s due check for the caller: across all workers, one takes it."""
        failures = host.health_failures + (host.health_status == ExecutorHost.Health.UNHEALTHY)
        later = timezone.now() + timedelta(seconds=recheck_delay(failures))
        return bool(
            self.filter(pk=host.pk, next_health_check_at=host.next_health_check_at).update(
                next_health_check_at=later
            )
        )

    def mark_unreachable(self, host, message: str) -> bool:
        """Take ``host`` out of routing after a call to it failed; a recheck brings it back.

        Many attempts may fail at once in one outage: only the first marks it.
        """
        now = timezone.now()
        return bool(
            self.filter(pk=host.pk)
            .exclude(health_status=ExecutorHost.Health.UNHEALTHY)
            .update(
                health_status=ExecutorHost.Health.UNHEALTHY,
                health_message=storable(message),
                last_health_check=now,
                health_failures=1,
                next_health_check_at=now + timedelta(seconds=recheck_delay(1)),
            )
        )


class ExecutorHost(fields.CheckedModel):
    """A place jobs run: a Docker engine, a cloud project, a cluster, or the mock executor."""

    class Health(models.TextChoices):
        UNKNOWN = "unknown", "Unknown"
        HEALTHY = "healthy", "Healthy"
        UNHEALTHY = "unhealthy", "Unhealthy"

    name = models.CharField(max_length=100, unique=True)
    executor_type = models.CharField(
        max_length=50,
        validators=[validate_executor_type],
        help_text="A registered executor type: docker, mock, or one added in settings.",
    )
    connection_string = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where the backend is, e.g. unix:///var/run/docker.sock or tcp://host:2376. "
        "Blank: the backend's own default (DOCKER_HOST for Docker).",
    )
    tls_verify = models.BooleanField(default=True, help_text="Verify the server's certificate.")
    tls_ca_cert = models.CharField("TLS CA certificate path", max_length=500, blank=True)
    tls_client_cert = models.CharField("TLS client certificate path", max_length=500, blank=True)
    tls_client_key = models.CharField("TLS client key path", max_length=500, blank=True)
    executor_config = fields.BoundedJSONField(
        default=dict, blank=True, help_text="Executor-specific options (see the README)."
    )
    is_active = models.BooleanField(default=True)
    weight = fields.PositiveIntegerField(
        default=100, help_text="Routing preference: higher weights get more jobs."
    )
    max_concurrent_jobs = fields.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    labels = fields.BoundedJSONField(default=dict, blank=True)
    policy = fields.BoundedJSONField(
        default=dict,
        blank=True,
        help_text="Tightens the container policy for this host (see the README, Security).",
    )
    allow_insecure = models.BooleanField(
        default=False,
        help_text="Allow plain, unauthenticated tcp:// to a non-loopback address. Dangerous: "
        "whoever reaches that port controls the engine.",
    )
    health_status = models.CharField(max_length=20, choices=Health, default=Health.UNKNOWN)
    health_message = models.TextField(blank=True)
    last_health_check = models.DateTimeField(null=True, blank=True)
    health_failures = models.PositiveIntegerField(
        default=0, editable=False, help_text="Health checks failed in a row."
    )
    next_health_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ExecutorHostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.executor_type})"

    def clean(self):
        if not isinstance(self.executor_config, dict):
            raise ValidationError({"executor_config": "must be a JSON object"})
        if not isinstance(self.labels, dict):
            raise ValidationError({"labels": "must be a JSON object"})
        # Per field, its messages: strings, and the ValidationErrors update_error_dict adds.
        errors: dict[str, list[Any]] = {}
        # JSON nested too deep is its field's own error (BoundedJSONField) and is not looked
        # into further: a message quoting it with repr() would recurse away.
        if not fields.json_depth_error(self.policy):
            try:
                policy.validate_host_policy(self.policy)
            except ValidationError as error:
                errors["policy"] = error.messages
        try:
            executor_class = get_executor_class(self.executor_type)
        except KeyError:
            executor_class = None  # reported by the field's own validator
        if executor_class is not None:
            if not fields.json_depth_error(self.executor_config):
                try:
                    executor_class.validate_config(self.executor_config)
                except ValidationError as error:
                    errors["executor_config"] = error.messages
            try:
                executor_class.validate_host(self.spec())  # e.g. Docker: the remote-engine rule
            except ValidationError as error:
                errors = error.update_error_dict(errors)
            if "executor_config" not in errors and (problems := self._member_problems()):
                errors["executor_config"] = problems
        if errors:
            raise ValidationError(errors)

    @property
    def member_names(self) -> list[str]:
        """The hosts this one routes its jobs to, in order (a fallback chain); else none."""
        try:
            executor_class = get_executor_class(self.executor_type)
        except KeyError:
            return []
        config = self.executor_config if isinstance(self.executor_config, dict) else {}
        return executor_class.member_names(config)

    def _member_problems(self) -> list[str]:
        names = self.member_names
        if not names:
            return []
        found = {host.name: host for host in ExecutorHost.objects.filter(name__in=names)}
        problems = [f"no host named {name!r}" for name in names if name not in found]
        problems += [
            f"{name!r} routes to other hosts itself; a chain's members must run jobs"
            for name, host in found.items()
            if name == self.name or host.member_names
        ]
        return problems

    def get_executor(self):
        """This host's executor, shared by its jobs in this process (see ``executor_for``)."""
        try:
            return executor_for(self.spec())
        except KeyError:
            validate_executor_type(self.executor_type)
            raise

    def spec(self) -> HostSpec:
        """This host as executors see it: plain values, no model."""
        return HostSpec(
            name=self.name,
            executor_type=self.executor_type,
            connection_string=self.connection_string,
            tls_verify=self.tls_verify,
            tls_ca_cert=self.tls_ca_cert,
            tls_client_cert=self.tls_client_cert,
            tls_client_key=self.tls_client_key,
            allow_insecure=self.allow_insecure,
            config=self.executor_config if isinstance(self.executor_config, dict) else {},
            labels=self.labels if isinstance(self.labels, dict) else {},
        )

    def check_health(self):
        """Ask the backend whether it can run jobs, and remember the answer."""
        try:
            health = self.get_executor().health_check()
        except (ExecutorError, ValidationError) as error:
            health = Health(False, str(error))
        self.record_health(health.healthy, health.message)
        return health

    def record_health(self, healthy: bool, message: str) -> None:
        now = timezone.now()
        self.health_status = self.Health.HEALTHY if healthy else self.Health.UNHEALTHY
        self.health_message = storable(message)
        self.last_health_check = now
        self.health_failures = 0 if healthy else self.health_failures + 1
        self.next_health_check_at = now + timedelta(seconds=recheck_delay(self.health_failures))
        self.save(
            update_fields=[
                "health_status",
                "health_message",
                "last_health_check",
                "health_failures",
                "next_health_check_at",
            ]
        )


if TYPE_CHECKING:
    # A host from ``ExecutorHost.objects.with_load()``.
    HostWithLoad = WithAnnotations[ExecutorHost, HostLoad]


def validate_webhook_url(value):
    """Only http(s) URLs with a host: a webhook must not reach files or other schemes. And
    only once deliveries can be signed: a receiver must be able to tell them from forgeries."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(
            f"must be an http:// or https:// URL with a host, not {fields.short_repr(value)}"
        )
    if not setting("WEBHOOK_SECRET"):
        raise ValidationError(
            "cannot be used: the WEBHOOK_SECRET setting, which signs each delivery, is not set "
            "(see the README, Webhooks)"
        )


class EnvironmentVariableTemplate(fields.CheckedModel):
    """A reusable set of environment variables; jobs add their own overrides on top."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    environment_variables = models.TextField(
        blank=True,
        help_text="One KEY=value per line; blank lines and # comments are ignored; "
        "values may contain '='.",
    )
    webhook_url = models.URLField(
        max_length=2000,
        blank=True,
        validators=[validate_webhook_url],
        help_text="POSTed to when a job using this template ends, unless the job names its own.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        try:
            env = envfile.parse_env_text(self.environment_variables)
        except ValidationError as error:
            raise ValidationError({"environment_variables": error.messages}) from error
        if problem := limits.env_size_error(env):
            raise ValidationError({"environment_variables": problem})
        if problems := secrets.sealed_value_errors(env):
            raise ValidationError({"environment_variables": problems})

    def save(self, *args, **kwargs):
        # Secret lines are stored sealed (KEY=cmsecret:v1:...); see container_manager.secrets.
        self.environment_variables = secrets.seal_env_text(self.environment_variables)
        super().save(*args, **kwargs)

    def get_environment(self) -> dict[str, str]:
        """The variables as stored: secret values stay sealed (ContainerJob unseals them)."""
        return envfile.parse_env_text(self.environment_variables)


def image_registry(image: str) -> str:
    """The registry an image reference is pulled from (``docker.io`` when it names none)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


class RegistryCredential(fields.CheckedModel):
    """How to log in to a private registry; used for every image pulled from it.

    The password is stored sealed (see ``secrets``) and never shown; executors receive it in
    the launch spec of a job whose image comes from this registry.
    """

    registry = models.CharField(
        max_length=255,
        unique=True,
        help_text="As images name it: registry.example.com, 127.0.0.1:5000, ghcr.io.",
    )
    username = models.CharField(max_length=255)
    password = models.TextField(help_text="Stored encrypted; never shown again.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["registry"]

    def __str__(self):
        return f"{self.username}@{self.registry}"

    def save(self, *args, **kwargs):
        if self.password and not secrets.is_sealed(self.password):
            self.password = secrets.seal(self.password, f"the password of {self.registry}")
        super().save(*args, **kwargs)

    def auth(self) -> RegistryAuth:
        """The clear credentials, for the executor (raises SecretError naming the registry)."""
        return RegistryAuth(
            registry=self.registry,
            username=self.username,
            password=secrets.unseal(self.password, f"the password of {self.registry}"),
        )

    @classmethod
    def for_image(cls, image: str) -> "RegistryCredential | None":
        return cls.objects.filter(registry=image_registry(image)).first()


class Worker(models.Model):
    """A running ``process_container_jobs``; its heartbeat says it is alive."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"{self.hostname}:{self.pid}"


class HousekeepingTaskQuerySet(models.QuerySet):
    def take(self, name: str, every: timedelta) -> bool:
        """Whether the caller runs the task ``name`` now: true for one caller across all
        workers once it is due, which moves it ``every`` later (a conditional update, as
        ``ExecutorHostQuerySet.take_check``)."""
        now = timezone.now()
        task, _ = self.get_or_create(name=name, defaults={"next_run_at": now})
        if task.next_run_at > now:
            return False
        return bool(
            self.filter(pk=task.pk, next_run_at=task.next_run_at).update(
                next_run_at=now + every, last_run_at=now
            )
        )

    def give_back(self, name: str) -> None:
        """Make the task ``name`` due again now: its taker stopped before the end."""
        self.filter(name=name).update(next_run_at=timezone.now())


class HousekeepingTask(models.Model):
    """A chore the workers share, such as the daily retention: when it is next due."""

    name = models.CharField(max_length=100, unique=True)
    next_run_at = models.DateTimeField()
    last_run_at = models.DateTimeField(null=True, blank=True)

    objects = HousekeepingTaskQuerySet.as_manager()

    def __str__(self):
        return self.name


def validate_command(value):
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise ValidationError('must be a list of strings (an argv), e.g. ["echo", "hi"]')
    # NUL is refused before validators run, by BoundedJSONField.validate.
    if problem := limits.command_size_error(value):
        raise ValidationError(problem)


def validate_overrides(value):
    envfile.validate_env_mapping(value, "environment overrides")
    # Before unsealing: each sealed value costs a decryption. With a template, see clean().
    if problem := limits.env_size_error(value):
        raise ValidationError(problem)
    if problems := secrets.sealed_value_errors(value):
        raise ValidationError(problems)


def default_timeout():
    return setting("DEFAULT_TIMEOUT_SECONDS")


def default_max_attempts():
    return setting("DEFAULT_MAX_ATTEMPTS")


def default_retry_on():
    return list(setting("DEFAULT_RETRY_ON"))


RETRYABLE_FAILURES = ("launch_error", "exit_code", "timeout", "executor_error", "worker_lost")


def validate_retry_on(value):
    if not isinstance(value, list) or not all(kind in RETRYABLE_FAILURES for kind in value):
        raise ValidationError(
            f"must be a list drawn from: {', '.join(RETRYABLE_FAILURES)}; "
            f"got {fields.short_repr(value)}"
        )


def as_job_id(value) -> uuid.UUID | None:
    """``value`` (a job, a UUID, or its text) as a job id; None when it is not one."""
    if isinstance(value, ContainerJob):
        return value.pk
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


class ContainerJobQuerySet(models.QuerySet):
    def identified_by(self, identifier: str) -> "ContainerJobQuerySet":
        """The job ``identifier`` names: its id, or the execution id of its current or of an
        earlier attempt. Each is looked up in its own index (an OR of them would not be)."""
        ids = set(self.filter(execution_id=identifier).values_list("pk", flat=True)[:10])
        ids.update(
            JobAttempt.objects.filter(execution_id=identifier).values_list("job", flat=True)[:10]
        )
        if (job_id := as_job_id(identifier)) is not None:  # else only execution ids
            ids.add(job_id)
        return self.filter(pk__in=ids)

    def without_output(self) -> "ContainerJobQuerySet":
        """Jobs with their stored stdout and stderr left unloaded (megabytes each, at most),
        for code that moves jobs along without reading what they printed."""
        return self.defer("stdout", "stderr")


class ContainerJob(fields.CheckedModel):
    """One unit of work: an image and a command to run as a container, and what came of it.

    ``execution_id`` is the single identifier of what an executor started for the current
    (or last) attempt, whatever the executor.
    """

    Status = JobStatus

    objects = ContainerJobQuerySet.as_manager()

    # The status as last read from or written to the database (None: not known).
    _loaded_status: str | None

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, blank=True)

    # What to run.
    image = models.CharField(max_length=500)
    command = fields.BoundedJSONField(
        default=list,
        blank=True,
        validators=[validate_command],
        help_text="An argv list; empty runs the image's default command.",
    )
    working_dir = models.CharField(max_length=500, blank=True)
    environment_template = models.ForeignKey(
        EnvironmentVariableTemplate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="jobs",
    )
    environment_overrides = fields.BoundedJSONField(
        default=dict, blank=True, validators=[validate_overrides]
    )
    memory_limit = fields.PositiveIntegerField(
        "memory limit (MB)",
        null=True,
        blank=True,
        # The upper bounds are the container policy's (policy.py), checked there.
        validators=[MinValueValidator(4)],
    )
    cpu_limit = models.FloatField(
        "CPU limit (cores)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01)],
    )
    gpus = fields.PositiveIntegerField(
        "GPUs",
        default=0,
        help_text="Accelerators the job needs (at most MAX_GPUS); a host that has none refuses it.",
    )
    timeout_seconds = fields.PositiveIntegerField(
        default=default_timeout, validators=[MinValueValidator(1)]
    )

    # How it is confined. Each loosening must be allowed by the container policy.
    run_as_user = models.CharField(
        max_length=100, blank=True, help_text="user[:group] to run as; blank: the image's."
    )
    read_only_root = models.BooleanField("read-only root filesystem", default=False)
    privileged = models.BooleanField(default=False)
    host_network = models.BooleanField(default=False)
    host_pid = models.BooleanField("host PID namespace", default=False)
    capabilities = fields.BoundedJSONField(
        default=list, blank=True, help_text='Extra Linux capabilities, e.g. ["NET_ADMIN"].'
    )
    mounts = fields.BoundedJSONField(
        default=list,
        blank=True,
        help_text='Bind mounts: [{"source": "/host/path", "target": "/in/container", '
        '"read_only": true}].',
    )

    # Where and when. Routing reads what the job asks for and writes where it runs.
    requested_host = models.ForeignKey(
        ExecutorHost,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="requested_jobs",
        help_text="Run on this host (or this fallback chain's first fit host); blank: routing "
        "picks a fit host.",
    )
    executor_type = models.CharField(
        max_length=50, blank=True, help_text="Routing: only hosts of this executor type."
    )
    host_labels = fields.BoundedJSONField(
        default=dict,
        blank=True,
        help_text='Routing: only hosts whose labels include these, e.g. {"gpu": "a100"}.',
    )
    host = models.ForeignKey(
        ExecutorHost,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="jobs",
        help_text="Where the current (or last) attempt runs: chosen by routing at launch.",
    )
    priority = fields.IntegerField(
        default=0,
        validators=[MinValueValidator(-1_000_000), MaxValueValidator(1_000_000)],
        help_text="Higher runs first.",
    )
    scheduled_for = models.DateTimeField(
        default=timezone.now, help_text="Not started before this time."
    )
    depends_on = models.ManyToManyField(
        "self",
        symmetrical=False,
        related_name="dependents",
        blank=True,
        help_text="Jobs that must complete first: this one waits (pending) until they all "
        "have, and fails unrun if one of them fails, times out or is cancelled.",
    )
    webhook_url = models.URLField(
        max_length=2000,
        blank=True,
        validators=[validate_webhook_url],
        help_text="POSTed to (signed) when the job ends; see the README, Webhooks.",
    )
    # Where the job came from, when a schedule or an array made it.
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    scheduled_run_at = models.DateTimeField(
        null=True, blank=True, help_text="The due time of its schedule this job runs for."
    )
    array = models.ForeignKey(
        "JobArray", null=True, blank=True, on_delete=models.CASCADE, related_name="members"
    )
    array_index = models.PositiveIntegerField(null=True, blank=True)
    max_attempts = fields.PositiveIntegerField(
        default=default_max_attempts, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    retry_on = fields.BoundedJSONField(
        default=default_retry_on,
        blank=True,
        validators=[validate_retry_on],
        help_text="Which failures get another attempt while attempts remain.",
    )

    # What happened.
    status = models.CharField(max_length=20, choices=JobStatus, default=JobStatus.QUEUED)
    execution_id = models.CharField(
        max_length=255, blank=True, help_text="What the executor started: one opaque id."
    )
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_seconds = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    failure_kind = models.CharField(
        max_length=20,
        blank=True,
        help_text="Why the last attempt failed (launch_error, exit_code, timeout, "
        "executor_error, worker_lost, policy, dependency); blank when it did not fail.",
    )
    worker = models.ForeignKey(
        Worker, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("cancel_containerjob", "Can cancel container jobs"),
            ("retry_containerjob", "Can retry container jobs"),
            ("reveal_secrets", "Can reveal secret environment values"),
        ]
        indexes = [
            # Claiming reads queued jobs best first; a partial index stays small however
            # many finished jobs the table keeps.
            models.Index(
                fields=["-priority", "scheduled_for", "created_at"],
                condition=models.Q(status="queued"),
                name="cm_job_ready_idx",
            ),
            # Host loads, orphan and retry lookups: the few jobs in a given status.
            models.Index(fields=["status", "host"], name="cm_job_status_host_idx"),
            # Operators look jobs up by what the executor calls them (show, logs, search).
            models.Index(fields=["execution_id"], name="cm_job_execution_idx"),
            # The job list, newest first, reads one page of a table that may hold millions.
            models.Index(fields=["-created_at"], name="cm_job_created_idx"),
            # The queue overview: what finished in the last hour, by status, from the index.
            models.Index(fields=["finished_at", "status"], name="cm_job_finished_idx"),
            # ... and the latest failures, however rare among millions of completed jobs.
            models.Index(
                fields=["-finished_at"],
                condition=models.Q(status__in=["failed", "timed_out"]),
                name="cm_job_failures_idx",
            ),
        ]
        constraints = [
            # Exactly one job per due time of a schedule, however many workers fire it.
            models.UniqueConstraint(
                fields=["schedule", "scheduled_run_at"],
                condition=models.Q(schedule__isnull=False),
                name="cm_job_one_run_per_due_time",
            ),
            models.UniqueConstraint(
                fields=["array", "array_index"],
                condition=models.Q(array__isnull=False),
                name="cm_job_one_member_per_index",
            ),
        ]

    def __str__(self):
        return self.name or f"{self.image} {self.command_line()}".strip()

    def command_line(self) -> str:
        """The command as one shell-quoted line, for people ("" when it is empty)."""
        command = self.command
        if not (isinstance(command, list) and all(isinstance(arg, str) for arg in command)):
            # Only a row written around validation: it must not break a page listing it.
            return f"(not an argv: {fields.short_repr(command)})"
        return shlex.join(command)

    @classmethod
    def from_db(cls, db, field_names, values, *args, **kwargs):
        # Django 6.1 passes ``fetch_mode`` too; 5.2 does not.
        instance = super().from_db(db, field_names, values, *args, **kwargs)
        instance._loaded_status = instance.__dict__.get("status")
        return instance

    # -- the one execution identifier ------------------------------------------------

    def set_execution_identifier(self, execution_id: str) -> None:
        self.execution_id = execution_id

    def get_execution_identifier(self) -> str:
        return self.execution_id

    # -- derived -----------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    def _stored_environment(self) -> dict[str, str]:
        env = self.environment_template.get_environment() if self.environment_template else {}
        env.update(self.environment_overrides or {})
        return env

    def get_environment(self) -> dict[str, str]:
        """The clear environment, for the executor: the only place secrets are unsealed.

        Raises ``secrets.SecretError`` (naming the variable) when a secret cannot be decrypted.
        """
        return secrets.unseal_environment(self._stored_environment())

    def get_environment_display(self, reveal: bool = False) -> dict[str, str]:
        """Template and overrides as shown to people: secret values masked (``••••••``).

        ``reveal=True`` gives the clear values; only for a user allowed to see them
        (``container_manager.reveal_secrets``) who asked.
        """
        if reveal:
            return self.get_environment()
        template = self.environment_template
        # Leniently parsed: a template saved with bad lines must not stop a job being shown.
        env = dict(secrets.env_text_items(template.environment_variables)) if template else {}
        env.update(self.environment_overrides or {})
        return secrets.mask_environment(env)

    # -- validation --------------------------------------------------------------------

    def clean(self):
        errors: dict[str, str | list[str]] = {}
        # A blank or missing image is reported by the field itself.
        if self.image and not self.image.strip():
            errors["image"] = "is required (e.g. alpine:3.20)"
        elif isinstance(self.image, str) and any(c.isspace() for c in self.image):
            errors["image"] = f"{fields.short_repr(self.image)} contains whitespace"
        if isinstance(self.cpu_limit, float) and math.isnan(self.cpu_limit):
            errors["cpu_limit"] = "must be a number of cores, not NaN"
        requested = self.requested_host if self.requested_host_id else None
        if requested is not None and not requested.is_active:
            errors["requested_host"] = f"host {requested.name!r} is not active"
        if not isinstance(self.host_labels, dict):
            errors["host_labels"] = 'must be a JSON object of label values, e.g. {"gpu": "a100"}'
        elif self.executor_type:
            try:
                validate_executor_type(self.executor_type)
            except ValidationError as error:
                errors["executor_type"] = error.messages
        errors.update(self._template_size_errors())
        try:
            # What the job may do where it is asked to run (see policy.py); a routed job is
            # checked against each candidate host's policy again when it is routed.
            on = requested if requested is not None and not requested.member_names else None
            policy.check_job(self, on)
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                # Too deep is the field's own error already (BoundedJSONField).
                if not fields.json_depth_error(getattr(self, field, None)):
                    errors.setdefault(field, messages)
        if errors:
            raise ValidationError(errors)

    def _template_size_errors(self) -> dict[str, str]:
        """The template pushing the environment over the limits (the overrides alone are
        checked by their field's validator)."""
        overrides = self.environment_overrides
        template = self.environment_template
        if template is None or not isinstance(overrides, dict) or limits.env_size_error(overrides):
            return {}
        # Read leniently, as for display: a template saved around validation must not crash.
        env = {**dict(secrets.env_text_items(template.environment_variables)), **overrides}
        if problem := limits.env_size_error(env, "with the template, the environment"):
            return {"environment_template": problem}
        return {}

    # -- status ------------------------------------------------------------------------

    def save(self, *args, **kwargs):
        old = None if self._state.adding else getattr(self, "_loaded_status", None)
        known = self._state.adding or old is not None  # the status it moves from is known
        if known:
            check_transition(old, self.status)
        if self.status == JobStatus.QUEUED and self.queued_at is None:
            self.queued_at = timezone.now()
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "environment_overrides" in update_fields:
            # Secret values are stored sealed; see container_manager.secrets.
            self.environment_overrides = secrets.seal_environment(self.environment_overrides)
        url = self._webhook_owed(self.status) if known and old != self.status else ""
        with transaction.atomic(savepoint=False) if url else nullcontext():
            super().save(*args, **kwargs)
            if url:
                self._write_webhook_delivery(url)
        if known and old != self.status:
            signals.announce(self, old, self.status)
        self._loaded_status = self.status

    def transition(self, new_status: str, *, will_retry: bool = False, **fields) -> bool:
        """Move to ``new_status`` and write ``fields`` in one conditional UPDATE.

        The update only applies if the row still has the status this instance last saw, so
        two processes can never both make a move from the same state. Returns False when
        another process changed the job first (this instance is then refreshed).

        A move that ends the job writes its webhook delivery, if it has a webhook, in the
        same transaction; ``will_retry``: this failure goes on to ``retrying`` in the
        caller's transaction, so it does not end the job.
        """
        check_transition(self.status, new_status)
        if new_status == JobStatus.QUEUED:
            fields.setdefault("queued_at", timezone.now())
        url = "" if will_retry else self._webhook_owed(new_status)
        if not url:
            # One conditional UPDATE is atomic by itself: no transaction or savepoint around
            # it (inside a caller's transaction that would be two more round trips per move).
            return self._move(new_status, fields)
        with transaction.atomic(savepoint=False):
            moved = self._move(new_status, fields)
            if moved:
                self._write_webhook_delivery(url)
        return moved

    def _move(self, new_status: str, fields: dict[str, Any]) -> bool:
        updated = ContainerJob.objects.filter(pk=self.pk, status=self.status).update(
            status=new_status, **fields
        )
        if not updated:
            self.refresh_from_db()
            return False
        old_status = self.status
        self.status = self._loaded_status = new_status
        for name, value in fields.items():
            setattr(self, name, value)
        signals.announce(self, old_status, new_status)
        return True

    # -- webhooks ----------------------------------------------------------------------

    @property
    def webhook_target(self) -> str:
        """Where the job's ending is POSTed: its own URL, else its template's ("": nowhere)."""
        if self.webhook_url or self.environment_template_id is None:
            return self.webhook_url
        template = self.environment_template
        return template.webhook_url if template is not None else ""

    def _webhook_owed(self, new_status: str) -> str:
        """The URL a move to ``new_status`` owes a delivery to ("" for a move that does not
        end the job, and for a job without a webhook: its moves cost nothing more)."""
        return self.webhook_target if new_status in TERMINAL else ""

    def _write_webhook_delivery(self, url: str) -> None:
        """The outbox row of this ending; the caller's transaction makes it one with it."""
        WebhookDelivery.objects.create(
            job=self, url=url, job_status=self.status, body=webhook_body.build(self)
        )
        webhook_body.announce_written()

    def waits_for(self, most: int) -> str:
        """The jobs this one depends on that have not completed (at most ``most``), as
        ``<id> (<status>), ...``; empty when there is none."""
        unfinished = self.depends_on.exclude(status=JobStatus.COMPLETED)[:most]
        return ", ".join(f"{other.pk} ({other.status})" for other in unfinished)

    def refresh_from_db(self, *args, **kwargs):
        super().refresh_from_db(*args, **kwargs)
        self._loaded_status = self.status


class JobAttempt(models.Model):
    """One try at running a job: where, as what, and how it ended."""

    job = models.ForeignKey(ContainerJob, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveIntegerField()
    host = models.ForeignKey(ExecutorHost, null=True, on_delete=models.SET_NULL)
    worker = models.ForeignKey(Worker, null=True, blank=True, on_delete=models.SET_NULL)
    # Indexed: an operator may have only an earlier attempt's id (from a log, a dashboard).
    execution_id = models.CharField(max_length=255, blank=True, db_index=True)
    routing = models.TextField(blank=True, help_text="Why this host was chosen.")
    tries = fields.BoundedJSONField(
        default=list,
        blank=True,
        help_text="Hosts this attempt tried first, and why each could not launch it.",
    )
    status = models.CharField(max_length=20, choices=JobStatus, default=JobStatus.LAUNCHING)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="cm_attempt_unique_number")
        ]

    def __str__(self):
        return f"{self.job_id} attempt {self.number}"

    @property
    def known_execution_id(self) -> str:
        """This attempt's execution id. The record is written when the attempt ends; until
        then the execution of the attempt under way is the job's own ``execution_id``."""
        if self.execution_id or self.finished_at is not None:
            return self.execution_id
        job = self.job
        running = job.status == JobStatus.RUNNING and job.attempts == self.number
        return job.execution_id if running else ""


def validate_time_zone(value):
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"{fields.short_repr(value)} is not a time zone name (e.g. Europe/Berlin, UTC)"
        ) from None


def validate_cron(value):
    try:
        CronSim(value, timezone.now())
    except CronSimError as error:
        raise ValidationError(
            f"{fields.short_repr(value)} is not a cron expression: {error} "
            "(five fields: minute hour day-of-month month day-of-week, e.g. */15 * * * *)"
        ) from None


class Schedule(fields.CheckedModel):
    """Jobs made from one spec on a cron expression (in a time zone) or at an interval.

    Each due time makes exactly one job (``ContainerJob.scheduled_run_at``, unique per
    schedule); see ``container_manager.scheduling`` for how due times are fired.
    """

    class MissedRuns(models.TextChoices):
        RUN_ONCE = "run_once", "Run once for all the missed times"
        SKIP = "skip", "Skip them; wait for the next due time"

    class Concurrency(models.TextChoices):
        ALLOW = "allow", "Allow runs to overlap"
        FORBID = "forbid", "Skip a due time while the previous run is unfinished"
        REPLACE = "replace", "Cancel the unfinished run and start the new one"

    name = models.CharField(max_length=100, unique=True)
    cron = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_cron],
        help_text="Five fields: minute hour day-of-month month day-of-week, e.g. 0 3 * * *.",
    )
    interval_seconds = fields.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Instead of a cron expression: every this many seconds.",
    )
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="The time zone the cron expression is read in (daylight saving included).",
    )
    job_spec = fields.BoundedJSONField(
        help_text="What each run is: create_job's arguments, e.g. "
        '{"image": "alpine:3.20", "command": ["echo", "hi"], "host": "docker-local"}.',
    )
    missed_runs = models.CharField(max_length=20, choices=MissedRuns, default=MissedRuns.RUN_ONCE)
    starting_deadline_seconds = fields.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A due time this many seconds past is missed (empty: never too late).",
    )
    concurrency = models.CharField(max_length=20, choices=Concurrency, default=Concurrency.ALLOW)
    successful_runs_to_keep = fields.PositiveIntegerField(
        default=3, help_text="Completed runs kept; older ones are deleted."
    )
    failed_runs_to_keep = fields.PositiveIntegerField(
        default=1, help_text="Failed, timed-out or cancelled runs kept; older ones are deleted."
    )
    paused = models.BooleanField(default=False)
    next_run_at = models.DateTimeField(
        null=True, blank=True, help_text="The next due time (set from the cron or interval)."
    )
    last_run_at = models.DateTimeField(
        null=True, blank=True, help_text="The due time of the last run it made."
    )
    last_skip_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # Workers look for due schedules every second.
            models.Index(
                fields=["next_run_at"], condition=models.Q(paused=False), name="cm_schedule_due_idx"
            )
        ]

    def __str__(self):
        return self.name

    def clean(self):
        if bool(self.cron) == (self.interval_seconds is not None):
            raise ValidationError(
                {"cron": "give either a cron expression or an interval in seconds (not both)"}
            )

    @property
    def every(self) -> str:
        """When it runs, for people: the cron expression and its zone, or the interval."""
        if self.cron:
            return f"{self.cron} ({self.time_zone})"
        return f"every {self.interval_seconds} s"

    def next_due_after(self, moment):
        """The first due time strictly after ``moment`` (aware), in UTC."""
        if self.interval_seconds is not None:
            # Intervals count from the schedule's cursor, so due times keep their phase.
            step = timedelta(seconds=self.interval_seconds)
            anchor = self.next_run_at or moment
            if anchor > moment:
                return anchor
            return anchor + step * ((moment - anchor) // step + 1)
        return next(self._cron_times_after(moment))

    def latest_due_at_or_before(self, moment):
        """The last due time at or before ``moment``, from the cursor on (which is a due
        time); None while the cursor is ahead of ``moment``."""
        latest = self.next_run_at
        if latest is None or latest > moment:
            return None
        if self.interval_seconds is not None:
            step = timedelta(seconds=self.interval_seconds)
            return latest + step * ((moment - latest) // step)
        # Forward from the cursor: a step per due time missed (about 6 µs each), where
        # cronsim's reverse iteration can skip a due time in a repeated (DST) hour.
        for due in self._cron_times_after(latest):
            if due > moment:
                break
            latest = due
        return latest

    def _cron_times_after(self, moment):
        """The cron expression's due times after ``moment``, in UTC, always increasing.

        Read in the schedule's time zone. Started in the second pass of a repeated hour
        (DST ends), cronsim can answer with a time of the first pass: skipped here."""
        last = moment
        for due in CronSim(self.cron, moment.astimezone(zoneinfo.ZoneInfo(self.time_zone))):
            due = due.astimezone(UTC)
            if due > last:
                last = due
                yield due

    def last_run(self) -> "ContainerJob | None":
        """The job made for the latest due time (None: none yet, or deleted since)."""
        return self.runs.without_output().order_by("-scheduled_run_at").first()

    def upcoming(self, count: int, after=None) -> list:
        """The next ``count`` due times: from the cursor on, or those after ``after``."""
        if after is None and self.next_run_at is None:
            return []
        moment = self.next_run_at if after is None else self.next_due_after(after)
        moments = [moment]
        while len(moments) < count:
            moment = self.next_due_after(moment)
            moments.append(moment)
        return moments[:count]


class JobArrayQuerySet(models.QuerySet):
    def with_counts(self) -> "models.QuerySet[JobArray]":
        """Arrays annotated with ``<status>_count`` for each status, for lists of arrays."""
        return self.annotate(
            **{
                f"{status}_count": models.Count("members", filter=models.Q(members__status=status))
                for status in JobStatus.values
            }
        )

    def full(self) -> "JobArrayQuerySet":
        """Arrays with as many members launching or running as their ``parallelism``.

        Counted from the active jobs (a worker's few) rather than from each array's members,
        so the question costs the same however many arrays and members there are."""
        at_limit = (
            ContainerJob.objects.filter(status__in=ACTIVE, array__parallelism__isnull=False)
            .order_by()
            .values("array", "array__parallelism")
            .annotate(active=models.Count("*"))
            .filter(active__gte=models.F("array__parallelism"))
            .values("array")
        )
        return self.filter(pk__in=at_limit)

    def free_slots(self, array_ids) -> dict[uuid.UUID, int]:
        """How many more members each array among ``array_ids`` that has a ``parallelism``
        may launch now. Their rows are locked until the transaction ends, so no other claim
        counts and adds to these arrays meanwhile.

        The members are counted by a statement of their own, after the lock is held: counted
        in the locking statement, they would be as of its snapshot, taken before any wait for
        the lock (PostgreSQL's READ COMMITTED), and miss the claims it waited for."""
        limits = dict(
            self.filter(pk__in=array_ids, parallelism__isnull=False)
            .order_by("pk")  # one order for every claim: no deadlock between them
            .select_for_update()
            .values_list("pk", "parallelism")
        )
        if not limits:
            return {}
        active = dict(
            ContainerJob.objects.filter(array__in=limits, status__in=ACTIVE)
            .order_by()
            .values("array")
            .annotate(active=models.Count("*"))
            .values_list("array", "active")
        )
        return {pk: most - active.get(pk, 0) for pk, most in limits.items()}


IN_PROGRESS = "in progress"


class ArraySummary(TypedDict):
    """What ``JobArray.summary`` says about an array's members."""

    size: int
    counts: dict[str, int]  # members by status, every status present
    done: bool  # every member has ended
    outcome: str  # "in progress"; once done "completed", "failed" or "cancelled"


def array_outcome(counts: dict[str, int]) -> str:
    """How an array whose members are in ``counts`` went: "in progress" until every member
    has ended; then "failed" if one failed or timed out, else "cancelled" if one was
    cancelled, else "completed"."""
    if any(counts[status] for status in JobStatus.values if status not in TERMINAL):
        return IN_PROGRESS
    if any(counts[status] for status in FAILURES):
        return "failed"
    if counts[JobStatus.CANCELLED]:
        return "cancelled"
    return "completed"


class JobArray(models.Model):
    """N jobs of one spec, told apart by ``JOB_ARRAY_INDEX`` (0 to N-1) in their environment.

    ``parallelism`` is enforced where jobs are claimed (``queue.claim_jobs``)."""

    objects = JobArrayQuerySet.as_manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, blank=True)
    size = models.PositiveIntegerField()
    parallelism = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many members run at once (empty: no limit)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "job array"

    def __str__(self):
        return self.name or f"array {self.pk}"

    def summary(self) -> ArraySummary:
        """Its members counted by status, whether all have ended, and how it went."""
        if hasattr(self, "queued_count"):  # from JobArray.objects.with_counts()
            counts = {status: getattr(self, f"{status}_count") for status in JobStatus.values}
        else:
            counts = dict.fromkeys(JobStatus.values, 0)
            by_status = self.members.order_by().values("status").annotate(n=models.Count("*"))
            counts.update(by_status.values_list("status", "n"))
        outcome = array_outcome(counts)
        return {
            "size": self.size,
            "counts": counts,
            "done": outcome != IN_PROGRESS,
            "outcome": outcome,
        }


class WebhookDelivery(models.Model):
    """A POST owed to a URL about a job that ended: written with the ending, in the same
    transaction, and delivered at least once by a worker (``container_manager.webhooks``)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(
        ContainerJob, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    url = models.URLField(max_length=2000)
    job_status = models.CharField(max_length=20, choices=JobStatus)
    body = models.TextField(help_text="The JSON sent, as it was when the job ended.")
    status = models.CharField(max_length=20, choices=Status, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    history = fields.BoundedJSONField(
        default=list, blank=True, help_text="Each try: when, how long, and the answer or error."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="cm_webhook_due_idx",
            )
        ]

    def __str__(self):
        return f"{self.url} for job {self.job_id} ({self.status})"

    @property
    def last_answer(self) -> str:
        """How the latest try went, for people: ``HTTP 503``, an error, or both ("": none yet)."""
        if not self.history:
            return ""
        last = self.history[-1]
        said = [f"HTTP {last['status_code']}"] if "status_code" in last else []
        return ": ".join([*said, *([last["error"]] if last.get("error") else [])])


__all__ = [
    "RegistryCredential",
    "ContainerJob",
    "EnvironmentVariableTemplate",
    "ExecutorHost",
    "HousekeepingTask",
    "InvalidTransition",
    "JobArray",
    "JobAttempt",
    "JobStatus",
    "Schedule",
    "WebhookDelivery",
    "Worker",
]


class QueueOverview(ContainerJob):
    """The queue overview's place in the admin index: a page about jobs, not a table."""

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "queue overview"
        default_permissions = ()


class ApiTokenQuerySet(models.QuerySet):
    def issue(self, user, name: str = "") -> tuple["ApiToken", str]:
        """A new token for ``user``: (the row, the token itself). Only its hash is stored:
        the token is shown once, to whoever asked for it."""
        token = TOKEN_PREFIX + token_urlsafe(32)
        row = self.create(user=user, name=name, key_hash=ApiToken.hash(token), prefix=token[:12])
        return row, token

    def user_for(self, token: str):
        """The active user ``token`` authenticates, or None; marks the token used."""
        found = self.select_related("user").filter(key_hash=ApiToken.hash(token)).first()
        if found is None or not found.user.is_active:
            return None
        self.filter(pk=found.pk).update(last_used_at=timezone.now())
        return found.user


# Tokens start with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "cmj_"


class ApiToken(models.Model):
    """A bearer token of the HTTP API: whoever presents it acts as its user, with that
    user's permissions. Stored hashed (SHA-256: the token is 32 random bytes, so a slow
    hash would add nothing); delete the row to revoke it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="container_api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, help_text="What it is for.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        max_length=12, editable=False, help_text="The token's first characters, to tell it apart."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(token: str) -> str:
        return sha256(token.encode()).hexdigest()

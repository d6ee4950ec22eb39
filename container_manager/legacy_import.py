"""Carrying django-container-manager 1.0.14's hosts, templates and jobs over to ours.

Our 0002 migration sets its tables aside as ``container_manager_legacy_*`` (see
``legacy_schema``); ``import_legacy`` reads them and writes ours in one transaction, and
says per row what it could not carry over. Jobs are written as they were (status, output,
times): no signal, webhook or state-machine move fires for a job that ended long ago.
"""

import shlex
from dataclasses import dataclass, field

from django.apps.registry import Apps
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction

from . import secrets
from .envfile import parse_env_text
from .executors import get_executor_class
from .legacy_schema import LEGACY_TABLES, TABLES_1X, LegacySchemaError
from .models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, JobAttempt
from .serializers import validation_error_lines
from .states import ACTIVE, JobStatus

# The old statuses and ours. Jobs the old worker held (launching, running) are not followed:
# nothing here knows whether their containers still run.
STATUSES = {
    "pending": JobStatus.PENDING,  # held: released by hand (`manage_container_job release`)
    "queued": JobStatus.QUEUED,
    "retrying": JobStatus.QUEUED,
    "launching": JobStatus.FAILED,
    "running": JobStatus.FAILED,
    "completed": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "timeout": JobStatus.TIMED_OUT,
    "cancelled": JobStatus.CANCELLED,
}
WAITING_1X = {"pending", "queued", "retrying"}
# Old retries were of launches only.
RETRY_ON = ["launch_error", "executor_error"]
# Old docker executor_config keys that repeat a host column: dropped when they agree.
SUPERSEDED_CONFIG_KEYS = {"base_url": "connection_string", "tls_verify": "tls_verify"}
BATCH = 500

# The set-aside tables, read through models of their own registry (never migrated).
_apps = Apps()


class _Legacy(models.Model):
    class Meta:
        abstract = True
        apps = _apps
        app_label = "container_manager_legacy"
        managed = False


class LegacyHost(_Legacy):  # noqa: DJ008 - read once, never shown
    objects: "models.Manager[LegacyHost]" = models.Manager()

    name = models.CharField(max_length=100)
    host_type = models.CharField(max_length=10)
    connection_string = models.CharField(max_length=500)
    tls_enabled = models.BooleanField()
    tls_verify = models.BooleanField()
    is_active = models.BooleanField()
    auto_pull_images = models.BooleanField()
    executor_type = models.CharField(max_length=50)
    executor_config = models.JSONField()
    max_concurrent_jobs = models.IntegerField()
    weight = models.IntegerField()
    created_at = models.DateTimeField()

    class Meta(_Legacy.Meta):
        db_table = LEGACY_TABLES["container_manager_executorhost"]


class LegacyTemplate(_Legacy):  # noqa: DJ008 - read once, never shown
    objects: "models.Manager[LegacyTemplate]" = models.Manager()

    name = models.CharField(max_length=100)
    description = models.TextField()
    environment_variables_text = models.TextField()
    created_at = models.DateTimeField()
    created_by_id = models.IntegerField(null=True)

    class Meta(_Legacy.Meta):
        db_table = LEGACY_TABLES["container_manager_environmentvariabletemplate"]


class LegacyJob(_Legacy):  # noqa: DJ008 - read once, never shown
    objects: "models.Manager[LegacyJob]" = models.Manager()

    id = models.UUIDField(primary_key=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=20)
    description = models.TextField()
    docker_image = models.CharField(max_length=500)
    command = models.TextField()
    working_directory = models.CharField(max_length=500)
    memory_limit = models.IntegerField(null=True)
    cpu_limit = models.FloatField(null=True)
    timeout_seconds = models.IntegerField()
    network_configuration = models.JSONField()
    override_environment = models.TextField()
    execution_id = models.CharField(max_length=255)
    exit_code = models.IntegerField(null=True)
    started_at = models.DateTimeField(null=True)
    completed_at = models.DateTimeField(null=True)
    executor_metadata = models.JSONField()
    max_memory_usage = models.BigIntegerField(null=True)
    cpu_usage_percent = models.FloatField(null=True)
    stdout_log = models.TextField()
    stderr_log = models.TextField()
    docker_log = models.TextField()
    created_at = models.DateTimeField()
    created_by_id = models.IntegerField(null=True)
    environment_template_id = models.BigIntegerField(null=True)
    docker_host_id = models.BigIntegerField()
    last_error = models.TextField(null=True)  # noqa: DJ001 - as the old column
    last_error_at = models.DateTimeField(null=True)
    launched_at = models.DateTimeField(null=True)
    max_retries = models.IntegerField()
    priority = models.IntegerField()
    queued_at = models.DateTimeField(null=True)
    retry_strategy = models.CharField(max_length=50, null=True)  # noqa: DJ001 - as the old column
    scheduled_for = models.DateTimeField(null=True)

    class Meta(_Legacy.Meta):
        db_table = LEGACY_TABLES["container_manager_containerjob"]
        ordering = ["created_at", "id"]


@dataclass
class ImportReport:
    """What was carried over, and each row's loss, one line per thing not carried."""

    hosts: int = 0
    templates: int = 0
    jobs: int = 0
    notes: list[str] = field(default_factory=list)

    def note(self, row: str, message: str) -> None:
        self.notes.append(f"{row}: {message}")


def _messages(error: ValidationError) -> str:
    return "; ".join(validation_error_lines(error))


# -- refusing what cannot be imported ----------------------------------------------------


def check_importable() -> None:
    """Raise LegacySchemaError unless the set-aside tables are there, as 1.0.14 left them,
    and none of their rows is in ours yet (a second import)."""
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        missing = [legacy for legacy in LEGACY_TABLES.values() if legacy not in tables]
        if missing:
            raise LegacySchemaError(
                f"no {', '.join(missing)}: nothing to import. Our migrations set "
                "django-container-manager's tables aside there: run `manage.py migrate` "
                "first; if they were dropped after an import, it is done."
            )
        for table, legacy in LEGACY_TABLES.items():
            description = connection.introspection.get_table_description(cursor, legacy)
            found = {column.name for column in description}
            if found != TABLES_1X[table]:
                lacking = ", ".join(sorted(TABLES_1X[table] - found)) or "none"
                extra = ", ".join(sorted(found - TABLES_1X[table])) or "none"
                raise LegacySchemaError(
                    f"{legacy} is not django-container-manager 1.0.14's {table}: columns "
                    f"missing: {lacking}; unknown: {extra}. Nothing was changed."
                )
    hosts = ExecutorHost.objects.filter(name__in=LegacyHost.objects.values("name"))
    templates = EnvironmentVariableTemplate.objects.filter(
        name__in=LegacyTemplate.objects.values("name")
    )
    jobs = ContainerJob.objects.filter(pk__in=LegacyJob.objects.values("id"))
    clashes = [
        f"{qs.count()} {what} (e.g. {qs.first()!s})"
        for what, qs in (("hosts", hosts), ("templates", templates), ("jobs", jobs))
        if qs.exists()
    ]
    if clashes:
        raise LegacySchemaError(
            "already imported, or clashing with rows made since: ours already has "
            + ", ".join(clashes)
            + " of the container_manager_legacy_* tables (by host and template name, by job "
            "id). Nothing was changed."
        )


# -- hosts and templates -----------------------------------------------------------------


def _host_config(old: LegacyHost, report: ImportReport, row: str) -> dict:
    config = dict(old.executor_config) if isinstance(old.executor_config, dict) else {}
    for key, column in SUPERSEDED_CONFIG_KEYS.items():
        if key in config:
            value = config.pop(key)
            if value != getattr(old, column):
                report.note(
                    row,
                    f"executor_config {key!r} ({value!r}) dropped: {column} says "
                    f"{getattr(old, column)!r}, and is kept",
                )
    if not old.auto_pull_images:
        # The executor says whether it has pull policies: only Docker's pulls images.
        try:
            get_executor_class(old.executor_type).validate_config(
                {**config, "pull_policy": "never"}
            )
            config["pull_policy"] = "never"
        except (KeyError, ValidationError):
            report.note(row, "auto_pull_images=false not carried: its executor pulls nothing")
    return config


def _import_host(old: LegacyHost, report: ImportReport) -> ExecutorHost | None:
    row = f"host {old.name!r}"
    host = ExecutorHost(
        name=old.name,
        executor_type=old.executor_type,
        connection_string=old.connection_string,
        tls_verify=old.tls_verify,
        is_active=old.is_active,
        weight=old.weight,
        max_concurrent_jobs=old.max_concurrent_jobs,
        executor_config=_host_config(old, report, row),
    )
    # TLS here is by certificate files, which the old host never named.
    tls = "tls_enabled: set tls_ca_cert, tls_client_cert and tls_client_key" * old.tls_enabled
    host.is_active = old.is_active and not tls
    try:
        host.full_clean()
    except ValidationError as error:
        report.note(row, f"not carried over: {_messages(error)}" + (f" ({tls})" if tls else ""))
        return None
    if tls:
        report.note(row, f"carried over inactive: {tls}, then activate it")
    host.save()
    ExecutorHost.objects.filter(pk=host.pk).update(created_at=old.created_at)
    report.hosts += 1
    return host


def _import_template(old: LegacyTemplate, report: ImportReport):
    row = f"template {old.name!r}"
    template = EnvironmentVariableTemplate(
        name=old.name,
        description=old.description,
        environment_variables=old.environment_variables_text,
    )
    try:
        template.full_clean()
    except ValidationError as error:
        report.note(row, f"not carried over: {_messages(error)}")
        return None
    template.save()
    if old.created_by_id is not None:
        report.note(row, "not carried: created_by (templates here have no owner)")
    EnvironmentVariableTemplate.objects.filter(pk=template.pk).update(created_at=old.created_at)
    report.templates += 1
    return template


# -- jobs ----------------------------------------------------------------------------------


def _lost_fields(old: LegacyJob) -> list[str]:
    """Old job fields with a value and no counterpart here."""
    lost = {
        "description": old.description,
        "network_configuration": old.network_configuration,
        "executor_metadata": old.executor_metadata,
        "cpu_usage_percent": old.cpu_usage_percent,
        "docker_log": old.docker_log,
        "last_error_at": old.last_error_at,
        "retry_strategy": old.retry_strategy,
    }
    return [name for name, value in lost.items() if value not in (None, "", [], {})]


def _build_job(old: LegacyJob, hosts: dict, templates: dict, report: ImportReport):
    row = f"job {old.id}"
    status = STATUSES.get(old.status)
    if status is None:
        report.note(row, f"not carried over: unknown status {old.status!r}")
        return None
    try:
        command = shlex.split(old.command)
        environment = parse_env_text(old.override_environment)
    except ValueError as error:  # shlex: unbalanced quotes
        report.note(row, f"not carried over: command {old.command!r}: {error}")
        return None
    except ValidationError as error:
        report.note(row, f"not carried over: override_environment: {_messages(error)}")
        return None
    host = hosts.get(old.docker_host_id)
    launched = bool(old.execution_id or old.started_at or old.launched_at)
    waiting = old.status in WAITING_1X
    if host is None:
        report.note(
            row,
            "its host was not carried over: carried without one"
            + (", held (pending)" if waiting else ""),
        )
        status = JobStatus.PENDING if waiting else status
    last_error = old.last_error or ""
    if old.status in ACTIVE:
        last_error = (
            f"was {old.status} under django-container-manager when it was "
            f"imported; its execution ({old.execution_id or 'none'}) was not "
            f"followed. {last_error}"
        ).strip()
        report.note(row, f"was {old.status}: imported as failed")
    if lost := _lost_fields(old):
        report.note(row, f"not carried: {', '.join(lost)}")
    template = templates.get(old.environment_template_id)
    if old.environment_template_id is not None and template is None:
        report.note(row, "its environment template was not carried over: carried without it")
    job = ContainerJob(
        id=old.id,
        name=old.name,
        image=old.docker_image,
        command=command,
        working_dir=old.working_directory,
        environment_template=template,
        environment_overrides=environment,
        memory_limit=old.memory_limit,
        cpu_limit=old.cpu_limit,
        timeout_seconds=old.timeout_seconds,
        requested_host=host if waiting else None,
        host=host if launched else None,
        priority=old.priority,
        scheduled_for=old.scheduled_for or old.created_at,
        max_attempts=min(max(old.max_retries, 1), 100),
        retry_on=RETRY_ON,
        status=status,
        execution_id=old.execution_id,
        exit_code=old.exit_code,
        stdout=old.stdout_log,
        stderr=old.stderr_log,
        peak_memory_bytes=old.max_memory_usage,
        attempts=1 if launched else 0,
        last_error=last_error,
        created_by_id=old.created_by_id,
        created_at=old.created_at,
        queued_at=old.queued_at,
        started_at=old.started_at or old.launched_at,
        finished_at=old.completed_at,
    )
    try:
        # Status moves are the state machine's; an old job arrives where it was.
        job.full_clean(exclude=["status"], validate_unique=False)
    except ValidationError as error:
        report.note(row, f"not carried over: {_messages(error)}")
        return None
    job.environment_overrides = secrets.seal_environment(job.environment_overrides)
    return job


def _attempt(job: ContainerJob) -> JobAttempt:
    """The one attempt a launched old job had, so its execution id finds it as any other."""
    return JobAttempt(
        job=job,
        number=1,
        host=job.host,
        execution_id=job.execution_id,
        routing="imported from django-container-manager",
        status=job.status,
        exit_code=job.exit_code,
        error=job.last_error,
        started_at=job.started_at or job.created_at,
        finished_at=job.finished_at,
    )


def _import_jobs(hosts: dict, templates: dict, report: ImportReport) -> None:
    batch: list[ContainerJob] = []

    def flush():
        ContainerJob.objects.bulk_create(batch)
        JobAttempt.objects.bulk_create(_attempt(job) for job in batch if job.attempts)
        report.jobs += len(batch)
        batch.clear()

    for old in LegacyJob.objects.iterator(chunk_size=BATCH):
        job = _build_job(old, hosts, templates, report)
        if job is not None:
            batch.append(job)
        if len(batch) >= BATCH:
            flush()
    flush()


# -- the whole import ------------------------------------------------------------------------


def import_legacy(*, dry_run: bool = False) -> ImportReport:
    """Carry the set-aside rows over in one transaction (rolled back when ``dry_run``).

    Raises LegacySchemaError, changing nothing, when there is nothing to import, the tables
    are not 1.0.14's or their rows are already in ours.
    """
    report = ImportReport()
    with transaction.atomic():
        check_importable()
        hosts = {old.pk: _import_host(old, report) for old in LegacyHost.objects.order_by("pk")}
        templates = {
            old.pk: _import_template(old, report) for old in LegacyTemplate.objects.order_by("pk")
        }
        _import_jobs(hosts, templates, report)
        if dry_run:
            transaction.set_rollback(True)
    return report

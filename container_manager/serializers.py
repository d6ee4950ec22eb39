"""Jobs, attempts and hosts as plain data (for JSON), and validation errors as text.

The management command, the admin and any future HTTP API use these, so a job looks the
same everywhere. Secret environment values (see ``container_manager.secrets``) appear only
masked (``••••••``), unless the caller asks for them revealed for a user allowed to see them.
"""

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from .units import iso_time as _time


def attempt_to_dict(attempt) -> dict:
    return {
        "number": attempt.number,
        "status": attempt.status,
        "host": attempt.host.name if attempt.host else None,
        "routing": attempt.routing,
        "tries": list(attempt.tries or []),
        "execution_id": attempt.known_execution_id,
        "exit_code": attempt.exit_code,
        "error": attempt.error,
        "started_at": _time(attempt.started_at),
        "finished_at": _time(attempt.finished_at),
    }


def delivery_to_dict(delivery) -> dict:
    """A webhook delivery as JSON-ready data (its body is what was sent, not repeated)."""
    return {
        "id": delivery.pk,
        "url": delivery.url,
        "job_status": delivery.job_status,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_answer": delivery.last_answer,
        "next_attempt_at": _time(delivery.next_attempt_at),
        "created_at": _time(delivery.created_at),
        "delivered_at": _time(delivery.delivered_at),
        "history": list(delivery.history or []),
    }


def job_to_dict(job, include_output: bool = False, reveal_secrets: bool = False) -> dict:
    """A job as JSON-ready data. ``include_output`` adds the stored stdout and stderr.

    ``environment`` is the job's variables (template and overrides) with secret values
    masked; ``reveal_secrets=True`` shows them in clear: only for a user with
    ``container_manager.reveal_secrets`` who asked.

    For many jobs, fetch them with ``select_related("host", "requested_host",
    "environment_template", "created_by")`` and ``prefetch_related("attempt_set__host",
    "depends_on", "webhook_deliveries")``.
    """
    duration = job.duration
    data = {
        "id": str(job.pk),
        "name": job.name,
        "status": job.status,
        "image": job.image,
        "command": list(job.command or []),
        "working_dir": job.working_dir,
        "environment_template": (
            job.environment_template.name if job.environment_template else None
        ),
        "environment_override_names": sorted(job.environment_overrides or {}),
        "environment": job.get_environment_display(reveal=reveal_secrets),
        "memory_limit_mb": job.memory_limit,
        "cpu_limit": job.cpu_limit,
        "timeout_seconds": job.timeout_seconds,
        "requested_host": job.requested_host.name if job.requested_host else None,
        "executor_type": job.executor_type,
        "host_labels": job.host_labels,
        "host": job.host.name if job.host else None,
        "priority": job.priority,
        "scheduled_for": _time(job.scheduled_for),
        "execution_id": job.get_execution_identifier(),
        "exit_code": job.exit_code,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "retry_on": list(job.retry_on or []),
        "last_error": job.last_error,
        "peak_memory_bytes": job.peak_memory_bytes,
        "cpu_seconds": job.cpu_seconds,
        "cancel_requested_at": _time(job.cancel_requested_at),
        "created_by": job.created_by.get_username() if job.created_by else None,
        "created_at": _time(job.created_at),
        "queued_at": _time(job.queued_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "duration_seconds": duration.total_seconds() if duration is not None else None,
        "depends_on": [str(other.pk) for other in job.depends_on.all()],
        "array": str(job.array_id) if job.array_id else None,
        "array_index": job.array_index,
        "attempt_history": [attempt_to_dict(attempt) for attempt in job.attempt_set.all()],
        "webhook_url": job.webhook_url,
        "webhook_deliveries": [delivery_to_dict(d) for d in job.webhook_deliveries.all()],
    }
    if include_output:
        data["stdout"] = job.stdout
        data["stderr"] = job.stderr
    return data


def array_to_dict(array) -> dict:
    """A job array and its members' summary (``JobArray.summary``) as JSON-ready data."""
    return {
        "id": str(array.pk),
        "name": array.name,
        "parallelism": array.parallelism,
        "created_by": array.created_by.get_username() if array.created_by else None,
        "created_at": _time(array.created_at),
        **array.summary(),
    }


def schedule_to_dict(schedule, upcoming: int = 0) -> dict:
    """A schedule, its last run and (``upcoming``) its next due times, as JSON-ready data.
    Secret values of its job spec stay sealed."""
    last = schedule.last_run()
    return {
        "name": schedule.name,
        "cron": schedule.cron or None,
        "interval_seconds": schedule.interval_seconds,
        "time_zone": schedule.time_zone,
        "job_spec": schedule.job_spec,
        "missed_runs": schedule.missed_runs,
        "starting_deadline_seconds": schedule.starting_deadline_seconds,
        "concurrency": schedule.concurrency,
        "successful_runs_to_keep": schedule.successful_runs_to_keep,
        "failed_runs_to_keep": schedule.failed_runs_to_keep,
        "paused": schedule.paused,
        "next_run_at": None if schedule.paused else _time(schedule.next_run_at),
        "last_run_at": _time(schedule.last_run_at),
        "last_run": {"job_id": str(last.pk), "status": last.status} if last else None,
        "last_skip_reason": schedule.last_skip_reason,
        "upcoming": [_time(moment) for moment in schedule.upcoming(upcoming)] if upcoming else [],
        "created_at": _time(schedule.created_at),
    }


def host_to_dict(host) -> dict:
    """A host as JSON-ready data; ``host`` should come from ``ExecutorHost.objects.with_load()``
    (``running_jobs``: what workers hold on it now)."""
    running = getattr(host, "load", None)
    if running is None:
        running = type(host).objects.with_load().get(pk=host.pk).load
    return {
        "name": host.name,
        "executor_type": host.executor_type,
        "connection_string": host.connection_string,
        "is_active": host.is_active,
        "weight": host.weight,
        "running_jobs": running,
        "max_concurrent_jobs": host.max_concurrent_jobs,
        "labels": host.labels,
        "members": host.member_names,
        "health_status": host.health_status,
        "health_message": host.health_message,
        "health_failures": host.health_failures,
        "last_health_check": _time(host.last_health_check),
        "next_health_check": _time(host.next_health_check_at),
    }


def validation_error_lines(error: ValidationError) -> list[str]:
    """Each problem in ``error`` as ``field: message`` (just the message when it has no field)."""
    if not hasattr(error, "error_dict"):
        return list(error.messages)
    return [
        message if field == NON_FIELD_ERRORS else f"{field}: {message}"
        for field, messages in error.message_dict.items()
        for message in messages
    ]

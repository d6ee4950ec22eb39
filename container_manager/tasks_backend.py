"""A backend for Django's Tasks framework: each enqueued ``@task`` runs in a container.

``task.enqueue(*args, **kwargs)`` makes a job running the project's own image with
``python manage.py run_container_task <payload>``: the container imports the task, calls it,
and prints its return value (JSON) as the last line of its output, after a marker. The job is
the task result: ``get_result(id)`` reads its status, and the return value or the error, from
it. Everything a job has applies: limits, timeouts, retries, routing, the admin and the CLI.

In settings::

    TASKS = {
        "default": {
            "BACKEND": "container_manager.tasks_backend.ContainerTaskBackend",
            "OPTIONS": {
                "IMAGE": "registry.example.com/team/project:2026-11-27",
                # create_job's arguments for every task's job (all optional):
                "JOB": {"host": "docker-local", "memory_limit": 512, "timeout_seconds": 600},
            },
        }
    }

Django 6 has the framework as ``django.tasks``; on Django 5.2 the ``django-tasks`` package
provides the same API as ``django_tasks``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from . import api
from .exceptions import ContainerTaskError
from .models import ContainerJob, JobAttempt, as_job_id
from .states import ACTIVE, JobStatus
from .task_protocol import printed_result

try:
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
except ImportError:  # Django 5.2: the backport
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist

# What the container runs, before the payload: the project's own manage.py.
DEFAULT_COMMAND = ["python", "manage.py", "run_container_task"]


class ContainerTaskBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias, params):
        super().__init__(alias, params)
        self.image = self.options.get("IMAGE", "")
        self.command = list(self.options.get("COMMAND", DEFAULT_COMMAND))
        self.job_options = dict(self.options.get("JOB", {}))

    def validate_task(self, task):
        super().validate_task(task)
        if task.takes_context:
            # The context is a live TaskResult; a container in another process has none.
            raise InvalidTask("tasks run in containers cannot take the task context")

    def enqueue(self, task, args, kwargs):
        self.validate_task(task)
        if not self.image:
            raise InvalidTask(f"TASKS[{self.alias!r}]['OPTIONS']['IMAGE'] is not set")
        payload = {
            "task": task.module_path,
            "args": list(args),
            "kwargs": dict(kwargs),
            "takes_context": task.takes_context,
        }
        options = {
            "name": f"task {task.module_path}",
            "priority": task.priority,
            **self.job_options,
        }
        if task.run_after is not None:
            options["scheduled_for"] = task.run_after
        try:
            job = api.create_job(self.image, [*self.command, json.dumps(payload)], **options)
        except ValidationError as error:
            raise InvalidTask(f"the task's job was refused: {error}") from error
        except TypeError as error:  # a value json cannot carry, named by json itself
            raise InvalidTask(f"the task's arguments cannot be sent: {error}") from error
        return self._result(job, task, payload)

    def get_result(self, result_id):
        job_id = as_job_id(result_id)
        job = ContainerJob.objects.filter(pk=job_id).first() if job_id else None
        payload = _payload(job) if job is not None else None
        if job is None or payload is None:
            raise TaskResultDoesNotExist(result_id)
        task = import_string(payload["task"]).using(priority=job.priority, backend=self.alias)
        return self._result(job, task, payload)

    def _result(self, job: ContainerJob, task, payload: dict[str, Any]) -> TaskResult:
        """The task result ``job`` (a task's job, asked to run ``payload``) stands for."""
        status, value, error = _outcome(job)
        attempts = list(job.attempt_set.order_by("number"))
        # Each attempt that failed, in order; the job's own error stands for its last one.
        failed = [
            attempt
            for attempt in attempts
            if attempt.finished_at is not None
            and attempt.status != JobStatus.COMPLETED
            and not (error and attempt.number == job.attempts)
        ]
        errors = [_attempt_error(attempt) for attempt in failed] + ([error] if error else [])
        result = TaskResult(
            task=task,
            id=str(job.pk),
            status=status,
            enqueued_at=job.queued_at or job.created_at,
            started_at=attempts[0].started_at if attempts else job.started_at,
            finished_at=job.finished_at if status in _ENDED else None,
            last_attempted_at=attempts[-1].started_at if attempts else job.started_at,
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            # One per attempt (the framework counts attempts by them).
            worker_ids=[str(attempt.worker_id or "") for attempt in attempts],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", value)
        return result


_ENDED = {TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED}


def _payload(job: ContainerJob) -> dict[str, Any] | None:
    """What the job was asked to run, if it is a task's job (its argv's last item)."""
    if not job.command:
        return None
    try:
        payload = json.loads(job.command[-1])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "task" in payload else None


# What a task's error is when its container, not its code, failed.
CONTAINER_ERROR = f"{ContainerTaskError.__module__}.{ContainerTaskError.__name__}"


def _attempt_error(attempt: JobAttempt) -> TaskError:
    why = attempt.error or f"exit code {attempt.exit_code}"
    return TaskError(
        exception_class_path=CONTAINER_ERROR,
        traceback=f"attempt {attempt.number} {attempt.status}: {why}",
    )


def _outcome(job: ContainerJob) -> tuple[TaskResultStatus, Any, TaskError | None]:
    """The task's status, return value and error, as the job and its last line tell them."""
    if job.status in ACTIVE:
        return TaskResultStatus.RUNNING, None, None
    if not job.is_terminal:
        return TaskResultStatus.READY, None, None
    printed = printed_result(job.stdout)
    if job.status == JobStatus.COMPLETED and printed and "return_value" in printed:
        return TaskResultStatus.SUCCESSFUL, printed["return_value"], None
    if printed and isinstance(printed.get("error"), dict):
        error = TaskError(
            exception_class_path=str(printed["error"].get("exception_class_path", "")),
            traceback=str(printed["error"].get("traceback", "")),
        )
    else:
        why = job.last_error or "the container printed no result"
        error = TaskError(
            exception_class_path=CONTAINER_ERROR,
            traceback=f"job {job.pk} {job.status}: {why}\n{job.stderr[-4000:]}",
        )
    return TaskResultStatus.FAILED, None, error

"""Django's Tasks framework on the container backend: a ``@task`` runs in a container of the
project's image, and its result comes back through the framework's result API.

On Django 6 the framework is ``django.tasks``; on 5.2, the ``django-tasks`` backport (in the
dev extra), whose API is the same but for the name of one exception.
"""

import json
import platform
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from container_manager.models import ContainerJob, JobAttempt
from container_manager.models import Worker as WorkerRecord
from container_manager.task_protocol import result_line
from container_manager.worker import Worker
from example_project import tasks

try:
    from django.tasks import TaskResultStatus, task
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
except ImportError:  # Django 5.2
    from django_tasks import TaskResultStatus, task
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist

BACKEND = "container_manager.tasks_backend.ContainerTaskBackend"


def container_backend(image="project:1", **job):
    return override_settings(
        TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {"IMAGE": image, "JOB": job}}}
    )


@pytest.fixture
def backend(mock_host):
    with container_backend(host="mock", working_dir="/app", timeout_seconds=120):
        yield


# -- what enqueueing makes, and what results say (no container) ----------------------------


@pytest.mark.django_db
def test_enqueueing_a_task_makes_a_job_of_the_projects_image(backend):
    later = timezone.now() + timedelta(minutes=5)
    result = tasks.add.using(priority=7, run_after=later).enqueue(2, b=3)
    job = ContainerJob.objects.get(pk=result.id)
    assert job.image == "project:1"
    assert job.command[:3] == ["python", "manage.py", "run_container_task"]
    assert json.loads(job.command[3]) == {
        "task": "example_project.tasks.add",
        "args": [2],
        "kwargs": {"b": 3},
        "takes_context": False,
    }
    assert (job.name, job.priority, job.scheduled_for) == (
        "task example_project.tasks.add",
        7,
        later,
    )
    assert (job.working_dir, job.timeout_seconds, job.requested_host.name) == ("/app", 120, "mock")
    assert result.status == TaskResultStatus.READY
    assert not result.is_finished


@pytest.mark.django_db
def test_a_result_reads_the_jobs_status_and_the_printed_value(backend):
    result = tasks.add.enqueue(2, 3)
    ContainerJob.objects.filter(pk=result.id).update(status="running")
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    ContainerJob.objects.filter(pk=result.id).update(
        status="completed",
        finished_at=timezone.now(),
        stdout="noise\n" + result_line({"return_value": {"sum": 5}}) + "\n",
    )
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"sum": 5}
    assert tasks.add.get_result(result.id).return_value == {"sum": 5}


@pytest.mark.django_db
def test_a_job_that_ended_without_a_result_is_a_failed_task(backend):
    result = tasks.add.enqueue(1, 1)
    ContainerJob.objects.filter(pk=result.id).update(
        status="timed_out", last_error="timed out after 120 s; stopped", stderr="last words"
    )
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class_path == "container_manager.exceptions.ContainerTaskError"
    assert "timed_out: timed out after 120 s; stopped" in error.traceback
    assert "last words" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018


def attempted(job_id, number, status, worker, error="", minutes_ago=0):
    at = timezone.now() - timedelta(minutes=minutes_ago)
    ContainerJob.objects.filter(pk=job_id).update(attempts=number)
    return JobAttempt.objects.create(
        job_id=job_id,
        number=number,
        status=status,
        error=error,
        worker=worker,
        started_at=at,
        finished_at=None if status == "running" else at,
    )


@pytest.mark.django_db
def test_each_attempt_is_one_in_the_result_and_each_failed_one_an_error(backend):
    first, second = (WorkerRecord.objects.create(hostname="box", pid=pid) for pid in (1, 2))
    result = tasks.add.enqueue(2, 3)
    outage = "container exited with code 143 around an outage of host docker-local"
    attempted(result.id, 1, "failed", first, error=outage, minutes_ago=3)
    ContainerJob.objects.filter(pk=result.id).update(status="running")
    started = attempted(result.id, 2, "running", second).started_at
    result.refresh()
    assert (result.status, result.attempts) == (TaskResultStatus.RUNNING, 2)
    assert result.last_attempted_at == started
    assert result.worker_ids == [str(first.pk), str(second.pk)]
    (error,) = result.errors
    assert error.traceback == f"attempt 1 failed: {outage}"

    JobAttempt.objects.filter(job_id=result.id, number=2).update(
        status="failed", finished_at=timezone.now(), error="exit code 1"
    )
    ContainerJob.objects.filter(pk=result.id).update(
        status="failed", finished_at=timezone.now(), last_error="exit code 1"
    )
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.traceback.splitlines()[0] for e in result.errors] == [
        f"attempt 1 failed: {outage}",
        f"job {result.id} failed: exit code 1",  # the job's own word on its last attempt
    ]


@pytest.mark.django_db
def test_bad_uses_are_refused_clearly(mock_host):
    no_image = pytest.raises(InvalidTask, match=r"TASKS\['default'\]\['OPTIONS'\]\['IMAGE'\]")
    with container_backend(image=""), no_image:
        tasks.add.enqueue(1, 2)
    bad_limit = pytest.raises(InvalidTask, match="refused: .*memory_limit")
    with container_backend(host="mock", memory_limit=-1), bad_limit:
        tasks.add.enqueue(1, 2)
    with container_backend(host="mock"):
        with pytest.raises(InvalidTask, match="arguments cannot be sent"):
            tasks.add.enqueue(object(), 2)
        with pytest.raises(InvalidTask, match="cannot take the task context"):
            task(takes_context=True)(tasks_with_context)
        with pytest.raises(TaskResultDoesNotExist):
            tasks.add.get_result("not-a-job")
    assert not ContainerJob.objects.exists()


def tasks_with_context(context):
    return None


# -- in a real container -------------------------------------------------------------------


@pytest.fixture
def project_image(docker_engine):
    from tests.project_image import build

    return build(docker_engine)


# Once per Django version: scripts/test runs the real-service tier once on each.
@pytest.mark.django_db(transaction=True)
def test_tasks_run_in_containers_of_the_projects_image(docker_host, project_image):
    with container_backend(
        image=project_image, host=docker_host.name, working_dir="/app", timeout_seconds=120
    ):
        added = tasks.add.enqueue(2, 3)
        where = tasks.where_am_i.enqueue()
        failed = tasks.fail.enqueue("no luck")
        Worker(until_idle=True, poll_interval=0.05).run()
        for result in (added, where, failed):
            result.refresh()

    assert added.status == TaskResultStatus.SUCCESSFUL, ContainerJob.objects.get(pk=added.id).stderr
    assert added.return_value == 5
    # It ran in the container: its host name is the container's, not this machine's.
    assert where.return_value != platform.node()
    assert where.return_value == ContainerJob.objects.get(pk=where.id).execution_id[:12]
    assert failed.status == TaskResultStatus.FAILED
    (error,) = failed.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert "ValueError: no luck" in error.traceback
    assert failed.started_at is not None and failed.finished_at is not None

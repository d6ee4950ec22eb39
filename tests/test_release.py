"""Releasing held jobs: the API, the command line, the admin action, and who may."""

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from container_manager import api
from container_manager.admin import ContainerJobAdmin
from container_manager.models import ContainerJob
from container_manager.states import JobStatus

NOT_PENDING = "status: only held (pending) jobs can be released; this one is {}"


def held(host, **fields):
    return api.create_job("alpine", ["echo", "released"], host=host, hold=True, **fields)


def make_running(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=job.attempts + 1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    return job


def status_of(job):
    return ContainerJob.objects.values_list("status", flat=True).get(pk=job.pk)


def make_user(username, *codenames, staff=False):
    user = User.objects.create_user(username, password="pw", is_staff=staff)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="container_manager", codename__in=codenames
        )
    )
    return User.objects.get(pk=user.pk)  # permissions are cached on the instance


def error_lines(error: ValidationError) -> list[str]:
    return [f"{field}: {m}" for field, messages in error.message_dict.items() for m in messages]


# -- the API -----------------------------------------------------------------------------


def test_release_queues_a_held_job_to_run_now(mock_host):
    job = held(mock_host, scheduled_for=timezone.now() - timedelta(hours=1))
    assert job.status == JobStatus.PENDING and job.queued_at is None
    before = timezone.now()
    released = api.release_job(job)
    assert released is job
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    # A time in the past means "whenever it was held": it runs from now, in its turn.
    assert before <= job.scheduled_for <= timezone.now()
    assert job.queued_at is not None
    assert released.scheduled_for == job.scheduled_for


def test_release_keeps_a_scheduled_time_still_ahead(mock_host):
    later = timezone.now() + timedelta(hours=2)
    job = api.release_job(held(mock_host, scheduled_for=later))
    assert job.scheduled_for == later
    job.refresh_from_db()
    assert (job.status, job.scheduled_for) == (JobStatus.QUEUED, later)


def test_release_keeps_a_scheduled_time_set_meanwhile(mock_host):
    """The row decides, not the caller's copy: an edit made since it was read is kept."""
    job = held(mock_host)
    later = timezone.now() + timedelta(days=1)
    ContainerJob.objects.filter(pk=job.pk).update(scheduled_for=later)
    api.release_job(job)
    assert job.scheduled_for == later
    job.refresh_from_db()
    assert job.scheduled_for == later


@pytest.mark.parametrize("status", ["queued", "running", "cancelled"])
def test_release_refuses_a_job_that_is_not_held(mock_host, status):
    job = api.create_job("alpine", ["true"], host=mock_host)
    if status == "running":
        make_running(job)
    elif status == "cancelled":
        api.cancel_job(job)
    with pytest.raises(ValidationError) as caught:
        api.release_job(job)
    assert error_lines(caught.value) == [NOT_PENDING.format(status)]
    assert status_of(job) == status


def test_only_one_of_two_callers_releases(mock_host):
    job = held(mock_host)
    first, second = ContainerJob.objects.get(pk=job.pk), ContainerJob.objects.get(pk=job.pk)
    api.release_job(first)
    with pytest.raises(ValidationError) as caught:
        api.release_job(second)
    assert error_lines(caught.value) == ["status: job changed meanwhile; it is now queued"]
    assert second.status == JobStatus.QUEUED  # refreshed: the caller sees what happened


def test_a_job_cancelled_meanwhile_is_not_released(mock_host):
    job = held(mock_host)
    api.cancel_job(ContainerJob.objects.get(pk=job.pk))
    with pytest.raises(ValidationError, match="job changed meanwhile; it is now cancelled"):
        api.release_job(job)
    assert status_of(job) == JobStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_released_job_is_run_by_a_worker(mock_host):
    job = held(mock_host)
    later = held(mock_host, scheduled_for=timezone.now() + timedelta(hours=1))
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")
    assert status_of(job) == JobStatus.PENDING  # held: no worker takes it

    cli("release", str(job.pk), str(later.pk))
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.stdout) == ("completed", 0, "mock: echo released\n")
    assert job.attempt_set.count() == 1
    # Released, but not before its time.
    assert status_of(later) == JobStatus.QUEUED


# -- the command line --------------------------------------------------------------------


def cli(*args, stderr=None):
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=stderr or io.StringIO())
    return out.getvalue()


def test_cli_release_prints_each_job(mock_host):
    now_job = held(mock_host)
    later = timezone.now() + timedelta(hours=3)
    later_job = held(mock_host, scheduled_for=later)
    lines = cli("release", str(now_job.pk), str(later_job.pk)).splitlines()
    assert lines[0] == f"Released job {now_job.pk} (status: queued)."
    assert lines[1].startswith(f"Released job {later_job.pk} (status: queued, scheduled for 20")
    assert len(lines) == 2
    assert {status_of(now_job), status_of(later_job)} == {JobStatus.QUEUED}


def test_cli_release_json(mock_host):
    first, second = held(mock_host, name="first"), held(mock_host, name="second")
    data = json.loads(cli("release", str(first.pk), str(second.pk), "--json"))
    assert [(item["id"], item["status"]) for item in data] == [
        (str(first.pk), "queued"),
        (str(second.pk), "queued"),
    ]
    assert data[0]["queued_at"] is not None
    # One job is a list of one: the same shape whatever the number of jobs.
    third = held(mock_host)
    assert [item["id"] for item in json.loads(cli("release", str(third.pk), "--json"))] == [
        str(third.pk)
    ]


def test_cli_release_a_job_given_twice_releases_it_once(mock_host):
    job = held(mock_host)
    out = cli("release", str(job.pk), str(job.pk))
    assert out.splitlines() == [f"Released job {job.pk} (status: queued)."]


def test_cli_release_refuses_a_job_that_is_not_held(mock_host):
    job = make_running(api.create_job("alpine", ["true"], host=mock_host))
    with pytest.raises(CommandError) as caught:
        cli("release", str(job.pk))
    assert str(caught.value) == f"job {job.pk}: {NOT_PENDING.format('running')}"
    assert status_of(job) == JobStatus.RUNNING


def test_cli_release_releases_the_others_and_fails(mock_host):
    first, second = held(mock_host), held(mock_host)
    queued = api.create_job("alpine", ["true"], host=mock_host)
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(
            "manage_container_job", "release", str(first.pk), str(queued.pk), str(second.pk),
            stdout=out,
        )  # fmt: skip
    assert str(caught.value).splitlines() == [
        "1 of 3 jobs not released:",
        f"job {queued.pk}: {NOT_PENDING.format('queued')}",
    ]
    assert out.getvalue().splitlines() == [
        f"Released job {first.pk} (status: queued).",
        f"Released job {second.pk} (status: queued).",
    ]
    assert {status_of(first), status_of(second)} == {JobStatus.QUEUED}


def test_cli_release_json_lists_only_the_released(mock_host):
    job = held(mock_host)
    cancelled = api.cancel_job(held(mock_host))
    out = io.StringIO()
    with pytest.raises(CommandError, match="this one is cancelled"):
        call_command(
            "manage_container_job", "release", "--json", str(job.pk), str(cancelled.pk),
            stdout=out,
        )  # fmt: skip
    assert [item["id"] for item in json.loads(out.getvalue())] == [str(job.pk)]


def test_cli_release_with_an_unknown_id_releases_nothing(mock_host):
    job = held(mock_host)
    with pytest.raises(CommandError, match="no job with id or execution id 'nope'"):
        cli("release", str(job.pk), "nope")
    assert status_of(job) == JobStatus.PENDING


def test_cli_release_needs_a_job(db):
    with pytest.raises(CommandError, match="JOB_ID"):
        cli("release")


def test_cli_release_needs_change_containerjob(mock_host):
    job = held(mock_host)
    make_user("bob", "view_containerjob", "cancel_containerjob", "retry_containerjob")
    with pytest.raises(CommandError) as caught:
        cli("--user", "bob", "release", str(job.pk))
    assert str(caught.value) == (
        "user 'bob' may not release jobs (needs container_manager.change_containerjob)"
    )
    assert status_of(job) == JobStatus.PENDING

    make_user("carol", "change_containerjob")
    cli("release", str(job.pk), "--user", "carol")  # --user after the subcommand too
    assert status_of(job) == JobStatus.QUEUED


# -- the admin ---------------------------------------------------------------------------


def changelist():
    return reverse("admin:container_manager_containerjob_changelist")


def release_action(client, jobs):
    return client.post(
        changelist(),
        {"action": "release_jobs", "_selected_action": [str(job.pk) for job in jobs]},
    )


def offered_actions(client):
    form = client.get(changelist()).context["action_form"]
    return {value for value, _ in form.fields["action"].choices} if form else set()


def messages_of(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_admin_release_action(admin_client, mock_host):
    first = held(mock_host, name="held-1")
    later = timezone.now() + timedelta(hours=1)
    second = held(mock_host, name="held-2", scheduled_for=later)
    running = make_running(api.create_job("alpine", ["true"], host=mock_host, name="busy"))
    response = release_action(admin_client, [first, second, running])
    assert response.status_code == 302
    assert (status_of(first), status_of(second)) == (JobStatus.QUEUED, JobStatus.QUEUED)
    assert ContainerJob.objects.get(pk=second.pk).scheduled_for == later
    assert status_of(running) == JobStatus.RUNNING
    assert messages_of(response) == [
        f"Job busy ({str(running.pk)[:8]}): {NOT_PENDING.format('running')}",
        "Released 2 of 3 selected jobs.",
    ]


def test_admin_release_action_when_nothing_is_held(admin_client, mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host, name="ready")
    response = release_action(admin_client, [job])
    assert messages_of(response) == [
        f"Job ready ({str(job.pk)[:8]}): {NOT_PENDING.format('queued')}",
        "Released 0 of 1 selected job.",
    ]


def test_admin_release_action_needs_change_containerjob(client, mock_host):
    job = held(mock_host)
    viewer = make_user(
        "viewer", "view_containerjob", "cancel_containerjob", "retry_containerjob", staff=True
    )
    client.force_login(viewer)
    offered = offered_actions(client)
    assert "release_jobs" not in offered and {"cancel_jobs", "retry_jobs"} <= offered
    release_action(client, [job])
    assert status_of(job) == JobStatus.PENDING

    client.force_login(make_user("editor", "view_containerjob", "change_containerjob", staff=True))
    assert "release_jobs" in offered_actions(client)
    response = release_action(client, [job])
    assert messages_of(response) == ["Released 1 of 1 selected job."]
    assert status_of(job) == JobStatus.QUEUED


def test_admin_release_action_refuses_even_when_called_directly(mock_host):
    job = held(mock_host)
    request = RequestFactory().post("/")
    request.user = make_user("nobody", "view_containerjob", staff=True)
    with pytest.raises(PermissionDenied):
        ContainerJobAdmin(ContainerJob, None).release_jobs(request, ContainerJob.objects.all())
    assert status_of(job) == JobStatus.PENDING


def test_superusers_are_offered_the_release_action(admin_client, mock_host):
    held(mock_host)
    assert "release_jobs" in offered_actions(admin_client)

"""Who may do what: admin actions and the command line's --user."""

import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from container_manager import api
from container_manager.admin import ContainerJobAdmin, ExecutorHostAdmin
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.secrets import MASK
from container_manager.states import JobStatus

TOKEN = "tok-perm-8c1d2e"  # noqa: S105 - a test value


def grant(user, *codenames):
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="container_manager", codename__in=codenames
        )
    )
    # Permissions are cached on the instance: give back a fresh one.
    return User.objects.get(pk=user.pk)


def make_user(username, *codenames, staff=False):
    user = User.objects.create_user(username, password="pw", is_staff=staff)
    return grant(user, *codenames)


def fail(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    assert job.transition(JobStatus.FAILED, exit_code=1, finished_at=timezone.now())
    return job


@pytest.fixture
def jobs(mock_host):
    queued = api.create_job("alpine", ["true"], host=mock_host, name="queued-job")
    failed = fail(api.create_job("alpine", ["false"], host=mock_host, name="failed-job"))
    return queued, failed


# -- admin -------------------------------------------------------------------------------


def url(model, view, *args):
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def offered_actions(client, model):
    response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    form = response.context["action_form"]  # None: no action offered at all
    return {value for value, _ in form.fields["action"].choices} if form else set()


def run_action(client, model, action, objects):
    return client.post(
        url(model, "changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects]},
    )


@pytest.mark.parametrize(
    "action, permission",
    [("cancel_jobs", "cancel_containerjob"), ("retry_jobs", "retry_containerjob")],
)
def test_job_actions_need_their_permission(client, jobs, action, permission):
    queued, failed = jobs
    # The other action is allowed: the page has an action form, without this action in it.
    other = ({"cancel_containerjob", "retry_containerjob"} - {permission}).pop()
    user = make_user("staff", "view_containerjob", "change_containerjob", other, staff=True)
    client.force_login(user)
    offered = offered_actions(client, "containerjob")
    assert action not in offered and offered
    response = run_action(client, "containerjob", action, [queued, failed])
    assert response.status_code in (200, 302)
    queued.refresh_from_db()
    failed.refresh_from_db()
    assert (queued.status, failed.status) == (JobStatus.QUEUED, JobStatus.FAILED)

    grant(user, permission)
    assert action in offered_actions(client, "containerjob")
    response = run_action(client, "containerjob", action, [queued, failed])
    assert response.status_code == 302
    queued.refresh_from_db()
    failed.refresh_from_db()
    if action == "cancel_jobs":
        assert queued.status == JobStatus.CANCELLED
    else:
        assert failed.status == JobStatus.QUEUED


def test_the_actions_refuse_even_when_called_directly(rf_request_for, jobs):
    request = rf_request_for(make_user("nobody", "view_containerjob", staff=True))
    admin_ = ContainerJobAdmin(ContainerJob, None)
    for action in (admin_.release_jobs, admin_.cancel_jobs, admin_.retry_jobs):
        with pytest.raises(PermissionDenied):
            action(request, ContainerJob.objects.all())
    host_admin = ExecutorHostAdmin(ExecutorHost, None)
    with pytest.raises(PermissionDenied):
        host_admin.check_health(request, ExecutorHost.objects.all())
    assert set(ContainerJob.objects.values_list("status", flat=True)) == {"queued", "failed"}


@pytest.fixture
def rf_request_for():
    def build(user):
        request = RequestFactory().post("/")
        request.user = user
        return request

    return build


def test_host_health_check_needs_change_executorhost(client, mock_host):
    user = make_user("viewer", "view_executorhost", staff=True)
    client.force_login(user)
    assert "check_health" not in offered_actions(client, "executorhost")
    run_action(client, "executorhost", "check_health", [mock_host])
    mock_host.refresh_from_db()
    assert mock_host.last_health_check is None

    grant(user, "change_executorhost")
    assert "check_health" in offered_actions(client, "executorhost")
    response = run_action(client, "executorhost", "check_health", [mock_host])
    mock_host.refresh_from_db()
    assert mock_host.health_status == ExecutorHost.Health.HEALTHY
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "mock: healthy: mock executor is always available"
    ]


def test_superusers_are_offered_every_action(admin_client, jobs):
    offered = offered_actions(admin_client, "containerjob")
    assert {"release_jobs", "cancel_jobs", "retry_jobs"} <= offered
    assert "check_health" in offered_actions(admin_client, "executorhost")


def test_admin_never_reveals_secrets_even_to_superusers(admin_client, mock_host):
    job = api.create_job("alpine", host=mock_host, env={"API_TOKEN": TOKEN})
    page = admin_client.get(url("containerjob", "change", job.pk)).text
    assert TOKEN not in page
    assert MASK in page


# -- the command line --------------------------------------------------------------------


def cli(*args):
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(*args):
    with pytest.raises(CommandError) as error:
        cli(*args)
    return str(error.value)


CREATE = ["create", "--host", "mock", "--image", "alpine", "--json", "--", "true"]


def test_unknown_and_inactive_users_are_refused_by_name(jobs):
    assert refused("--user", "ghost", "list") == "no user named 'ghost' (given with --user)"
    User.objects.create_user("gone", is_active=False)
    assert refused("--user", "gone", "list") == "user 'gone' is inactive"


@pytest.mark.parametrize(
    "args, permission, doing",
    [
        (CREATE, "add_containerjob", "create jobs"),
        (["cancel", "{queued}"], "cancel_containerjob", "cancel jobs"),
        (["retry", "{failed}"], "retry_containerjob", "retry jobs"),
        (["hosts", "--check"], "change_executorhost", "check hosts"),
        (["show", "{queued}", "--reveal-secrets"], "reveal_secrets", "reveal secrets"),
    ],
)
def test_each_subcommand_checks_the_users_permission(jobs, args, permission, doing):
    queued, failed = jobs
    args = [arg.format(queued=queued.pk, failed=failed.pk) for arg in args]
    bob = make_user("bob", "view_containerjob")
    message = refused("--user", "bob", *args)
    assert message == f"user 'bob' may not {doing} (needs container_manager.{permission})"
    # Nothing happened.
    assert ContainerJob.objects.count() == 2
    queued.refresh_from_db()
    failed.refresh_from_db()
    assert (queued.status, failed.status) == (JobStatus.QUEUED, JobStatus.FAILED)
    assert ExecutorHost.objects.get().last_health_check is None

    grant(bob, permission)
    cli("--user", "bob", *args)
    # --user may also follow the subcommand.
    if args[0] in ("hosts", "show"):
        cli(*args[:1], "--user", "bob", *args[1:])


def test_reading_jobs_as_a_user_needs_the_view_permission(jobs):
    reader = make_user("reader")
    queued, _ = jobs
    needs = "user 'reader' may not view jobs (needs container_manager.view_containerjob)"
    for args in (["list"], ["show", str(queued.pk)], ["logs", str(queued.pk)]):
        assert refused("--user", "reader", *args) == needs
    assert "mock" in cli("--user", "reader", "hosts")  # hosts are no jobs
    grant(reader, "view_containerjob")
    assert str(queued.pk) in cli("--user", "reader", "list")
    assert f"ID: {queued.pk}" in cli("--user", "reader", "show", str(queued.pk))
    assert str(queued.pk) in cli("list")  # the operator, without --user, reads everything


def test_create_records_the_acting_user(jobs):
    alice = make_user("alice", "add_containerjob")
    data = json.loads(cli("--user", "alice", *CREATE))
    assert data["created_by"] == "alice"
    assert ContainerJob.objects.get(pk=data["id"]).created_by == alice
    data = json.loads(cli(*CREATE))  # the operator: nobody in particular
    assert data["created_by"] is None


def test_superuser_may_do_everything(jobs):
    queued, failed = jobs
    User.objects.create_superuser("root", password="pw")
    json.loads(cli("--user", "root", *CREATE))
    cli("--user", "root", "cancel", str(queued.pk))
    cli("--user", "root", "retry", str(failed.pk))
    cli("--user", "root", "hosts", "--check")
    cli("--user", "root", "show", str(queued.pk), "--reveal-secrets")


def test_without_user_the_operator_may_do_everything_but_reveal(jobs):
    queued, failed = jobs
    json.loads(cli(*CREATE))
    cli("cancel", str(queued.pk))
    cli("retry", str(failed.pk))
    cli("hosts", "--check")
    message = refused("show", str(queued.pk), "--reveal-secrets")
    assert message.startswith("--reveal-secrets needs --user USERNAME")
    assert "container_manager.reveal_secrets" in message


def test_reveal_secrets_shows_clear_values_to_a_permitted_user(mock_host):
    job = api.create_job("alpine", host=mock_host, env={"API_TOKEN": TOKEN, "MODE": "fast"})
    make_user("carol", "view_containerjob", "reveal_secrets")
    masked = cli("--user", "carol", "show", str(job.pk))
    assert TOKEN not in masked and f"    API_TOKEN={MASK}" in masked.splitlines()
    shown = cli("--user", "carol", "show", str(job.pk), "--reveal-secrets")
    assert f"    API_TOKEN={TOKEN}" in shown.splitlines()
    assert "    MODE=fast" in shown.splitlines()
    data = json.loads(cli("--user", "carol", "show", str(job.pk), "--reveal-secrets", "--json"))
    assert data["environment"] == {"API_TOKEN": TOKEN, "MODE": "fast"}
    assert TOKEN not in cli("--user", "carol", "show", str(job.pk), "--json")

"""Every admin page renders, and the actions go through the API."""

from types import SimpleNamespace

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from container_manager import api
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobAttempt,
    Worker,
)
from container_manager.states import JobStatus

MODELS = ["executorhost", "environmentvariabletemplate", "containerjob", "worker"]
SECRETS = ["template-secret", "override-secret"]


def url(model, view, *args):
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def fail(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    assert job.transition(JobStatus.FAILED, exit_code=2, finished_at=timezone.now())
    return job


@pytest.fixture
def objects(mock_host):
    template = EnvironmentVariableTemplate.objects.create(
        name="base", description="shared", environment_variables="TOKEN=template-secret\n"
    )
    queued = api.create_job(
        "alpine",
        ["echo", "hi"],
        host=mock_host,
        name="queued-job",
        env={"API_KEY": "override-secret"},
        env_template=template,
    )
    failed = fail(api.create_job("alpine", ["false"], host=mock_host, name="failed-job"))
    JobAttempt.objects.create(
        job=failed,
        number=1,
        host=mock_host,
        execution_id="mock-1",
        status=JobStatus.FAILED,
        exit_code=2,
        error="exited with 2",
    )
    worker = Worker.objects.create(hostname="box", pid=123)
    return SimpleNamespace(
        executorhost=mock_host,
        environmentvariabletemplate=template,
        containerjob=queued,
        failed=failed,
        worker=worker,
    )


def messages_of(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.mark.parametrize(
    "model, shown",
    [
        ("executorhost", ">mock</a>"),
        ("environmentvariabletemplate", "shared"),
        ("containerjob", "queued-job"),
        ("worker", ">box</a>"),
    ],
)
def test_changelist(admin_client, objects, model, shown):
    response = admin_client.get(url(model, "changelist"))
    assert response.status_code == 200
    assert shown in response.text
    for secret in SECRETS:
        assert secret not in response.text


@pytest.mark.parametrize("model", MODELS)
def test_change_history_and_delete_pages(admin_client, objects, model):
    pk = getattr(objects, model).pk
    for view in ["change", "history", "delete"]:
        assert admin_client.get(url(model, view, pk)).status_code == 200, view


def test_change_page_of_a_finished_job_with_attempts(admin_client, objects):
    response = admin_client.get(url("containerjob", "change", objects.failed.pk))
    assert response.status_code == 200
    assert "exited with 2" in response.text


@pytest.mark.parametrize("model", ["executorhost", "environmentvariabletemplate", "containerjob"])
def test_add_page(admin_client, objects, model):
    assert admin_client.get(url(model, "add")).status_code == 200


def test_workers_cannot_be_added_by_hand(admin_client, objects):
    assert admin_client.get(url("worker", "add")).status_code == 403


def test_job_changelist_shows_short_ids_and_filters_and_searches(admin_client, objects):
    job = objects.containerjob
    page = admin_client.get(url("containerjob", "changelist"))
    assert str(job.pk)[:8] in page.text
    for query in [
        {"status__exact": "queued"},
        {"host__id__exact": str(objects.executorhost.pk)},
        {"q": str(job.pk)},
        {"q": str(job.pk)[:8]},
        {"q": "mock-1"},
        {"q": "alpine"},
    ]:
        response = admin_client.get(url("containerjob", "changelist"), query)
        assert response.status_code == 200, query
    found = admin_client.get(url("containerjob", "changelist"), {"q": str(job.pk)})
    assert "queued-job" in found.text
    assert "failed-job" not in found.text


def test_host_changelist_shows_the_load(admin_client, objects):
    response = admin_client.get(url("executorhost", "changelist"))
    assert "0 / 10" in response.text


def job_form(**fields):
    """What the admin's add page posts for a job, with ``fields`` changed."""
    return {
        "image": "alpine",
        "timeout_seconds": "60",
        "priority": "0",
        "scheduled_for_0": "2026-01-01",  # the form shows "now"; a past time runs at once
        "scheduled_for_1": "00:00:00",
        "max_attempts": "1",
        "gpus": "0",
        "attempt_set-TOTAL_FORMS": "0",
        "attempt_set-INITIAL_FORMS": "0",
        **fields,
    }


def test_add_a_job_without_a_host_leaves_it_to_routing(admin_client, admin_user, objects):
    response = admin_client.post(
        url("containerjob", "add"),
        job_form(name="from-admin", command='["echo", "admin"]', environment_overrides="{}"),
    )
    assert response.status_code == 302, response.text
    job = ContainerJob.objects.get(name="from-admin")
    assert (job.requested_host, job.host) == (None, None)  # routing chooses at launch
    assert job.command == ["echo", "admin"]
    assert job.status == JobStatus.QUEUED
    assert job.created_by == admin_user


def test_cleared_json_boxes_mean_empty(admin_client, objects):
    response = admin_client.post(
        url("containerjob", "add"),
        job_form(name="cleared", command="", environment_overrides="", retry_on=""),
    )
    assert response.status_code == 302, response.text
    job = ContainerJob.objects.get(name="cleared")
    assert (job.command, job.environment_overrides, job.retry_on) == ([], {}, [])

    host = {"name": "cleared", "executor_type": "mock", "weight": "1", "max_concurrent_jobs": "1"}
    response = admin_client.post(
        url("executorhost", "add"), {**host, "executor_config": "", "labels": ""}
    )
    assert response.status_code == 302, response.text
    created = ExecutorHost.objects.get(name="cleared")
    assert (created.executor_config, created.labels) == ({}, {})


def test_add_a_job_with_bad_input_shows_the_errors(admin_client, objects):
    response = admin_client.post(
        url("containerjob", "add"),
        job_form(
            name="bad",
            image="two words",
            command='"not a list"',
            environment_overrides="{}",
            timeout_seconds="0",
        ),
    )
    assert response.status_code == 200
    assert "must be a list of strings" in response.text
    assert not ContainerJob.objects.filter(name="bad").exists()


def test_editing_a_held_job_writes_only_the_edited_fields(admin_client, objects):
    job = objects.containerjob
    ContainerJob.objects.filter(pk=job.pk).update(status=JobStatus.PENDING)
    change = url("containerjob", "change", job.pk)
    form = admin_client.get(change).context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: "" if value is None else value for name, value in data.items()}
    scheduled = data.pop("scheduled_for")  # the admin shows it as a date and a time box
    data["scheduled_for_0"], data["scheduled_for_1"] = scheduled.date(), scheduled.time()
    data.update(
        {
            "name": "renamed",
            "command": '["echo", "hi"]',
            "environment_overrides": '{"API_KEY": "override-secret"}',
            "attempt_set-TOTAL_FORMS": "0",
            "attempt_set-INITIAL_FORMS": "0",
        }
    )
    # Meanwhile a worker wrote something the page never showed as editable.
    ContainerJob.objects.filter(pk=job.pk).update(last_error="from the worker")
    response = admin_client.post(change, data)
    assert response.status_code == 302, response.text
    job.refresh_from_db()
    assert job.name == "renamed"
    assert job.last_error == "from the worker"


def test_a_job_that_left_pending_gets_the_operator_page_not_a_form(admin_client, objects):
    for job in (objects.containerjob, objects.failed):
        page = url("containerjob", "change", job.pk)
        response = admin_client.get(page)
        assert response.templates[0].name == "admin/container_manager/containerjob/operator.html"
        assert "adminform" not in response.context
        assert admin_client.post(page, {"name": "renamed"}).status_code == 405
        job.refresh_from_db()
        assert job.name != "renamed"


def test_add_a_host_offers_the_registered_executor_types(admin_client, db):
    page = admin_client.get(url("executorhost", "add"))
    assert '<option value="mock">' in page.text
    assert '<option value="docker">' in page.text
    data = {
        "name": "new-mock",
        "executor_type": "mock",
        "executor_config": '{"exit_code": 3}',
        "labels": "{}",
        "weight": "100",
        "max_concurrent_jobs": "2",
        "tls_verify": "on",
        "is_active": "on",
    }
    assert admin_client.post(url("executorhost", "add"), data).status_code == 302
    host = ExecutorHost.objects.get(name="new-mock")
    assert host.executor_config == {"exit_code": 3}

    bad = admin_client.post(
        url("executorhost", "add"),
        {**data, "name": "bad", "executor_type": "nope", "executor_config": '{"x": 1}'},
    )
    assert bad.status_code == 200
    assert not ExecutorHost.objects.filter(name="bad").exists()


def run_action(admin_client, model, action, objects_):
    return admin_client.post(
        url(model, "changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects_]},
    )


def test_cancel_action(admin_client, objects):
    response = run_action(
        admin_client, "containerjob", "cancel_jobs", [objects.containerjob, objects.failed]
    )
    assert response.status_code == 302
    objects.containerjob.refresh_from_db()
    objects.failed.refresh_from_db()
    assert objects.containerjob.status == JobStatus.CANCELLED
    assert objects.failed.status == JobStatus.FAILED
    messages = messages_of(response)
    short = str(objects.failed.pk)[:8]
    assert messages == [
        f"Job failed-job ({short}): status: job is already failed; nothing to cancel",
        "Cancelled 1 of 2 selected jobs.",
    ]


def test_retry_action(admin_client, objects):
    response = run_action(
        admin_client, "containerjob", "retry_jobs", [objects.containerjob, objects.failed]
    )
    assert response.status_code == 302
    objects.failed.refresh_from_db()
    objects.containerjob.refresh_from_db()
    assert objects.failed.status == JobStatus.QUEUED
    assert objects.containerjob.status == JobStatus.QUEUED
    messages = messages_of(response)
    assert messages[-1] == "Queued again 1 of 2 selected jobs."
    assert any("queued-job" in text and "status: only failed" in text for text in messages)


def test_check_health_action(admin_client, objects):
    response = run_action(admin_client, "executorhost", "check_health", [objects.executorhost])
    assert response.status_code == 302
    objects.executorhost.refresh_from_db()
    assert objects.executorhost.health_status == ExecutorHost.Health.HEALTHY
    assert messages_of(response) == ["mock: healthy: mock executor is always available"]

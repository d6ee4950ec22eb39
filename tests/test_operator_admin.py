"""The operator's admin without a browser: the job list, a job's page and its live view,
"why is it still waiting", the actions and their reports, and the queue overview.

The same pages in Chromium, with real containers, are in test_browser.
"""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from container_manager import api
from container_manager.executors.mock.executor import MockExecutor
from container_manager.live_output import read_live_output
from container_manager.models import ContainerJob, ExecutorHost, Worker
from container_manager.overview import queue_overview, why_waiting
from container_manager.states import JobStatus

HOSTILE = "<script>alert(1)</script>"


def url(view, *args, model="containerjob"):
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def messages_of(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def running(job, execution_id="mock-live"):
    assert job.transition(JobStatus.LAUNCHING, attempts=job.attempts + 1)
    assert job.transition(JobStatus.RUNNING, execution_id=execution_id, started_at=timezone.now())
    return job


def finished(job, status=JobStatus.COMPLETED, **fields):
    running(job, f"mock-{job.pk}")
    assert job.transition(status, finished_at=timezone.now(), **fields)
    return job


def alive_worker():
    return Worker.objects.create(hostname="box", pid=1)


@pytest.fixture
def job(mock_host):
    return api.create_job("alpine", ["echo", "hi"], host=mock_host, name="one")


@pytest.fixture
def live_execution():
    """A mock execution still running, with output, as the mock executor records one."""
    MockExecutor._executions["mock-live"] = {
        "ends_at": float("inf"),
        "exit_code": 0,
        "stdout": "first line\nsecond line\n",
        "stderr": "a warning\n",
        "attempt": ("x", 1),
    }
    yield
    MockExecutor._executions.pop("mock-live", None)


# -- the list ----------------------------------------------------------------------------


def test_the_list_shows_badges_durations_and_users_text_as_text(admin_client, mock_host):
    done = finished(api.create_job("alpine", ["true"], host=mock_host, name=HOSTILE))
    page = admin_client.get(url("changelist")).text
    assert 'class="cm-badge cm-status-completed"' in page
    assert f'data-started="{done.started_at.isoformat()}"' in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("how", ["full id", "short id", "execution id", "name"])
def test_search_finds_a_job_by_id_prefix_execution_id_or_name(admin_client, mock_host, how):
    wanted = finished(api.create_job("alpine", ["true"], host=mock_host, name="needle"))
    other = finished(api.create_job("alpine", ["true"], host=mock_host, name="hay"))
    term = {
        "full id": str(wanted.pk),
        "short id": str(wanted.pk)[:8],
        "execution id": wanted.execution_id,
        "name": "needl",
    }[how]
    found = list(admin_client.get(url("changelist"), {"q": term}).context["cl"].result_list)
    assert wanted in found and other not in found


def test_filters_by_executor_type_and_created_date(admin_client, job):
    changelist = url("changelist")
    assert job in admin_client.get(changelist, {"executor_type": "mock"}).context["cl"].result_list
    assert not admin_client.get(changelist, {"executor_type": "docker"}).context["cl"].result_list
    since = {"created_at__gte": (timezone.now() - timedelta(hours=1)).isoformat()}
    assert job in admin_client.get(changelist, since).context["cl"].result_list


# -- why a job is still waiting ------------------------------------------------------------


def test_why_waiting_says_held_scheduled_no_worker_full_or_unhealthy(mock_host):
    held = api.create_job("alpine", host=mock_host, hold=True)
    assert why_waiting(held) == ["It is held: it runs once released (Release)."]

    later = api.create_job(
        "alpine", host=mock_host, scheduled_for=timezone.now() + timedelta(hours=2)
    )
    reasons = why_waiting(later)
    assert reasons[0].startswith("It is scheduled for ")
    assert "No worker is alive" in reasons[1]

    alive_worker()
    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1)
    running(api.create_job("alpine", host=mock_host))
    ready = api.create_job("alpine", host=mock_host)
    assert why_waiting(ready) == [
        "It cannot start yet: no host is fit now: mock is full (1 of 1 slots busy)."
    ]
    ExecutorHost.objects.filter(pk=mock_host.pk).update(
        max_concurrent_jobs=5, health_status="unhealthy", health_message="engine down"
    )
    assert why_waiting(ready) == [
        "It cannot start yet: no host is fit now: mock is unhealthy (engine down)."
    ]


def test_why_waiting_counts_the_jobs_ahead_when_a_host_is_free(mock_host):
    alive_worker()
    first = api.create_job("alpine", host=mock_host)
    urgent = api.create_job("alpine", host=mock_host, priority=5)
    last = api.create_job("alpine", host=mock_host)
    assert why_waiting(urgent) == [
        "mock can take it now; 0 ready jobs are ahead of it in the queue."
    ]
    assert why_waiting(first) == ["mock can take it now; 1 ready job is ahead of it in the queue."]
    assert why_waiting(last)[0].endswith("2 ready jobs are ahead of it in the queue.")
    assert why_waiting(finished(first)) == []


# -- a job's page and its live view ------------------------------------------------------


def test_the_page_of_a_failed_job_puts_the_error_first_in_human_units(admin_client, mock_host):
    job = finished(
        api.create_job("alpine", ["false"], host=mock_host, name="broken", max_attempts=1),
        JobStatus.FAILED,
        exit_code=1,
        last_error=f"exited with code 1 {HOSTILE}",
        peak_memory_bytes=64 * 2**20,
        cpu_seconds=1.25,
    )
    page = admin_client.get(url("change", job.pk)).text
    assert page.index('id="cm-error"') < page.index('class="cm-facts"')
    assert "exited with code 1 &lt;script&gt;" in page and HOSTILE not in page
    assert "64.0 MiB" in page and "1.25 s" in page
    # A failed job may be retried, re-queued, duplicated or deleted, not cancelled or released.
    offered = {
        name
        for name in ("cancel", "retry", "release", "requeue", "duplicate", "delete")
        if f"/do/{name}/" in page
    }
    assert offered == {"retry", "requeue", "duplicate", "delete"}


def test_live_view_of_a_running_job_tails_its_output_from_an_offset(
    admin_client, job, live_execution
):
    running(job)
    live = url("live", job.pk)
    first = admin_client.get(live, {"execution": "mock-live"}).json()
    assert first["status"] == "running" and not first["terminal"]
    text = "first line\nsecond line\na warning\n"
    assert first["live"]["text"] == text and first["live"]["offset"] == len(text)
    again = admin_client.get(live, {"execution": "mock-live", "offset": len("first line\n")})
    assert again.json()["live"]["text"] == "second line\na warning\n"
    # Asked about another attempt's execution: this one's output from the start.
    other = admin_client.get(live, {"execution": "mock-old", "offset": 5}).json()
    assert other["live"]["text"] == text


def test_live_view_of_a_finished_job_gives_the_stored_output(admin_client, job):
    finished(job, stdout=f"out {HOSTILE}\n", stderr="err\n", exit_code=0)
    data = admin_client.get(url("live", job.pk)).json()
    assert data["terminal"] and data["live"] is None
    assert (data["stdout"], data["stderr"], data["exit_code"]) == (f"out {HOSTILE}\n", "err\n", 0)


def test_live_output_says_why_when_the_host_does_not_answer(job, live_execution):
    running(job)
    MockExecutor.unreachable.add(job.host.name)
    try:
        live = read_live_output(job)
    finally:
        MockExecutor.unreachable.discard(job.host.name)
    assert live is not None and live.text == "" and "unreachable" in live.error


def test_live_output_starts_again_when_the_output_got_shorter(job, live_execution):
    running(job)
    live = read_live_output(job, offset=10_000)
    assert live is not None and live.restarted and live.text.startswith("first line")


def test_live_output_skipping_ahead_starts_at_a_whole_character(job, live_execution):
    MockExecutor._executions["mock-live"].update(stdout="é" * 10, stderr="")
    running(job)
    live = read_live_output(job, limit=5)  # the last 5 of 20 bytes: half an "é", then two
    assert live is not None and live.text.endswith("\néé") and live.offset == 20


def test_live_output_skips_to_the_latest_when_far_behind(job, live_execution):
    MockExecutor._executions["mock-live"].update(stdout="x" * 1000 + "the latest\n", stderr="")
    running(job)
    live = read_live_output(job, offset=0, limit=11)
    assert live is not None
    assert live.text == "[... container_manager: 1000 bytes skipped to keep up ...]\nthe latest\n"
    assert live.offset == 1011


# -- actions on a job's page ---------------------------------------------------------------


def test_requeue_from_the_page_moves_a_failed_job_to_another_host(admin_client, mock_host):
    other = ExecutorHost.objects.create(name="other", executor_type="mock")
    job = finished(
        api.create_job("alpine", host=mock_host, max_attempts=1), JobStatus.FAILED, exit_code=1
    )
    response = admin_client.post(url("action", job.pk, "requeue"), {"host": "other"})
    assert response.status_code == 302 and response.url == url("change", job.pk)
    job.refresh_from_db()
    assert (job.status, job.requested_host, job.host) == (JobStatus.QUEUED, other, other)
    assert messages_of(response) == ["Re-queued 1 of 1 selected job."]


def test_duplicate_and_delete_from_the_page(admin_client, job):
    finished(job)
    admin_client.post(url("action", job.pk, "duplicate"))
    twin = ContainerJob.objects.exclude(pk=job.pk).get()
    assert (twin.status, twin.image, twin.command) == (JobStatus.QUEUED, "alpine", ["echo", "hi"])
    response = admin_client.post(url("action", job.pk, "delete"))
    assert response.url == url("changelist")
    assert not ContainerJob.objects.filter(pk=job.pk).exists()


def test_a_running_job_is_not_deleted_from_its_page(admin_client, job):
    running(job)
    response = admin_client.post(url("action", job.pk, "delete"))
    assert response.url == url("change", job.pk)
    assert ContainerJob.objects.filter(pk=job.pk).exists()
    assert "cancel it first" in messages_of(response)[0]
    assert admin_client.get(url("delete", job.pk)).status_code == 403


def test_page_actions_need_post_and_the_permission(client, job):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_containerjob"))
    client.force_login(viewer)
    page = client.get(url("change", job.pk)).text
    assert "/do/cancel/" not in page  # not offered...
    assert client.get(url("action", job.pk, "cancel")).status_code == 405
    assert client.post(url("action", job.pk, "cancel")).status_code == 403  # ...nor done
    assert ContainerJob.objects.get(pk=job.pk).status == JobStatus.QUEUED


# -- list actions that ask first ---------------------------------------------------------


def list_action(client, action, jobs, **extra):
    data = {"action": action, "_selected_action": [str(job.pk) for job in jobs], **extra}
    return client.post(url("changelist"), data)


def test_requeue_from_the_list_asks_for_the_host_then_reports(admin_client, mock_host):
    ExecutorHost.objects.create(name="other", executor_type="mock")
    waiting = api.create_job("alpine", host=mock_host, name="waiting")
    busy = running(api.create_job("alpine", host=mock_host, name="busy"))
    asked = list_action(admin_client, "requeue_jobs", [waiting, busy])
    assert asked.status_code == 200
    assert '<option value="other">' in asked.text and "waiting" in asked.text
    done = list_action(admin_client, "requeue_jobs", [waiting, busy], host="other")
    report = messages_of(done)
    assert report[-1] == "Re-queued 1 of 2 selected jobs."
    assert report[0].startswith(f"Job busy ({str(busy.pk)[:8]}): ")
    assert ContainerJob.objects.get(pk=waiting.pk).requested_host.name == "other"


def test_delete_from_the_list_confirms_then_spares_running_jobs(admin_client, mock_host):
    old = finished(api.create_job("alpine", host=mock_host, name="old"))
    busy = running(api.create_job("alpine", host=mock_host, name="busy"))
    asked = list_action(admin_client, "delete_jobs", [old, busy])
    assert asked.status_code == 200 and 'name="confirmed" value="yes"' in asked.text
    assert ContainerJob.objects.count() == 2
    done = list_action(admin_client, "delete_jobs", [old, busy], confirmed="yes")
    assert messages_of(done)[-1] == "Deleted 1 of 2 selected jobs."
    assert list(ContainerJob.objects.all()) == [busy]


def test_djangos_own_delete_selected_is_replaced(admin_client, job):
    actions = admin_client.get(url("changelist")).context["action_form"].fields["action"]
    names = {value for value, _ in actions.choices}
    assert "delete_selected" not in names
    assert {"cancel_jobs", "retry_jobs", "requeue_jobs", "duplicate_jobs", "delete_jobs"} <= names


# -- the queue overview ------------------------------------------------------------------


def test_queue_overview_counts_hosts_failures_and_workers(admin_client, mock_host):
    for _ in range(3):
        api.create_job("alpine", host=mock_host)
    running(api.create_job("alpine", host=mock_host))
    finished(api.create_job("alpine", host=mock_host))
    broken = finished(
        api.create_job("alpine", host=mock_host, name=HOSTILE),
        JobStatus.FAILED,
        last_error="exited with code 7",
    )
    alive_worker()
    Worker.objects.create(
        hostname="gone", pid=2, last_heartbeat=timezone.now() - timedelta(hours=1)
    )

    overview = queue_overview()
    assert overview.unfinished[JobStatus.QUEUED] == 3
    assert overview.unfinished[JobStatus.RUNNING] == 1
    assert overview.finished_last_hour == {"completed": 1, "failed": 1}
    assert overview.failures_last_hour == 1 and overview.throughput_last_hour == 2
    assert [row.running for row in overview.hosts] == [1]
    assert overview.recent_failures == [broken]
    assert [worker.hostname for worker in overview.workers] == ["box"]
    assert overview.oldest_ready_age is not None

    page = admin_client.get(url("changelist", model="queueoverview"))
    assert page.status_code == 200
    assert "exited with code 7" in page.text and HOSTILE not in page.text
    assert "1 / 10" in page.text  # running against capacity


def test_queue_overview_is_in_the_index_for_those_who_may_view_jobs(client, admin_client, db):
    assert url("changelist", model="queueoverview") in admin_client.get("/admin/").text
    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(clerk)
    assert url("changelist", model="queueoverview") not in client.get("/admin/").text
    assert client.get(url("changelist", model="queueoverview")).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_containerjob"))
    assert client.get(url("changelist", model="queueoverview")).status_code == 200


def test_host_load_is_counted_without_reading_finished_jobs(
    mock_host, django_assert_max_num_queries
):
    for _ in range(3):
        finished(api.create_job("alpine", host=mock_host))
    running(api.create_job("alpine", host=mock_host))
    with django_assert_max_num_queries(1):
        (host,) = ExecutorHost.objects.with_load()
    assert host.load == 1
    assert "JOIN" not in str(ExecutorHost.objects.with_load().query).upper()

"""The admin in a real browser: Debian's Chromium driven by Playwright, against a live server,
with a real worker process running real containers on the Docker engine.

Screenshots are saved to ``artifacts/browser/`` (``BROWSER_ARTIFACTS`` to change it); the
README's come from here. Chromium is installed by scripts/browser.sh; Playwright never
downloads a browser of its own.
"""

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from container_manager import api
from container_manager.models import ContainerJob
from container_manager.states import JobStatus

from .conftest import IN_CI, TEST_IMAGE, own_labels
from .test_queue_processes import wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.processes,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_container_left"),
]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As TESTING.md says: without the background-networking flags Chromium tries to reach
# hosts this machine cannot, at every start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", "artifacts/browser"))
FAST_WORKER = {
    "CONTAINER_MANAGER_SETTINGS": json.dumps(
        {"HEARTBEAT_INTERVAL": 0.5, "CANCEL_CHECK_INTERVAL": 0.2, "STOP_GRACE_SECONDS": 1}
    )
}
# Markup and script in users' text: it must show as text, and never run.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>'


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}; run scripts/browser.sh"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are plain synchronous code all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server, db):
    User.objects.create_superuser("operator", "operator@example.com", "a-long-password")
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.base = live_server.url
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "a-long-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    yield page
    assert page.evaluate("window.__pwned") is None, "script from users' text ran"
    context.close()


@pytest.fixture
def worker(worker_processes, docker_host):
    worker_processes.start("--poll-interval", "0.1", "--max-concurrent", "4", env=FAST_WORKER)
    return worker_processes


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def job_page(page, job):
    page.goto(f"{page.base}/admin/container_manager/containerjob/{job.pk}/change/")


def status_of(job):
    return ContainerJob.objects.values_list("status", flat=True).get(pk=job.pk)


def test_create_a_job_in_the_admin_and_watch_its_output_live(page, worker, docker_host):
    page.goto(f"{page.base}/admin/container_manager/containerjob/add/")
    page.fill("#id_name", "counts to six")
    page.fill("#id_image", TEST_IMAGE)
    page.fill(
        "#id_command",
        json.dumps(["sh", "-c", "for i in 1 2 3 4 5 6; do echo line-$i; sleep 1; done"]),
    )
    page.select_option("#id_requested_host", label=str(docker_host))
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    job = ContainerJob.objects.get(name="counts to six")

    job_page(page, job)
    # Lines appear while it runs, without reloading the page.
    page.wait_for_selector("#cm-live-panel:not([hidden])", timeout=30_000)
    page.wait_for_function(
        "document.getElementById('cm-log').textContent.includes('line-2')", timeout=30_000
    )
    assert status_of(job) == JobStatus.RUNNING
    assert page.inner_text("#cm-status .cm-badge").startswith("Running")
    assert "line-6" not in page.inner_text("#cm-log")
    screenshot(page, "job-running")
    # When it ends, the page shows the stored output and the final status by itself.
    page.wait_for_selector("#cm-stored:not([hidden])", timeout=30_000)
    assert page.inner_text("#cm-status .cm-badge") == "Completed"
    assert "line-1" in page.inner_text("#cm-stdout") and "line-6" in page.inner_text("#cm-stdout")
    assert page.inner_text("#cm-exit-code") == "0"
    assert page.inner_text("#cm-finished") != "—"
    screenshot(page, "job-completed")


def test_cancel_a_running_job_from_its_page(page, worker, docker_host, docker_engine):
    job = api.create_job(TEST_IMAGE, ["sleep", "300"], host=docker_host, name="sleeper")
    assert wait_until(lambda: status_of(job) == JobStatus.RUNNING, 30), worker.logs()
    job.refresh_from_db()
    assert docker_engine.containers.get(job.execution_id).status == "running"

    job_page(page, job)
    page.click("button.cm-action-cancel")
    assert "Cancelled 1 of 1 selected job" in page.inner_text(".messagelist")
    page.wait_for_function(
        "document.querySelector('#cm-status .cm-badge').dataset.status === 'cancelled'",
        timeout=30_000,
    )
    labels = {"label": own_labels(f"container_manager.job_id={job.pk}")}
    assert wait_until(lambda: not docker_engine.containers.list(all=True, filters=labels), 15)


def test_a_bulk_action_reports_what_it_could_not_do(page, mock_host):
    queued = api.create_job("alpine", ["true"], host=mock_host, name="waiting-one")
    done = api.create_job("alpine", ["true"], host=mock_host, name="finished-one")
    ContainerJob.objects.filter(pk=done.pk).update(
        status=JobStatus.COMPLETED, finished_at=timezone.now()
    )
    page.goto(f"{page.base}/admin/container_manager/containerjob/")
    for job in (queued, done):
        page.check(f"input[name=_selected_action][value='{job.pk}']")
    page.select_option("select[name=action]", "cancel_jobs")
    page.click("button[name=index]")
    report = page.inner_text(".messagelist")
    assert f"Job finished-one ({str(done.pk)[:8]}): status: job is already completed" in report
    assert "Cancelled 1 of 2 selected jobs." in report
    assert status_of(queued) == JobStatus.CANCELLED and status_of(done) == JobStatus.COMPLETED
    screenshot(page, "bulk-action-report")


def test_queue_overview_is_linked_from_the_index(page, mock_host, docker_host):
    for number in range(3):
        api.create_job("alpine", ["true"], host=mock_host, name=f"ready-{number}")
    failed = api.create_job("alpine", ["false"], host=docker_host, name="broke")
    ContainerJob.objects.filter(pk=failed.pk).update(
        status=JobStatus.FAILED, finished_at=timezone.now(), last_error="exited with code 1"
    )
    page.goto(f"{page.base}/admin/")
    page.click("text=Queue overview")
    page.wait_for_selector("#cm-overview")
    assert "3" in page.inner_text("a.cm-card:has(.cm-status-queued)")
    assert "exited with code 1" in page.inner_text("#cm-recent-failures")
    assert mock_host.name in page.inner_text("#cm-hosts")
    assert "No worker is alive" in page.inner_text("#cm-workers")
    screenshot(page, "queue-overview")


def test_job_list_fits_1400_pixels(page, mock_host, docker_host):
    now = timezone.now()
    endings = [
        (JobStatus.RUNNING, None),
        (JobStatus.COMPLETED, 0),
        (JobStatus.FAILED, 1),
        (JobStatus.TIMED_OUT, 137),
        (JobStatus.CANCELLED, 143),
        (JobStatus.QUEUED, None),
        (JobStatus.RETRYING, 1),
        (JobStatus.PENDING, None),
    ]
    for number, (status, exit_code) in enumerate(endings):
        job = api.create_job(
            "registry.example.com/team/a-rather-long-image-name:2026.11.26-build",
            ["true"],
            host=mock_host if number % 2 else docker_host,
            name=f"nightly report for a customer with a long name #{number}",
        )
        started = now - timedelta(minutes=number * 7 + 1, seconds=number * 13)
        ContainerJob.objects.filter(pk=job.pk).update(
            status=status,
            exit_code=exit_code,
            attempts=0 if status in (JobStatus.QUEUED, JobStatus.PENDING) else 1,
            started_at=None if exit_code is None and status != JobStatus.RUNNING else started,
            finished_at=None
            if status in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PENDING)
            else started + timedelta(seconds=40 + number * 25),
        )
    page.goto(f"{page.base}/admin/container_manager/containerjob/")
    screenshot(page, "job-list")
    # Neither the page nor the table's own scroll box may scroll sideways.
    for box in ("document.documentElement", "document.querySelector('.results')"):
        overflow = page.evaluate(f"{box}.scrollWidth - {box}.clientWidth")
        assert overflow <= 0, f"{box} scrolls sideways by {overflow} px"
    # The running job's duration ticks in the page.
    ticking = "tr:has(.cm-status-running) .cm-duration"
    before = page.inner_text(ticking)
    page.wait_for_function(
        f"document.querySelector({ticking!r}).textContent !== {before!r}", timeout=5_000
    )


def test_users_text_shows_as_text_on_every_page(page, worker, docker_host):
    job = api.create_job(
        TEST_IMAGE,
        ["sh", "-c", f"echo '{HOSTILE}'; exit 3"],
        host=docker_host,
        name=HOSTILE,
        max_attempts=1,
    )
    assert wait_until(lambda: status_of(job) in (JobStatus.FAILED, JobStatus.COMPLETED), 30)
    ContainerJob.objects.filter(pk=job.pk).update(last_error=HOSTILE)

    page.goto(f"{page.base}/admin/container_manager/containerjob/")
    assert HOSTILE in page.inner_text("#result_list")
    job_page(page, job)
    assert HOSTILE in page.inner_text(".cm-title")
    assert HOSTILE in page.inner_text("#cm-stdout")
    assert HOSTILE in page.inner_text("#cm-error")
    assert HOSTILE in page.inner_text(".cm-facts")  # the command
    page.goto(f"{page.base}/admin/container_manager/queueoverview/")
    assert HOSTILE in page.inner_text("#cm-recent-failures")
    # The page a list action asks on names the jobs too.
    page.goto(f"{page.base}/admin/container_manager/containerjob/")
    page.check(f"input[name=_selected_action][value='{job.pk}']")
    page.select_option("select[name=action]", "delete_jobs")
    page.click("button[name=index]")
    assert HOSTILE in page.inner_text(".cm-confirm-list")
    # And a held job's edit form shows them in its inputs.
    held = api.create_job(TEST_IMAGE, ["echo", HOSTILE], host=docker_host, name=HOSTILE, hold=True)
    job_page(page, held)
    assert page.input_value("#id_name") == HOSTILE
    assert page.locator("b", has_text="bold").count() == 0  # no markup became an element
    time.sleep(0.2)  # an onerror handler would have run by now

"""Retention: prune_container_jobs and the workers' daily retention, on 20,000 jobs."""

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

from container_manager import retention
from container_manager.api import create_job
from container_manager.models import (
    ContainerJob,
    HousekeepingTask,
    JobAttempt,
    WebhookDelivery,
    Worker,
)

pytestmark = pytest.mark.django_db(transaction=True)

OLD_JOBS = 20_000
STATUSES = ["completed", "failed", "timed_out", "cancelled"]


def fill(host, count: int, days_ago: float) -> None:
    """``count`` finished jobs (completed, failed, timed out and cancelled in turn) that
    ended ``days_ago``, with output and an attempt each: copies of one job, made by the
    database in one INSERT ... SELECT (bulk_create takes ten times longer)."""
    ended = timezone.now() - timedelta(days=days_ago)
    template = create_job("img", host=host)
    ContainerJob.objects.filter(pk=template.pk).update(
        status="completed",
        stdout="out\n",
        stderr="err\n",
        attempts=1,
        started_at=ended,
        finished_at=ended,
    )
    job = ContainerJob._meta
    columns = [f.column for f in job.concrete_fields if f.column not in ("id", "status")]
    new_id = (
        "md5(t.id::text || n.i)::uuid"
        if connection.vendor == "postgresql"
        else "lower(hex(randomblob(16)))"
    )
    status = " ".join(f"WHEN {i} THEN '{name}'" for i, name in enumerate(STATUSES))
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s) "
            f"INSERT INTO {job.db_table} (id, status, {', '.join(columns)}) "
            f"SELECT {new_id}, CASE n.i %% 4 {status} END, {', '.join('t.' + c for c in columns)} "
            f"FROM {job.db_table} AS t, n WHERE t.id = %s",
            [count, template.pk.hex if connection.vendor == "sqlite" else template.pk],
        )
        attempt = JobAttempt._meta.db_table
        cursor.execute(
            f"INSERT INTO {attempt} (job_id, number, status, execution_id, routing, tries, "
            f"error, started_at) SELECT j.id, 1, j.status, '', '', '[]', '', j.finished_at "
            f"FROM {job.db_table} AS j WHERE NOT EXISTS "
            f"(SELECT 1 FROM {attempt} AS a WHERE a.job_id = j.id)"
        )
    JobAttempt.objects.filter(job=template).delete()
    template.delete()


@pytest.fixture
def old_and_new(mock_host):
    """20,000 jobs that ended 40 days ago, 400 that ended yesterday."""
    fill(mock_host, OLD_JOBS, days_ago=40)
    fill(mock_host, 400, days_ago=1)
    return mock_host


def by_status(**filters) -> dict:
    rows = ContainerJob.objects.filter(**filters).values_list("status").order_by()
    return {status: rows.filter(status=status).count() for status in STATUSES}


def test_prunes_in_batches_only_what_is_old_enough(old_and_new):
    done = retention.prune_jobs(timedelta(days=30), batch_size=1500)
    assert done.jobs == OLD_JOBS
    assert done.batches == -(-OLD_JOBS // 1500)
    assert ContainerJob.objects.count() == 400
    assert JobAttempt.objects.count() == 400  # the old jobs' attempts went with them


def test_dry_run_counts_and_deletes_nothing(old_and_new):
    out = command("--older-than", "30d", "--dry-run")
    assert out == f"Dry run: would delete {OLD_JOBS} job(s).\n"
    assert ContainerJob.objects.count() == OLD_JOBS + 400


def test_keep_failed_and_status_filters(old_and_new):
    command("--older-than", "30d", "--status", "cancelled")
    assert by_status(finished_at__lt=timezone.now() - timedelta(days=30)) == {
        "completed": OLD_JOBS // 4,
        "failed": OLD_JOBS // 4,
        "timed_out": OLD_JOBS // 4,
        "cancelled": 0,
    }
    out = command("--older-than", "30d", "--keep-failed", "--batch-size", "700")
    assert out == f"Deleted {OLD_JOBS // 4} job(s) in {-(-OLD_JOBS // 4 // 700)} batch(es).\n"
    assert by_status(finished_at__lt=timezone.now() - timedelta(days=30)) == {
        "completed": 0,
        "failed": OLD_JOBS // 4,
        "timed_out": OLD_JOBS // 4,
        "cancelled": 0,
    }


def test_trim_output_keeps_the_record(old_and_new):
    out = command("--older-than", "30d", "--trim-output", "--status", "completed")
    assert out.startswith(f"Emptied the output of {OLD_JOBS // 4} job(s)")
    old = ContainerJob.objects.filter(finished_at__lt=timezone.now() - timedelta(days=30))
    assert old.count() == OLD_JOBS
    assert old.filter(status="completed", stdout="", stderr="").count() == OLD_JOBS // 4
    assert old.exclude(status="completed").filter(stdout="").count() == 0
    assert ContainerJob.objects.exclude(stdout="").count() == OLD_JOBS * 3 // 4 + 400
    assert command(
        "--older-than", "30d", "--trim-output", "--dry-run", "--status", "completed"
    ) == ("Dry run: would empty the output of 0 job(s).\n")


def test_never_deletes_what_must_stay(mock_host, settings):
    """Unfinished jobs, jobs an unfinished job depends on, jobs whose webhook is owed."""
    settings.CONTAINER_MANAGER = {"WEBHOOK_SECRET": "s"}
    long_ago = timezone.now() - timedelta(days=90)
    kept = {}
    for status in ["pending", "queued", "launching", "running", "retrying"]:
        job = create_job("img", host=mock_host)
        ContainerJob.objects.filter(pk=job.pk).update(status=status, finished_at=long_ago)
        kept[status] = job.pk
    waited_for = create_job("img", host=mock_host)
    ContainerJob.objects.filter(pk=waited_for.pk).update(status="completed", finished_at=long_ago)
    kept["waited for"] = waited_for.pk
    waiting = create_job("img", host=mock_host, depends_on=[waited_for])
    assert waiting.status == "pending"
    owed = create_job("img", host=mock_host, webhook_url="http://127.0.0.1:9/hook")
    ContainerJob.objects.filter(pk=owed.pk).update(status="failed", finished_at=long_ago)
    WebhookDelivery.objects.create(job=owed, url=owed.webhook_url, job_status="failed", body="{}")
    kept["webhook owed"] = owed.pk
    gone = create_job("img", host=mock_host)
    ContainerJob.objects.filter(pk=gone.pk).update(status="completed", finished_at=long_ago)

    assert retention.prune_jobs(timedelta(days=30)).jobs == 1
    assert set(ContainerJob.objects.values_list("pk", flat=True)) == {*kept.values(), waiting.pk}
    # Once the waiting job has run, what it waited for may go too.
    ContainerJob.objects.filter(pk=waiting.pk).update(status="completed")
    assert retention.prune_jobs(timedelta(days=30)).jobs == 1
    assert not ContainerJob.objects.filter(pk=waited_for.pk).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "30"], "--older-than: .*30d, 12h or 90m; not '30'"),
        (["--older-than", "0d"], "--older-than: .*greater than 0"),
        (["--older-than", "3w"], "--older-than: .*not '3w'"),
        (["--older-than", "1d", "--status", "running"], "--status: 'running': only finished"),
        (["--older-than", "1d", "--batch-size", "0"], "--batch-size: must be a positive"),
        (["--older-than", "1d", "--pause", "-1"], "--pause: must be a number of seconds"),
    ],
)
def test_bad_options_are_named(db, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("prune_container_jobs", *args)


def test_ages_in_days_hours_and_minutes():
    assert retention.parse_age("30d") == timedelta(days=30)
    assert retention.parse_age(" 12h ") == timedelta(hours=12)
    assert retention.parse_age("90m") == timedelta(minutes=90)
    with pytest.raises(ValidationError):
        retention.parse_age("-1d")


def test_workers_take_the_daily_retention_once(mock_host, settings):
    settings.CONTAINER_MANAGER = {"RETENTION_DAYS": 30, "RETENTION_TRIM_OUTPUT_DAYS": 7}
    fill(mock_host, 50, days_ago=40)
    fill(mock_host, 30, days_ago=10)
    fill(mock_host, 20, days_ago=1)
    taken = []

    def take():
        try:
            taken.append(retention.daily_retention_due())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [False, False, False, True]
    trimmed, deleted = retention.apply_retention_settings(pause=0)
    assert (trimmed.jobs, deleted.jobs) == (80, 50)
    assert ContainerJob.objects.count() == 50
    assert ContainerJob.objects.filter(stdout="").count() == 30
    task = HousekeepingTask.objects.get(name=retention.DAILY)
    assert task.next_run_at - task.last_run_at == timedelta(days=1)
    assert retention.daily_retention_due() is False


def test_retention_is_off_by_default(db):
    assert retention.daily_retention_due() is False
    assert not HousekeepingTask.objects.exists()


def command(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("prune_container_jobs", *args, stdout=out)
    return out.getvalue()


def test_records_of_workers_long_gone_go_once_nothing_names_them(mock_host):
    now = timezone.now()
    long_ago = now - timedelta(days=40)
    stopped = Worker.objects.create(
        hostname="a", pid=1, last_heartbeat=long_ago, stopped_at=long_ago
    )
    silent = Worker.objects.create(hostname="b", pid=2, last_heartbeat=long_ago)
    named = Worker.objects.create(hostname="c", pid=3, last_heartbeat=long_ago, stopped_at=long_ago)
    recent = Worker.objects.create(
        hostname="d",
        pid=4,
        last_heartbeat=now - timedelta(days=2),
        stopped_at=now - timedelta(days=2),
    )
    alive = Worker.objects.create(hostname="e", pid=5)
    job = create_job("img", host=mock_host)
    JobAttempt.objects.create(job=job, number=1, worker=named, status="completed")

    assert command("--older-than", "30d", "--dry-run") == (
        "Dry run: would delete 0 job(s), and the records of 2 worker(s) gone as long.\n"
    )
    assert Worker.objects.count() == 5
    assert command("--older-than", "30d") == (
        "Deleted 0 job(s) in 0 batch(es), and the records of 2 worker(s) gone as long.\n"
    )
    assert set(Worker.objects.all()) == {named, recent, alive}
    assert not {stopped, silent} & set(Worker.objects.all())
    assert retention.prune_workers(timedelta(days=1)) == 1  # recent; named stays for its job


def test_a_worker_applies_the_retention_settings_daily(mock_host, settings):
    from container_manager.worker import Worker as WorkerLoop

    settings.CONTAINER_MANAGER = {"RETENTION_DAYS": 30, "RETENTION_TRIM_OUTPUT_DAYS": 7}
    fill(mock_host, 200, days_ago=40)
    fill(mock_host, 100, days_ago=10)
    fill(mock_host, 50, days_ago=1)
    gone = Worker.objects.create(
        hostname="old", pid=1, last_heartbeat=timezone.now() - timedelta(days=40)
    )

    WorkerLoop(until_idle=True, poll_interval=0.05).run()  # joins its retention thread

    assert ContainerJob.objects.count() == 150
    assert ContainerJob.objects.filter(stdout="").count() == 100
    assert not Worker.objects.filter(pk=gone.pk).exists()
    # Taken for the day: a second worker today leaves the new old jobs alone.
    fill(mock_host, 10, days_ago=40)
    WorkerLoop(until_idle=True, poll_interval=0.05).run()
    assert ContainerJob.objects.count() == 160


def test_a_worker_whose_record_was_deleted_writes_it_again(db):
    from container_manager.worker import Worker as WorkerLoop

    loop = WorkerLoop()
    loop.record = Worker.objects.create(hostname="h", pid=7, stopped_at=timezone.now())
    Worker.objects.filter(pk=loop.record.pk).delete()
    loop._heartbeat()
    again = Worker.objects.get(pk=loop.record.pk)
    assert (again.hostname, again.pid, again.stopped_at) == ("h", 7, None)


def test_a_worker_stopping_stops_the_retention_and_gives_the_day_back(
    mock_host, settings, monkeypatch
):
    settings.CONTAINER_MANAGER = {"RETENTION_DAYS": 30}
    fill(mock_host, 2500, days_ago=40)
    assert retention.daily_retention_due()
    stopping = threading.Event()
    batches = []

    def delete(jobs):
        batches.append(jobs)
        if len(batches) == 2:
            stopping.set()  # the worker is told to stop during the second batch
        return real_delete(jobs)

    real_delete = retention._delete
    monkeypatch.setattr(retention, "_delete", delete)
    _trimmed, deleted = retention.apply_retention_settings(pause=0, stop=stopping)
    monkeypatch.undo()
    assert (deleted.jobs, deleted.batches, deleted.stopped) == (2000, 2, True)
    assert ContainerJob.objects.count() == 500
    # The next worker takes it up today, and finishes it.
    assert retention.daily_retention_due()
    _trimmed, deleted = retention.apply_retention_settings(pause=0)
    assert (deleted.jobs, deleted.stopped) == (500, False)
    assert not retention.daily_retention_due()

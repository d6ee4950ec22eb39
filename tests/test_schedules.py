"""Schedules: due times from cron (with time zones and DST) or intervals, each fired once."""

import io
import json
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, connections  # noqa: F401 (skipif)
from django.urls import reverse

from container_manager import scheduling
from container_manager.models import ContainerJob, Schedule
from container_manager.states import JobStatus
from tests import clock

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def moved_clock(tmp_path, monkeypatch, settings, mock_host):
    monkeypatch.setenv(clock.FILE_VARIABLE, str(tmp_path / "clock"))
    settings.CONTAINER_MANAGER = {**getattr(settings, "CONTAINER_MANAGER", {}), **clock.SETTINGS}
    clock.set_to(datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC))
    return clock


def make_schedule(**fields) -> Schedule:
    fields.setdefault("job_spec", {"image": "alpine:3.20", "command": ["true"]})
    if "interval_seconds" not in fields:
        fields.setdefault("cron", "*/1 * * * *")
    fields.setdefault("name", f"schedule-{Schedule.objects.count()}")
    return scheduling.save_schedule(Schedule(**fields))


def runs(schedule) -> list[datetime]:
    return list(
        schedule.runs.order_by("scheduled_run_at").values_list("scheduled_run_at", flat=True)
    )


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- defining ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"cron": "61 * * * *"}, "cron", "'61 * * * *' is not a cron expression: Bad minute"),
        ({"cron": "* * *"}, "cron", "is not a cron expression"),
        ({"time_zone": "Mars/Olympus"}, "time_zone", "'Mars/Olympus' is not a time zone name"),
        ({"cron": "", "interval_seconds": None}, "cron", "either a cron expression or"),
        ({"interval_seconds": 60, "cron": "* * * * *"}, "cron", "(not both)"),
        ({"interval_seconds": 0, "cron": ""}, "interval_seconds", "greater than or equal to 1"),
        ({"job_spec": {"command": ["true"]}}, "job_spec", "image: is required"),
        ({"job_spec": {"image": "a b"}}, "job_spec", "'a b' contains whitespace"),
        ({"job_spec": {"image": "x", "hold": True}}, "job_spec", "hold: not for a schedule"),
        (
            {"job_spec": {"image": "x", "secrets": {"A": "1"}, "env": {"A": "2"}}},
            "job_spec",
            "A given both in env and in secrets",
        ),
        ({"job_spec": {"image": "x", "colour": 1}}, "job_spec", "unknown keys 'colour'"),
        ({"job_spec": {"image": "x", "memory_limit": -5}}, "job_spec", "memory_limit: Ensure"),
        ({"job_spec": {"image": "x", "host": "nowhere"}}, "job_spec", "no executor host named"),
        ({"job_spec": ["x"]}, "job_spec", "must be a JSON object"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(fields, field, message):
    with pytest.raises(ValidationError) as raised:
        make_schedule(**fields)
    assert field in raised.value.message_dict
    assert any(message in text for text in raised.value.message_dict[field]), raised.value
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_secret_values_of_the_spec_are_stored_sealed_and_reach_the_job(moved_clock, mock_host):
    schedule = make_schedule(
        job_spec={"image": "x", "env": {"DB_PASSWORD": "hunter2", "MODE": "nightly"}}
    )
    stored = Schedule.objects.get().job_spec["env"]
    assert stored["MODE"] == "nightly"
    assert "hunter2" not in stored["DB_PASSWORD"]
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 5))
    scheduling.fire_due_schedules()
    job = schedule.runs.get()
    assert job.get_environment()["DB_PASSWORD"] == "hunter2"
    assert job.name == schedule.name


@pytest.mark.django_db
def test_cron_is_read_in_its_time_zone_through_daylight_saving():
    schedule = Schedule(cron="30 2 * * *", time_zone="Europe/Berlin")
    # Spring forward (29 March 2026): 02:30 does not exist; Debian cron runs it at 03:00.
    assert schedule.upcoming(2, after=datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)) == [
        datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN).astimezone(UTC),
        datetime(2026, 3, 30, 2, 30, tzinfo=BERLIN).astimezone(UTC),
    ]
    # Fall back (25 October 2026): 02:30 happens twice; a fixed time runs once.
    assert schedule.upcoming(2, after=datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)) == [
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST), not the second (CET)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # ... while a repeating one runs in both hours.
    every_half_hour = Schedule(cron="*/30 * * * *", time_zone="Europe/Berlin")
    assert every_half_hour.upcoming(4, after=utc(2026, 10, 24, 23, 45)) == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 30),
    ]


def test_interval_due_times_keep_their_phase():
    schedule = Schedule(interval_seconds=90, next_run_at=utc(2026, 6, 1, 12, 0, 0))
    assert schedule.next_due_after(utc(2026, 6, 1, 11, 0)) == utc(2026, 6, 1, 12, 0, 0)
    assert schedule.next_due_after(utc(2026, 6, 1, 12, 0, 0)) == utc(2026, 6, 1, 12, 1, 30)
    assert schedule.next_due_after(utc(2026, 6, 1, 12, 4, 0)) == utc(2026, 6, 1, 12, 4, 30)
    assert schedule.latest_due_at_or_before(utc(2026, 6, 1, 12, 4, 0)) == utc(2026, 6, 1, 12, 3)


# -- firing --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_due_time_makes_one_job(moved_clock, mock_host):
    schedule = make_schedule(job_spec={"image": "x", "host": "mock", "priority": 5})
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 1)
    assert scheduling.fire_due_schedules() == 0  # not due yet
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 2))
    assert scheduling.fire_due_schedules() == 1
    assert scheduling.fire_due_schedules() == 0  # the same due time again: nothing
    moved_clock.set_to(utc(2026, 6, 1, 12, 2, 0))
    assert scheduling.fire_due_schedules() == 1
    assert runs(schedule) == [utc(2026, 6, 1, 12, 1), utc(2026, 6, 1, 12, 2)]
    job = schedule.runs.first()
    assert (job.status, job.priority, job.requested_host) == ("queued", 5, mock_host)
    schedule.refresh_from_db()
    assert schedule.last_run_at == utc(2026, 6, 1, 12, 2)
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 3)


@pytest.mark.django_db
def test_a_due_time_that_has_its_job_already_is_not_fired_again(moved_clock):
    schedule = make_schedule()
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 0))
    scheduling.fire_due_schedules()
    # As if a second worker got past the cursor (clocks apart): the database refuses.
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=utc(2026, 6, 1, 12, 1))
    assert scheduling.fire_due_schedules() == 0
    assert runs(schedule) == [utc(2026, 6, 1, 12, 1)]
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 2)  # and the schedule goes on


@pytest.mark.django_db(transaction=True)
def test_a_firing_that_dies_half_way_leaves_nothing_and_the_next_one_fires(
    moved_clock, monkeypatch
):
    """As if the worker died (or the database went away) after the job's INSERT and before
    the commit: the job and the cursor's move are one transaction."""
    schedule = make_schedule()
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 5))

    def die(schedule):
        raise OperationalError("server closed the connection unexpectedly")

    keep_history = scheduling._keep_history
    monkeypatch.setattr(scheduling, "_keep_history", die)
    with pytest.raises(OperationalError):  # the worker's loop waits and tries again
        scheduling.fire_due_schedules()
    assert runs(schedule) == []
    assert Schedule.objects.get().next_run_at == utc(2026, 6, 1, 12, 1)
    monkeypatch.setattr(scheduling, "_keep_history", keep_history)
    assert scheduling.fire_due_schedules() == 1
    assert runs(schedule) == [utc(2026, 6, 1, 12, 1)]


@pytest.mark.django_db
def test_a_spec_refused_later_skips_the_due_time_and_says_why(moved_clock, mock_host):
    schedule = make_schedule(job_spec={"image": "x", "host": "mock"})
    mock_host.is_active = False
    mock_host.save()
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 5))
    assert scheduling.fire_due_schedules() == 0  # no exception: the worker goes on
    schedule.refresh_from_db()
    assert "not run: its job spec is refused now: host: host 'mock' is not active" in (
        schedule.last_skip_reason
    )
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 2)
    assert runs(schedule) == []


@pytest.mark.django_db
def test_a_broken_schedule_is_logged_and_the_others_still_fire(moved_clock, caplog):
    broken = make_schedule(name="broken")
    fine = make_schedule(name="fine")
    Schedule.objects.filter(pk=broken.pk).update(cron="not a cron")  # written around validation
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 5))
    assert scheduling.fire_due_schedules() == 1
    assert runs(fine) == [utc(2026, 6, 1, 12, 1)]
    assert f"schedule {broken.pk} could not be fired" in caplog.text


@pytest.mark.django_db
def test_missed_due_times_run_once_for_the_latest(moved_clock):
    schedule = make_schedule(missed_runs="run_once")
    moved_clock.set_to(utc(2026, 6, 1, 12, 30, 10))  # 30 due times went by unfired
    assert scheduling.fire_due_schedules() == 1
    assert runs(schedule) == [utc(2026, 6, 1, 12, 30)]


@pytest.mark.django_db
def test_missed_due_times_are_skipped_when_asked(moved_clock):
    schedule = make_schedule(missed_runs="skip")
    moved_clock.set_to(utc(2026, 6, 1, 12, 30, 10))
    assert scheduling.fire_due_schedules() == 0
    schedule.refresh_from_db()
    assert "missed runs are skipped" in schedule.last_skip_reason
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 31)
    moved_clock.set_to(utc(2026, 6, 1, 12, 31, 10))
    assert scheduling.fire_due_schedules() == 1  # on time again: runs


@pytest.mark.django_db
def test_a_due_time_past_the_starting_deadline_is_not_run(moved_clock):
    schedule = make_schedule(starting_deadline_seconds=20)
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 25))
    assert scheduling.fire_due_schedules() == 0
    schedule.refresh_from_db()
    assert "more than the starting deadline (20 s) late" in schedule.last_skip_reason
    moved_clock.set_to(utc(2026, 6, 1, 12, 2, 15))
    assert scheduling.fire_due_schedules() == 1


@pytest.mark.django_db
def test_forbid_skips_a_due_time_while_the_previous_run_is_unfinished(moved_clock):
    schedule = make_schedule(concurrency="forbid")
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 0))
    scheduling.fire_due_schedules()
    moved_clock.set_to(utc(2026, 6, 1, 12, 2, 0))
    assert scheduling.fire_due_schedules() == 0  # the 12:01 run is still queued
    schedule.refresh_from_db()
    assert "previous run is unfinished" in schedule.last_skip_reason
    ContainerJob.objects.filter(schedule=schedule).update(status=JobStatus.COMPLETED)
    moved_clock.set_to(utc(2026, 6, 1, 12, 3, 0))
    assert scheduling.fire_due_schedules() == 1


@pytest.mark.django_db
def test_replace_cancels_the_unfinished_run(moved_clock):
    schedule = make_schedule(concurrency="replace")
    moved_clock.set_to(utc(2026, 6, 1, 12, 1, 0))
    scheduling.fire_due_schedules()
    first = schedule.runs.get()
    moved_clock.set_to(utc(2026, 6, 1, 12, 2, 0))
    assert scheduling.fire_due_schedules() == 1
    first.refresh_from_db()
    assert first.status == JobStatus.CANCELLED
    assert schedule.runs.filter(status="queued").get().scheduled_run_at == utc(2026, 6, 1, 12, 2)


@pytest.mark.django_db
def test_allow_lets_runs_overlap(moved_clock):
    schedule = make_schedule(concurrency="allow")
    for minute in (1, 2, 3):
        moved_clock.set_to(utc(2026, 6, 1, 12, minute, 0))
        scheduling.fire_due_schedules()
    assert schedule.runs.filter(status="queued").count() == 3


@pytest.mark.django_db
def test_history_limits_delete_the_oldest_finished_runs(moved_clock):
    schedule = make_schedule(successful_runs_to_keep=2, failed_runs_to_keep=1)
    outcomes = ["completed", "failed", "completed", "timed_out", "completed", "completed"]
    for minute, outcome in enumerate(outcomes, start=1):
        moved_clock.set_to(utc(2026, 6, 1, 12, minute, 0))
        scheduling.fire_due_schedules()
        schedule.runs.filter(status="queued").update(status=outcome)
    moved_clock.set_to(utc(2026, 6, 1, 12, 7, 0))
    scheduling.fire_due_schedules()  # the history is trimmed when a run is made
    left = dict(schedule.runs.values_list("scheduled_run_at__minute", "status"))
    assert left == {4: "timed_out", 5: "completed", 6: "completed", 7: "queued"}


@pytest.mark.django_db
def test_a_paused_schedule_is_not_fired_and_resumes_from_the_next_due_time(moved_clock):
    schedule = make_schedule()
    scheduling.pause(schedule)
    moved_clock.set_to(utc(2026, 6, 1, 12, 10, 30))
    assert scheduling.fire_due_schedules() == 0
    scheduling.resume(schedule)
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 11)  # the paused ones are not caught up
    assert scheduling.fire_due_schedules() == 0


@pytest.mark.django_db
def test_an_interval_schedule_fires_every_interval(moved_clock):
    schedule = make_schedule(interval_seconds=45, cron="")
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 1, 15)
    for seconds in (75, 120, 165):
        moved_clock.set_to(utc(2026, 6, 1, 12, 0, 0) + timedelta(seconds=seconds + 1))
        assert scheduling.fire_due_schedules() == 1
    assert [t.strftime("%M:%S") for t in runs(schedule)] == ["01:15", "02:00", "02:45"]


# -- a simulated day, four firing workers --------------------------------------------------


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_four_workers_fire_each_minute_of_a_day_with_dst_exactly_once(moved_clock):
    """Sunday 1 November 2026 in New York: 25 hours, the 1 a.m. hour twice. Four threads, each
    on its own connection, fire the schedule at each simulated minute; in the middle all stop
    for 90 minutes (no worker running) and start again. (The ``skip`` policy after such a
    stop is tested above, on one worker.)"""
    start = datetime(2026, 11, 1, 0, 0, tzinfo=NEW_YORK).astimezone(UTC)
    end = datetime(2026, 11, 2, 0, 0, tzinfo=NEW_YORK).astimezone(UTC)
    moved_clock.set_to(start)
    schedule = make_schedule(cron="* * * * *", time_zone="America/New_York")
    down_from, down_until = start + timedelta(hours=12), start + timedelta(hours=13, minutes=30)

    fire_now = threading.Barrier(5)
    fired = threading.Barrier(5)
    stop = threading.Event()
    made = []
    failures = []

    def worker():
        try:
            while True:
                fire_now.wait()
                if stop.is_set():
                    return
                made.append(scheduling.fire_due_schedules())
                fired.wait()
        except Exception as error:  # reported by the test, not lost in the thread
            failures.append(error)
            fire_now.abort()
            fired.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    fired_at = []
    minute = start + timedelta(minutes=1)
    rng = random.Random(1)
    try:
        while minute < end:
            if not down_from <= minute < down_until:
                moved_clock.set_to(minute + timedelta(seconds=rng.uniform(0, 40)))
                fire_now.wait(timeout=30)
                fired.wait(timeout=30)
                fired_at.append(minute)
            minute += timedelta(minutes=1)
    finally:
        stop.set()
        if not failures:
            fire_now.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=30)
    assert not failures

    # The day had 1,499 minutes after midnight; the workers looked at all but 90 of them.
    assert len(fired_at) == 1499 - 90
    # Each got its job, once; the first look after the stop made one, for the latest minute.
    assert runs(schedule) == fired_at
    assert down_until in fired_at
    assert sum(made) == len(fired_at)
    # Seen from New York: the repeated hour ran twice, 60 distinct UTC minutes each time.
    local_hours = [t.astimezone(NEW_YORK).strftime("%H") for t in fired_at]
    assert local_hours.count("01") == 120


# -- the command line ----------------------------------------------------------------------


def cli(*args) -> str:
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_schedules_from_the_command_line(moved_clock):
    added = cli(
        "schedule", "add", "nightly", "--cron", "30 2 * * *", "--time-zone", "Europe/Berlin",
        "--concurrency", "forbid", "--image", "alpine:3.20", "--env", "MODE=full",
        "--secret", "API=k3y", "--host", "mock", "--memory", "64", "--", "sh", "-c", "echo hi",
    )  # fmt: skip
    assert "Schedule: nightly" in added
    assert "When: 30 2 * * * (Europe/Berlin)" in added
    assert "Next runs: 2026-06-02 00:30:00 UTC, 2026-06-03 00:30:00 UTC" in added  # project's zone
    schedule = Schedule.objects.get(name="nightly")
    assert schedule.job_spec["command"] == ["sh", "-c", "echo hi"]
    assert schedule.job_spec["memory_limit"] == 64
    assert "k3y" not in str(schedule.job_spec)  # stored sealed

    data = json.loads(cli("schedule", "show", "nightly", "--json"))
    assert data["upcoming"][:2] == ["2026-06-02T00:30:00+00:00", "2026-06-03T00:30:00+00:00"]
    assert data["concurrency"] == "forbid"
    assert "nightly" in cli("schedule", "list")
    cli("schedule", "pause", "nightly")
    assert "paused" in cli("schedule", "list")
    cli("schedule", "resume", "nightly")
    assert not Schedule.objects.get().paused
    assert "Removed schedule 'nightly'" in cli("schedule", "remove", "nightly")
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_a_bad_schedule_from_the_command_line_names_the_problem(moved_clock):
    with pytest.raises(CommandError, match="cron: '0 25 \\* \\* \\*' is not a cron expression"):
        cli("schedule", "add", "bad", "--cron", "0 25 * * *", "--image", "x")
    with pytest.raises(CommandError, match="job_spec: memory_limit: Ensure"):
        cli("schedule", "add", "bad", "--every", "60", "--image", "x", "--memory", "-1")
    with pytest.raises(CommandError, match="no schedule named 'nope'"):
        cli("schedule", "pause", "nope")
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_schedule_commands_check_the_users_permissions(moved_clock, django_user_model):
    django_user_model.objects.create_user("viewer")
    with pytest.raises(CommandError, match="may not add schedules"):
        cli("--user", "viewer", "schedule", "add", "s", "--every", "60", "--image", "x")


# -- the admin -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_lists_schedules_with_next_and_last_runs(moved_clock, admin_client):
    schedule = make_schedule(name="hourly-report", cron="0 * * * *")
    moved_clock.set_to(utc(2026, 6, 1, 13, 0, 5))
    scheduling.fire_due_schedules()
    job = schedule.runs.get()
    page = admin_client.get(reverse("admin:container_manager_schedule_changelist"))
    text = page.content.decode()
    assert "hourly-report" in text
    assert "0 * * * * (UTC)" in text
    assert "2026-06-01 14:00" in text  # next run
    assert reverse("admin:container_manager_containerjob_change", args=[job.pk]) in text
    assert "Queued" in text  # the last run's outcome

    change = admin_client.get(
        reverse("admin:container_manager_schedule_change", args=[schedule.pk])
    )
    assert "2026-06-01 15:00" in change.content.decode()  # among the next runs
    job_page = admin_client.get(
        reverse("admin:container_manager_containerjob_change", args=[job.pk])
    )
    assert "hourly-report</a>, due 2026-06-01 13:00" in job_page.content.decode()


@pytest.mark.django_db
def test_the_admin_refuses_a_bad_job_spec_on_its_field(moved_clock, admin_client):
    form = {
        "name": "bad",
        "job_spec": json.dumps({"image": "x", "memory_limit": -1}),
        "cron": "* * * * *",
        "time_zone": "UTC",
        "missed_runs": "run_once",
        "concurrency": "allow",
        "successful_runs_to_keep": 3,
        "failed_runs_to_keep": 1,
    }
    page = admin_client.post(reverse("admin:container_manager_schedule_add"), form)
    assert page.status_code == 200
    assert "memory_limit: Ensure this value is greater than or equal to" in page.content.decode()
    assert not Schedule.objects.exists()

    form["job_spec"] = json.dumps({"image": "x", "env": {"DB_PASSWORD": "pw"}})
    admin_client.post(reverse("admin:container_manager_schedule_add"), form)
    schedule = Schedule.objects.get()
    assert schedule.next_run_at == utc(2026, 6, 1, 12, 1)
    assert schedule.job_spec["env"]["DB_PASSWORD"] != "pw"  # sealed
    assert schedule.created_by.username == "admin"


# -- real worker processes -----------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_four_worker_processes_stopped_and_started_fire_each_due_time_once(
    moved_clock, worker_processes
):
    """Four `process_container_jobs` read the test's clock; it moves a minute at a time,
    through the end of daylight saving time in New York, once the minute has its job. In
    the middle every worker is stopped for ten minutes, then four start again."""
    start = datetime(2026, 11, 1, 1, 50, tzinfo=NEW_YORK).astimezone(UTC)
    moved_clock.set_to(start)
    schedule = make_schedule(
        cron="* * * * *",
        time_zone="America/New_York",
        job_spec={"image": "x", "host": "mock"},
        successful_runs_to_keep=100,  # the workers run them: keep them all to count them
    )
    env = {"CONTAINER_MANAGER_SETTINGS": json.dumps(clock.SETTINGS)}

    def start_workers():
        for _ in range(4):
            worker_processes.start("--poll-interval", "0.05", env=env)

    def fire_at(minute):
        moved_clock.set_to(minute + timedelta(seconds=rng.uniform(0, 30)))
        deadline = time.monotonic() + 15
        while Schedule.objects.get(pk=schedule.pk).next_run_at <= minute:
            assert time.monotonic() < deadline, worker_processes.logs()[-3000:]
            time.sleep(0.02)
        fired_at.append(minute)

    rng = random.Random(2)
    fired_at = []
    start_workers()
    minutes = [start + timedelta(minutes=n) for n in range(1, 30)]
    for minute in minutes[:14]:  # 01:51 EDT to 01:04 EST
        fire_at(minute)
    for proc in worker_processes.procs:
        proc.send_signal(signal.SIGTERM)
    for proc in worker_processes.procs:
        assert proc.wait(30) == 0, worker_processes.logs()[-3000:]
    start_workers()
    # minutes[14:23] fall due with no worker running; the first look after makes one job.
    for minute in minutes[23:]:
        fire_at(minute)

    assert runs(schedule) == fired_at
    assert fired_at[14] == minutes[23]
    # Seen from New York: 01:51 to 01:59 EDT, then the clocks go back: 01:00 to 01:04 EST.
    local = [t.astimezone(NEW_YORK).strftime("%H:%M") for t in fired_at]
    assert local[:14] == [f"01:{m}" for m in range(51, 60)] + [f"01:0{m}" for m in range(5)]

"""Schedules: each due time of a cron expression or interval fires exactly one job.

Workers call ``fire_due_schedules`` about once a second. A schedule's ``next_run_at`` is its
cursor: the first due time not yet dealt with. Firing one schedule is one short transaction:

1. lock its row (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL: a worker firing it
   already is skipped, not waited for; SQLite's write lock serialises the whole transaction)
   and read the cursor again under the lock: a worker that fired it first moved it past now;
2. decide what the due times up to now get (``missed_runs``, ``starting_deadline_seconds``,
   ``concurrency``) and make at most one job, for one due time;
3. move the cursor past now.

The cursor makes a second worker find nothing to do. The database makes it certain: a job
records the due time it was made for (``scheduled_run_at``), unique per schedule, so even two
firings that both got past the cursor (clocks far apart, a lock lost with its connection)
insert one job between them; the other's INSERT fails and its transaction rolls back whole.

Missed runs, as Kubernetes CronJobs: when the cursor is more than one due time behind (no
worker ran for a while), ``run_once`` makes one job for the latest missed due time and
``skip`` makes none; either way, a due time older than the starting deadline is not run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils.module_loading import import_string

from . import api, bulk_operations, logs
from . import secrets as sealing
from .conf import setting
from .models import ContainerJob, Schedule
from .serializers import validation_error_lines
from .states import ACTIVE, TERMINAL, JobStatus

logger = logs.get_logger(__name__)

# A schedule's job spec: create_job's arguments, less what only makes sense for one job.
NOT_IN_SCHEDULES = ("hold", "scheduled_for")


def now() -> datetime:
    """The time schedules are fired at: ``CLOCK`` (normally Django's ``timezone.now``)."""
    return import_string(setting("CLOCK"))()


# -- defining ------------------------------------------------------------------------------


def check_job_spec(spec) -> None:
    """Refuse a job spec that ``create_job`` would refuse, naming each problem."""
    bulk_operations.check_spec(spec)
    if given := [key for key in NOT_IN_SCHEDULES if key in spec]:
        raise ValidationError(f"{', '.join(given)}: not for a schedule's job spec")
    api.build_job(**spec)


def save_schedule(schedule: Schedule, move_cursor: bool = True) -> Schedule:
    """Validate and save ``schedule``; ``move_cursor``: its next run is the next due time
    from now (a new schedule, or a changed time); otherwise the cursor stays.

    Secret values of the spec's env are stored sealed, as a job's are. Raises
    ValidationError naming each bad field (``job_spec`` for the spec)."""
    errors: dict[str, list[str]] = {}
    try:
        schedule.full_clean(exclude=["job_spec"])
    except ValidationError as error:
        errors = error.message_dict
    try:
        check_job_spec(schedule.job_spec)
    except ValidationError as error:
        errors["job_spec"] = validation_error_lines(error)
    if errors:
        raise ValidationError(errors)
    # Stored as a job stores them: secret-named values and ``secrets`` sealed, in env.
    spec = dict(schedule.job_spec)
    secrets = spec.pop("secrets", None) or {}
    if spec.get("env") or secrets:
        spec["env"] = api.with_secrets(sealing.seal_environment(spec.get("env") or {}), secrets)
    schedule.job_spec = spec
    if move_cursor or schedule.next_run_at is None:
        _restart_cursor(schedule)
    schedule.save()
    return schedule


def _restart_cursor(schedule: Schedule) -> None:
    """The schedule's next run: its first due time from now on."""
    schedule.next_run_at = None  # not an interval's anchor: intervals then count from now
    schedule.next_run_at = schedule.next_due_after(now())


def pause(schedule: Schedule) -> None:
    Schedule.objects.filter(pk=schedule.pk).update(paused=True)
    schedule.paused = True


def resume(schedule: Schedule) -> None:
    """Run again from the next due time: what fell due while paused is not caught up."""
    _restart_cursor(schedule)
    Schedule.objects.filter(pk=schedule.pk).update(paused=False, next_run_at=schedule.next_run_at)
    schedule.paused = False


# -- firing --------------------------------------------------------------------------------


def due_schedules(moment: datetime):
    return Schedule.objects.filter(paused=False, next_run_at__lte=moment)


def fire_due_schedules(batch: int = 100) -> int:
    """Fire every schedule that is due (at most ``batch``); returns how many jobs were made."""
    moment = now()
    made = 0
    for schedule_id in due_schedules(moment).values_list("pk", flat=True)[:batch]:
        try:
            made += fire(schedule_id, moment) is not None
        except DatabaseError:
            raise  # the worker's loop waits for the database and tries again
        except Exception:  # one broken schedule must not stop the others, nor the worker
            logger.exception("schedule %s could not be fired", schedule_id)
    return made


def fire(schedule_id: int, moment: datetime) -> ContainerJob | None:
    """Deal with schedule ``schedule_id``'s due times up to ``moment``: the job made, if any."""
    with transaction.atomic():
        schedule = _lock_if_due(schedule_id, moment)
        if schedule is None:
            return None
        latest = schedule.latest_due_at_or_before(moment)
        assert latest is not None  # locked because its cursor is at or before moment
        missed = latest > schedule.next_run_at  # more than one due time went by unfired
        job = None
        why_not = _why_not_run(schedule, latest, missed, moment)
        if not why_not:
            try:
                job = _run(schedule, latest)
            except ValidationError as error:
                # Its host went inactive, its image was disallowed...: say so on the
                # schedule and go on; a schedule must never stop the worker firing it.
                why_not = "its job spec is refused now: " + "; ".join(validation_error_lines(error))
        if why_not:
            schedule.last_skip_reason = f"{latest:%Y-%m-%d %H:%M:%S} UTC not run: {why_not}"
            logger.warning("schedule %s: %s", schedule.name, schedule.last_skip_reason)
        schedule.next_run_at = schedule.next_due_after(moment)
        schedule.save(update_fields=["next_run_at", "last_run_at", "last_skip_reason"])
        if job is not None:
            _keep_history(schedule)
    return job


def _lock_if_due(schedule_id: int, moment: datetime) -> Schedule | None:
    schedules = due_schedules(moment).filter(pk=schedule_id)
    if connection.features.has_select_for_update_skip_locked:
        schedules = schedules.select_for_update(skip_locked=True)
    return schedules.first()


def _why_not_run(schedule: Schedule, due: datetime, missed: bool, moment: datetime) -> str:
    if missed and schedule.missed_runs == Schedule.MissedRuns.SKIP:
        return "due times were missed (no worker ran) and missed runs are skipped"
    deadline = schedule.starting_deadline_seconds
    if deadline is not None and moment - due > timedelta(seconds=deadline):
        return f"more than the starting deadline ({deadline} s) late"
    if schedule.concurrency == Schedule.Concurrency.FORBID and _unfinished(schedule).exists():
        return "the previous run is unfinished and concurrent runs are forbidden"
    return ""


def _unfinished(schedule: Schedule):
    return schedule.runs.exclude(status__in=TERMINAL)


def _run(schedule: Schedule, due: datetime) -> ContainerJob | None:
    """The job for ``due``; ValidationError (nothing changed) if the spec is refused now."""
    spec = {"name": schedule.name, **schedule.job_spec}
    job = api.build_job(
        **spec, schedule=schedule, scheduled_run_at=due, created_by=schedule.created_by
    )
    if schedule.concurrency == Schedule.Concurrency.REPLACE:
        for previous in _unfinished(schedule).without_output():
            _replace(previous, schedule)
    try:
        # A savepoint: a due time that has its job already fails this INSERT alone, and the
        # cursor still moves past it.
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        if not schedule.runs.filter(scheduled_run_at=due).exists():
            raise
        logger.warning("schedule %s: due time %s has its job already", schedule.name, due)
        return None
    schedule.last_run_at = due
    return job


def _replace(previous: ContainerJob, schedule: Schedule) -> None:
    try:
        api.cancel_job(previous)
    except ValidationError:
        return  # it ended meanwhile
    if previous.status in ACTIVE:
        logger.info("schedule %s: replacing run %s (cancel requested)", schedule.name, previous.pk)


def _keep_history(schedule: Schedule) -> None:
    """Delete finished runs beyond the schedule's history limits, oldest first.

    Trimmed at every run, so the finished runs read here are few: the kept ones and what
    ended since."""
    finished = schedule.runs.filter(status__in=TERMINAL).order_by("-scheduled_run_at")
    kept = {"completed": schedule.successful_runs_to_keep, "other": schedule.failed_runs_to_keep}
    old = []
    for pk, status in finished.values_list("pk", "status"):
        kind = "completed" if status == JobStatus.COMPLETED else "other"
        if kept[kind] > 0:
            kept[kind] -= 1
        else:
            old.append(pk)
    if old:
        # Runs other jobs depend on are kept: deleting them would lose that record.
        ContainerJob.objects.filter(pk__in=old, dependents__isnull=True).delete()

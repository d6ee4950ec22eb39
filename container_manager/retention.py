"""Retention: deleting finished jobs past an age, or emptying their stored output.

A job may keep megabytes of output, and the table grows with every job; ``prune_jobs``
deletes the finished jobs older than an age (``manage.py prune_container_jobs``, or every day
in a worker with ``RETENTION_DAYS``), or with ``trim_output`` empties their stdout and stderr
but keeps the record (``--trim-output``, ``RETENTION_TRIM_OUTPUT_DAYS``). A prune also
deletes the records of workers gone for longer than the same age once no job and no attempt
names them (``prune_workers``): each worker process leaves one, and a fleet restarted daily
would otherwise leave thousands.

Both walk the old jobs in order of ``finished_at`` (``cm_job_finished_idx``) in batches of
``batch_size``, each in a transaction of its own, so no lock is held for longer than one
batch and workers claiming and finishing jobs meanwhile are never held up for long. Each
batch locks its rows (skipping rows another transaction holds) and deletes only those still
matching after the lock, so a job retried meanwhile stays.

Never deleted: a job not finished (only completed, failed, timed-out and cancelled jobs are
candidates, so no job a worker holds or that waits to run), a job that an unfinished job
depends on (it would stop waiting for it), and a job whose webhook delivery is still owed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import logs
from .conf import setting
from .models import (
    ContainerJob,
    ContainerJobQuerySet,
    HousekeepingTask,
    JobAttempt,
    WebhookDelivery,
    Worker,
)
from .queue import lost_workers
from .states import FAILURES, TERMINAL

logger = logs.get_logger(__name__)

BATCH_SIZE = 1000
AGE = re.compile(r"(\d+)([dhm])")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}
UNFINISHED = [status for status in ContainerJob.Status.values if status not in TERMINAL]
# The name of the daily retention among the workers' housekeeping tasks.
DAILY = "retention"


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta; ValidationError saying what is wrong."""
    match = AGE.fullmatch(text.strip())
    if not match or int(match[1]) == 0:
        raise ValidationError(
            f"must be a whole number of days, hours or minutes greater than 0, written 30d, "
            f"12h or 90m; not {text!r}"
        )
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def check_statuses(statuses: Iterable[str] | None, keep_failed: bool = False) -> list[str]:
    """The final statuses asked for (all of them by default), less the failures with
    ``keep_failed``; ValidationError naming any status that is not final."""
    wanted = list(TERMINAL if statuses is None else statuses)
    if refused := [status for status in wanted if status not in TERMINAL]:
        raise ValidationError(
            f"{', '.join(map(repr, refused))}: only finished jobs can be pruned; the final "
            f"statuses are {', '.join(sorted(TERMINAL))}"
        )
    return sorted({status for status in wanted if not (keep_failed and status in FAILURES)})


def finished_before(
    older_than: timedelta, statuses: Iterable[str] | None = None, keep_failed: bool = False
) -> ContainerJobQuerySet:
    """The jobs that ended more than ``older_than`` ago in ``statuses`` (default: any final
    status), less the failures with ``keep_failed``."""
    cutoff = timezone.now() - older_than
    return ContainerJob.objects.filter(
        status__in=check_statuses(statuses, keep_failed), finished_at__lt=cutoff
    )


def deletable(jobs: ContainerJobQuerySet) -> ContainerJobQuerySet:
    """``jobs`` less those that must stay: jobs an unfinished job depends on, and jobs
    whose webhook delivery is still owed."""
    return jobs.exclude(dependents__status__in=UNFINISHED).exclude(
        webhook_deliveries__status=WebhookDelivery.Status.PENDING
    )


@dataclass
class Progress:
    """What a prune or trim did (or, dry, would do)."""

    jobs: int = 0
    batches: int = 0
    stopped: bool = False  # told to stop before the end


def prune_jobs(
    older_than: timedelta,
    *,
    statuses: Iterable[str] | None = None,
    keep_failed: bool = False,
    trim_output: bool = False,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    pause: float = 0.0,
    stop: threading.Event | None = None,
) -> Progress:
    """Delete the finished jobs older than ``older_than`` (with their attempts), a batch per
    transaction, sleeping ``pause`` seconds between batches. ``trim_output``: empty their
    stored stdout and stderr instead, keeping the rest of their record. ``dry_run``: only
    count them. ``stop``: once set, no batch is begun."""
    jobs = finished_before(older_than, statuses, keep_failed)
    if trim_output:
        jobs, apply = jobs.exclude(stdout="", stderr=""), _trim
    else:
        jobs, apply = deletable(jobs), _delete
    if dry_run:
        return Progress(jobs=jobs.count())
    return _in_batches(jobs, apply, batch_size, pause, stop or threading.Event())


def prune_workers(older_than: timedelta, dry_run: bool = False) -> int:
    """Delete the records of workers that are gone (stopped, or silent past
    ``WORKER_TIMEOUT``) and last beat more than ``older_than`` ago, and that no job or
    attempt names any more (an attempt's worker is part of its history: the record stays
    as long as the job does). Returns how many (dry: would be)."""
    cutoff = timezone.now() - older_than
    gone = (
        lost_workers()
        .filter(last_heartbeat__lt=cutoff)
        .exclude(pk__in=ContainerJob.objects.filter(worker__isnull=False).values("worker"))
        .exclude(pk__in=JobAttempt.objects.filter(worker__isnull=False).values("worker"))
    )
    if dry_run:
        return gone.count()
    _total, by_model = gone.delete()
    return by_model.get(Worker._meta.label, 0)


def _delete(jobs: ContainerJobQuerySet) -> int:
    _total, by_model = ContainerJob.objects.filter(pk__in=_lock(jobs)).only("pk").delete()
    return by_model.get(ContainerJob._meta.label, 0)


def _trim(jobs: ContainerJobQuerySet) -> int:
    return ContainerJob.objects.filter(pk__in=_lock(jobs)).update(stdout="", stderr="")


def _lock(jobs: ContainerJobQuerySet) -> list:
    """The pks of ``jobs`` that still match, locked until the batch's transaction ends (rows
    another transaction holds are skipped: they are looked at again next time)."""
    return list(jobs.select_for_update(skip_locked=True).values_list("pk", flat=True))


def _in_batches(
    jobs: ContainerJobQuerySet, apply, batch_size: int, pause: float, stop: threading.Event
) -> Progress:
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, not {batch_size}")
    done = Progress()
    for batch in _pages(jobs, batch_size):
        if done.batches and pause:
            stop.wait(pause)
        if stop.is_set():
            done.stopped = True
            break
        with transaction.atomic():
            done.jobs += apply(jobs.filter(pk__in=batch))
        done.batches += 1
    return done


def _pages(jobs: ContainerJobQuerySet, size: int) -> Iterator[list]:
    """The pks of ``jobs`` by ``size``, in order of finished_at and pk: each page starts
    after the last one (a key, not an offset), so rows kept earlier are not read again."""
    after: tuple[datetime, object] | None = None
    while True:
        page = jobs
        if after is not None:
            finished, pk = after
            page = page.filter(Q(finished_at__gt=finished) | Q(finished_at=finished, pk__gt=pk))
        rows = list(page.order_by("finished_at", "pk").values_list("finished_at", "pk")[:size])
        if not rows:
            return
        yield [pk for _finished, pk in rows]
        after = rows[-1]


# -- the workers' daily retention --------------------------------------------------------------


def daily_retention_due() -> bool:
    """Whether this worker runs today's retention: true for one worker a day, when
    ``RETENTION_DAYS`` or ``RETENTION_TRIM_OUTPUT_DAYS`` is set."""
    if setting("RETENTION_DAYS") is None and setting("RETENTION_TRIM_OUTPUT_DAYS") is None:
        return False
    return HousekeepingTask.objects.take(DAILY, timedelta(days=1))


def apply_retention_settings(
    pause: float = 0.1, stop: threading.Event | None = None
) -> tuple[Progress, Progress]:
    """Trim and prune as the settings say (what a worker does once a day); returns what was
    trimmed and what was deleted. ``pause`` between batches leaves the database to others.
    ``stop`` (the worker stopping): once set, no batch is begun, and the day's retention is
    given back for the next worker to take up where this one stopped."""
    stop = stop or threading.Event()
    trimmed = deleted = Progress()
    workers = 0
    if (days := setting("RETENTION_TRIM_OUTPUT_DAYS")) is not None:
        trimmed = prune_jobs(timedelta(days=days), trim_output=True, pause=pause, stop=stop)
    if (days := setting("RETENTION_DAYS")) is not None and not stop.is_set():
        deleted = prune_jobs(timedelta(days=days), pause=pause, stop=stop)
        if not stop.is_set():
            workers = prune_workers(timedelta(days=days))
    if stop.is_set():
        HousekeepingTask.objects.give_back(DAILY)
        logger.info(
            "retention: stopped with the worker after emptying the output of %d job(s) and "
            "deleting %d; the next worker takes it up",
            trimmed.jobs,
            deleted.jobs,
        )
    elif trimmed.jobs or deleted.jobs or workers or logger.isEnabledFor(logging.DEBUG):
        logger.info(
            "retention: emptied the output of %d job(s), deleted %d job(s) and the records "
            "of %d worker(s) gone",
            trimmed.jobs,
            deleted.jobs,
            workers,
        )
    return trimmed, deleted

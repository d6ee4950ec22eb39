"""Prometheus metrics of the whole cluster, read from the database when they are scraped.

Every number comes from the jobs table at scrape time, so any process answers for all the
workers: the view users add to their URLconf (``metrics_view``, or ``include`` of
``container_manager.metrics.urls``) and each worker's own port (``process_container_jobs
--metrics-port``) say the same thing. Counters kept in each worker's memory would reset with
the worker and would need every worker scraped and summed; the table already holds each
job's times.

A scrape is five statements, each answered from an index (``cm_job_status_host_idx`` for
the jobs not finished, ``cm_job_ready_idx`` for the oldest ready one, ``cm_job_finished_idx``
for the jobs finished in the window), plus the hosts and the live workers: its cost follows
the jobs not yet finished and those finished in the last ``METRICS_WINDOW_SECONDS``, never
the size of the table. So what ended is counted over that window (a gauge, and histograms
of that window: Prometheus' gauge histograms), not since the table began: rows are pruned
(see ``retention``), and counting a million of them at each scrape would cost seconds.

Needs the ``metrics`` extra (``prometheus-client``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db import connections
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.db.models.functions import Coalesce, Greatest
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone

from .conf import setting
from .models import ContainerJob, ExecutorHost, Worker
from .queue import live_workers, ready_jobs
from .states import ACTIVE, TERMINAL, JobStatus

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        GaugeHistogramMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.utils import floatToGoString
except ImportError:  # pragma: no cover - the extra is missing; ``registry`` says so
    CollectorRegistry = None  # type: ignore[assignment,misc]

UNFINISHED = [status for status in JobStatus.values if status not in TERMINAL]
# Upper bounds (seconds) of the histograms' buckets: a job of seconds to a day, a pickup of
# milliseconds (instant, on PostgreSQL) to an hour (a backlog).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
PICKUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 3600)
NO_HOST = "(none)"  # the host label of jobs routing has not placed yet


class MetricsUnavailable(ImportError):
    """The ``metrics`` extra is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "the Prometheus metrics need prometheus-client: "
            "pip install 'django-container-jobs[metrics]'"
        )


class JobsCollector:
    """The collector: each ``collect`` reads the database (see the module's docstring).

    ``close_connections``: close this thread's database connections after each scrape (for
    the worker's port, whose server answers each scrape in a new thread)."""

    def __init__(self, close_connections: bool = False):
        self.close_connections = close_connections

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            queue, load = self._queue()
            metrics = [*queue, *self._hosts(load), *self._finished(), *self._workers()]
        finally:
            if self.close_connections:
                connections.close_all()
        yield from metrics
        took = GaugeMetricFamily(
            "container_jobs_scrape_duration_seconds",
            "How long reading these metrics from the database took.",
        )
        took.add_metric([], time.perf_counter() - started)
        yield took

    # -- the queue -----------------------------------------------------------------

    def _queue(self) -> tuple[list[Metric], dict[int, int]]:
        """The unfinished jobs by status and host, the oldest ready one's wait; and each
        host's load (its jobs launching or running), for ``_hosts``."""
        jobs = GaugeMetricFamily(
            "container_jobs",
            "Jobs not yet finished, by status and host (host '(none)': not routed yet).",
            labels=["status", "host"],
        )
        load: dict[int, int] = {}
        rows = (
            ContainerJob.objects.filter(status__in=UNFINISHED)
            .order_by()
            .values_list("host", "host__name", "status")
            .annotate(jobs=Count("*"))
        )
        for host_id, host_name, status, count in rows:
            jobs.add_metric([status, host_name or NO_HOST], count)
            if status in ACTIVE and host_id is not None:
                load[host_id] = load.get(host_id, 0) + count
        oldest = GaugeMetricFamily(
            "container_jobs_oldest_ready_age_seconds",
            "How long the longest-waiting ready job has waited (0: none is waiting).",
        )
        since = ready_jobs().order_by().aggregate(since=Min("scheduled_for"))["since"]
        oldest.add_metric([], (timezone.now() - since).total_seconds() if since else 0.0)
        return [jobs, oldest], load

    def _hosts(self, load: dict[int, int]) -> list[Metric]:
        running = GaugeMetricFamily(
            "container_jobs_host_running",
            "Jobs launching or running on each active host, across all workers.",
            labels=["host"],
        )
        capacity = GaugeMetricFamily(
            "container_jobs_host_capacity",
            "Jobs each active host may run at once (max_concurrent_jobs).",
            labels=["host"],
        )
        health = GaugeMetricFamily(
            "container_jobs_host_health",
            "1 for each active host's health status (healthy, unhealthy, unknown).",
            labels=["host", "status"],
        )
        hosts = ExecutorHost.objects.filter(is_active=True).values_list(
            "pk", "name", "max_concurrent_jobs", "health_status"
        )
        for pk, name, most, status in hosts:
            running.add_metric([name], load.get(pk, 0))
            capacity.add_metric([name], most)
            for choice in ExecutorHost.Health.values:
                health.add_metric([name, choice], float(choice == status))
        return [running, capacity, health]

    # -- what finished in the window -------------------------------------------------

    def _finished(self) -> list[Metric]:
        window = setting("METRICS_WINDOW_SECONDS")
        recent = ContainerJob.objects.filter(
            finished_at__gte=timezone.now() - timedelta(seconds=window)
        ).order_by()
        finished = GaugeMetricFamily(
            "container_jobs_finished",
            f"Jobs that ended in the last {window:g} s (METRICS_WINDOW_SECONDS), by final "
            "status and failure kind ('none': it did not fail).",
            labels=["status", "kind"],
        )
        for status, kind, count in recent.values_list("status", "failure_kind").annotate(
            jobs=Count("*")
        ):
            finished.add_metric([status, kind or "none"], count)
        ran = recent.filter(started_at__isnull=False)
        duration = _histogram(
            ran,
            F("finished_at") - F("started_at"),
            "container_jobs_duration_seconds",
            f"How long the jobs that ended in the last {window:g} s ran (started to finished).",
            DURATION_BUCKETS,
        )
        # Ready from the later of when it was queued and its scheduled time, until running.
        ready_at = Greatest(Coalesce("queued_at", "scheduled_for"), "scheduled_for")
        pickup = _histogram(
            ran,
            F("started_at") - ready_at,
            "container_jobs_pickup_latency_seconds",
            f"For the jobs that ended in the last {window:g} s: from ready to running "
            "(the claim and the launch).",
            PICKUP_BUCKETS,
        )
        window_gauge = GaugeMetricFamily(
            "container_jobs_window_seconds",
            "The window the finished-job metrics count over (METRICS_WINDOW_SECONDS).",
        )
        window_gauge.add_metric([], window)
        return [finished, duration, pickup, window_gauge]

    # -- workers ---------------------------------------------------------------------

    def _workers(self) -> list[Metric]:
        alive = GaugeMetricFamily(
            "container_jobs_workers_alive",
            "Workers whose heartbeat is within WORKER_TIMEOUT.",
        )
        heartbeat = GaugeMetricFamily(
            "container_jobs_worker_last_heartbeat_timestamp_seconds",
            "When each live worker last beat (Unix time).",
            labels=["worker", "hostname", "pid"],
        )
        workers: list[Worker] = list(live_workers())
        alive.add_metric([], len(workers))
        for worker in workers:
            labels = [str(worker.pk), worker.hostname, str(worker.pid)]
            heartbeat.add_metric(labels, worker.last_heartbeat.timestamp())
        return [alive, heartbeat]


def _histogram(
    jobs: Any, seconds: Any, name: str, documentation: str, bounds: tuple[float, ...]
) -> Metric:
    """A gauge histogram of ``seconds`` (an expression) over ``jobs``, counted in SQL: one
    statement, a filtered count per bucket, whatever the number of jobs."""
    expression = ExpressionWrapper(seconds, output_field=DurationField())
    annotated = jobs.annotate(took=expression)
    counts = annotated.aggregate(
        total=Sum("took"),
        count=Count("pk"),
        **{
            f"le_{index}": Count("pk", filter=Q(took__lte=timedelta(seconds=bound)))
            for index, bound in enumerate(bounds)
        },
    )
    buckets = [(floatToGoString(bound), counts[f"le_{i}"]) for i, bound in enumerate(bounds)]
    buckets.append(("+Inf", counts["count"]))
    total = counts["total"]
    family = GaugeHistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, total.total_seconds() if total is not None else 0.0)
    return family


# -- exposing them -------------------------------------------------------------------------


def registry(close_connections: bool = False) -> CollectorRegistry:
    """A registry holding only the jobs collector (not the process metrics of whatever
    process answers: the cluster's numbers are the same from any of them)."""
    if CollectorRegistry is None:
        raise MetricsUnavailable()
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(JobsCollector(close_connections))
    return metrics


def allowed(request: HttpRequest) -> int:
    """200 for a request that may read the metrics, else the status to answer with: 401
    without credentials, 403 with a wrong token or a user lacking the permission."""
    token = setting("METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 403
        # Constant time: how far a guess matches must not show in how long the answer takes.
        return 200 if hmac.compare_digest(given.strip().encode(), token.encode()) else 403
    user = request.user if hasattr(request, "user") else None
    if user is None or not user.is_authenticated:
        return 401
    return 200 if user.has_perm("container_manager.view_containerjob") else 403


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format, for a bearer token (``METRICS_TOKEN``) or a
    logged-in user who may view jobs."""
    status = allowed(request)
    if status != 200:
        response = HttpResponse(status=status)
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="container_manager metrics"'
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def serve(port: int, address: str = "0.0.0.0") -> Any:
    """Answer scrapes on ``port`` in threads of this process (the worker's ``--metrics-port``).
    Returns the server, whose ``shutdown()`` stops it."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=registry(True))
    return server


# ``path("metrics/", include("container_manager.metrics"))`` in a URLconf serves them there.
urlpatterns = [path("", metrics_view, name="container_manager_metrics")]

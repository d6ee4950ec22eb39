"""What operations cost with a million jobs in the table, on PostgreSQL: a metrics scrape,
and a prune of 30 days' worth of jobs while two workers run jobs.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/ops.py [--jobs 1000000] [--json ops.json]

In a scratch database beside the one DATABASE_URL names (dropped at the end), fills --jobs
finished jobs, each with an attempt and some output, that ended over the last 90 days (one
INSERT ... SELECT). Then:

- scrape: the metrics (``metrics.registry()`` rendered as Prometheus text), median of 5 wall
  times, and the sum of the EXPLAIN ANALYZE execution times of the statements one scrape runs;
- prune: ``retention.prune_jobs`` of the jobs older than 60 days (about a third of them) while
  two ``process_container_jobs`` processes run mock jobs fed at a steady rate. The baseline is
  the same feed for the same time before the prune: the longest and the 99th-percentile
  pickup (queued to running) of the jobs fed during each. A worker stalled by the prune's
  locks would show as a pickup of seconds.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    database_url,
    drop_postgres,
    fresh_postgres,
    setup_django,
    start_worker,
    stop,
)

FILL = """
INSERT INTO container_manager_containerjob (
    id, name, image, command, working_dir, environment_overrides, timeout_seconds,
    run_as_user, read_only_root, privileged, host_network, host_pid, capabilities, mounts,
    priority, scheduled_for, max_attempts, retry_on, status, execution_id, exit_code,
    stdout, stderr, attempts, last_error, failure_kind, created_at, queued_at, started_at,
    finished_at, host_id, requested_host_id, executor_type, host_labels, gpus, webhook_url
)
SELECT
    md5(n::text || 'job')::uuid, 'job ' || n, 'busybox:latest', '["echo", "hello"]'::jsonb, '',
    '{}'::jsonb, 3600, '', false, false, false, false, '[]'::jsonb, '[]'::jsonb,
    0, ended - interval '10 seconds', 1, '[]'::jsonb, status, md5(n::text),
    CASE status WHEN 'completed' THEN 0 WHEN 'failed' THEN 1 END,
    repeat('output line ' || n || E'\\n', 20), '', 1,
    CASE WHEN status IN ('failed', 'timed_out') THEN 'exited with code 1' ELSE '' END,
    CASE status WHEN 'failed' THEN 'exit_code' WHEN 'timed_out' THEN 'timeout' ELSE '' END,
    ended - interval '10 seconds', ended - interval '10 seconds', ended - interval '5 seconds',
    ended, %(host)s, NULL, '', '{}'::jsonb, 0, ''
FROM (
    SELECT n, now() - (n * interval '90 days' / %(jobs)s) AS ended,
        CASE
            WHEN mod(n, 20) = 0 THEN 'failed'
            WHEN mod(n, 50) = 1 THEN 'timed_out'
            WHEN mod(n, 100) = 2 THEN 'cancelled'
            ELSE 'completed'
        END AS status
    FROM generate_series(1, %(jobs)s) AS n
) AS jobs
"""

ATTEMPTS = """
INSERT INTO container_manager_jobattempt (
    job_id, number, host_id, execution_id, routing, tries, status, exit_code, error,
    started_at, finished_at
)
SELECT id, 1, host_id, execution_id, '', '[]'::jsonb, status, exit_code, last_error,
    queued_at, finished_at
FROM container_manager_containerjob
"""

FEED_PER_SECOND = 20


def fill(jobs: int) -> float:
    from django.db import connection

    from container_manager.models import ExecutorHost

    host = ExecutorHost.objects.create(name="old", executor_type="mock")
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(FILL, {"jobs": jobs, "host": host.pk})
        cursor.execute(ATTEMPTS)
        cursor.execute("VACUUM ANALYZE")
    return time.perf_counter() - start


def scrape() -> dict:
    from django.db import connection
    from prometheus_client import generate_latest

    from container_manager import metrics

    statements: list[tuple[str, tuple]] = []

    def keep(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    registry = metrics.registry()
    generate_latest(registry)  # warm: the operator's scrape every 15 s, not the first
    times = []
    for _ in range(5):
        start = time.perf_counter()
        body = generate_latest(registry)
        times.append((time.perf_counter() - start) * 1000)
    with connection.execute_wrapper(keep):
        generate_latest(registry)
    explained = 0.0
    with connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            explained += cursor.fetchone()[0][0]["Execution Time"]
    return {
        "scrape_ms_median": statistics.median(times),
        "scrape_ms_max": max(times),
        "statements": len(statements),
        "explain_analyze_ms_total": explained,
        "bytes": len(body),
    }


def feed(seconds: float, stop_feeding: threading.Event | None = None) -> list:
    """Queue FEED_PER_SECOND mock jobs a second for ``seconds`` (or until told to stop)."""
    from django.db import connections

    from container_manager.api import create_job

    made = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not (stop_feeding and stop_feeding.is_set()):
            made.append(create_job("img", ["true"], host="live").pk)
            time.sleep(1 / FEED_PER_SECOND)
    finally:
        connections.close_all()
    return made


def pickups(job_ids: list) -> dict:
    from container_manager.models import ContainerJob

    deadline = time.monotonic() + 60
    jobs = ContainerJob.objects.filter(pk__in=job_ids)
    while jobs.filter(started_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    waits = sorted(
        (started - queued).total_seconds() * 1000
        for queued, started in jobs.values_list("queued_at", "started_at")
        if started is not None
    )
    return {
        "jobs": len(job_ids),
        "picked_up": len(waits),
        "pickup_ms_p99": waits[int(len(waits) * 0.99) - 1] if waits else None,
        "pickup_ms_max": waits[-1] if waits else None,
    }


def prune_under_load() -> dict:
    from django.utils import timezone

    from container_manager import retention
    from container_manager.models import ContainerJob, ExecutorHost

    ExecutorHost.objects.create(name="live", executor_type="mock", max_concurrent_jobs=50)
    workers = [start_worker("--poll-interval", "0.5") for _ in range(2)]
    try:
        time.sleep(3)  # the workers are up and listening
        baseline_ids = feed(20)
        before = ContainerJob.objects.count()
        # What must survive: every job that ended after the cutoff (or has not ended); a
        # minute's margin, as the prune takes its cutoff a moment later.
        cutoff = timezone.now() - timedelta(days=60)
        newer = ContainerJob.objects.exclude(finished_at__lt=cutoff + timedelta(minutes=1))
        kept_before = newer.count()
        dry_start = time.perf_counter()
        to_delete = retention.prune_jobs(timedelta(days=60), dry_run=True).jobs
        dry_ms = (time.perf_counter() - dry_start) * 1000
        done = threading.Event()
        fed: list = []
        feeder = threading.Thread(target=lambda: fed.extend(feed(3600, done)))
        feeder.start()
        start = time.perf_counter()
        pruned = retention.prune_jobs(timedelta(days=60))
        prune_s = time.perf_counter() - start
        done.set()
        feeder.join()
        kept_after = newer.count()
        return {
            "jobs_before": before,
            "dry_run_count": to_delete,
            "dry_run_ms": dry_ms,
            "deleted": pruned.jobs,
            "batches": pruned.batches,
            "prune_s": prune_s,
            "deleted_per_s": pruned.jobs / prune_s,
            # Nothing wrongly deleted: the newer jobs all stay, the fed ones with them, and
            # the prune deleted what its dry run counted.
            "newer_jobs_kept": kept_after == kept_before + len(fed),
            "left_older_than_cutoff": ContainerJob.objects.filter(
                finished_at__lt=cutoff - timedelta(minutes=1)
            ).count(),
            "baseline": pickups(baseline_ids),
            "during_prune": pickups(fed),
        }
    finally:
        stop(*workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    url = fresh_postgres(database_url(server, f"cm_bench_ops_{args.jobs}"))
    os.environ["CONTAINER_MANAGER_LOG_LEVEL"] = "WARNING"
    try:
        setup_django(url)
        results = {"jobs": args.jobs, "fill_s": fill(args.jobs)}
        results["scrape"] = scrape()
        results["prune"] = prune_under_load()
        results["scrape_after_prune"] = scrape()
    finally:
        from django.db import connections

        connections.close_all()
        drop_postgres(url)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    s, p = results["scrape"], results["prune"]
    before, during = p["baseline"], p["during_prune"]
    rows = [
        ("jobs in the table", f"{results['jobs']:,} + an attempt each ({results['fill_s']:.0f} s)"),
        ("scrape, wall, median of 5", f"{s['scrape_ms_median']:.1f} ms, {s['statements']} SQL"),
        ("scrape, EXPLAIN ANALYZE total", f"{s['explain_analyze_ms_total']:.1f} ms"),
        ("prune 60d --dry-run", f"{p['dry_run_count']:,} jobs in {p['dry_run_ms']:.0f} ms"),
        ("prune 60d", f"{p['deleted']:,} jobs, {p['batches']} batches, {p['prune_s']:.1f} s"),
        (
            "nothing wrongly deleted",
            f"newer jobs all kept: {p['newer_jobs_kept']}; deleted = dry run: "
            f"{p['deleted'] == p['dry_run_count']}; older left: {p['left_older_than_cutoff']}",
        ),
        ("pickup p99 / max, baseline", pickup_cell(before)),
        ("pickup p99 / max, during prune", pickup_cell(during)),
        ("scrape after the prune", f"{results['scrape_after_prune']['scrape_ms_median']:.1f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def pickup_cell(figures: dict) -> str:
    if figures["pickup_ms_max"] is None:
        return f"none of {figures['jobs']} jobs picked up"
    return (
        f"{figures['pickup_ms_p99']:.0f} / {figures['pickup_ms_max']:.0f} ms "
        f"({figures['picked_up']} of {figures['jobs']} jobs)"
    )


if __name__ == "__main__":
    main()

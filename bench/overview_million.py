"""How the operator pages perform with a million jobs in the table, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/overview_million.py

Times the queries behind the queue overview, the job list's first page (unfiltered, filtered
by status and host, searched by execution id), a job's "why is it waiting" and the lookup by
execution id in two scratch databases beside the one DATABASE_URL names: one of --jobs jobs
(default 1,000,000; filled in one INSERT ... SELECT, about 80 s) and, as the baseline, one of
--baseline-jobs (1,000). The ratio of their medians says whether the pages stay flat as the
table grows. The databases are kept for reruns (--refill to start again, --drop to remove).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FILL = """
INSERT INTO container_manager_containerjob (
    id, name, image, command, working_dir, environment_overrides, timeout_seconds,
    run_as_user, read_only_root, privileged, host_network, host_pid, capabilities, mounts,
    priority, scheduled_for, max_attempts, retry_on, status, execution_id, exit_code,
    stdout, stderr, attempts, last_error, created_at, queued_at, started_at, finished_at,
    host_id, requested_host_id, executor_type, host_labels, gpus
)
SELECT
    md5(n::text || 'job')::uuid,
    'job ' || n, 'busybox:latest', '["echo", "hello"]'::jsonb, '', '{}'::jsonb, 3600,
    '', false, false, false, false, '[]'::jsonb, '[]'::jsonb,
    0, created, 1, '["failed"]'::jsonb, status,
    CASE WHEN status IN ('queued') THEN '' ELSE md5(n::text) END,
    CASE status WHEN 'completed' THEN 0 WHEN 'failed' THEN 1 END,
    'hello ' || n || E'\n', '',
    CASE WHEN status = 'queued' THEN 0 ELSE 1 END,
    CASE WHEN status IN ('failed', 'timed_out') THEN 'exited with code 1' ELSE '' END,
    created, created,
    CASE WHEN status IN ('queued') THEN NULL ELSE created + interval '1 second' END,
    CASE WHEN status IN ('queued', 'running') THEN NULL ELSE created + interval '3 seconds' END,
    CASE WHEN status = 'queued' THEN NULL ELSE 1 + mod(n, %(hosts)s) END,
    NULL, '', '{}'::jsonb, 0
FROM (
    SELECT n,
        now() - (n * interval '2 seconds') AS created,
        CASE
            WHEN n <= %(queued)s THEN 'queued'
            WHEN n <= %(queued)s + %(running)s THEN 'running'
            WHEN mod(n, 50) = 0 THEN 'failed'
            WHEN mod(n, 333) = 0 THEN 'timed_out'
            WHEN mod(n, 501) = 0 THEN 'cancelled'
            ELSE 'completed'
        END AS status
    FROM generate_series(1, %(jobs)s) AS n
) AS jobs
"""


def scratch_url(url: str, jobs: int) -> tuple[str, str]:
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_overview_{jobs}"
    return urlunsplit(parts._replace(path="/" + name)), name


def timings(function, repeat: int) -> list[float]:
    function()  # warm caches: an operator's second look, not the first after a restart
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return times


def prepare(base: str, jobs: int, refill: bool, drop: bool) -> str | None:
    """The scratch database for ``jobs`` jobs (created if missing); None once dropped."""
    import psycopg

    url, name = scratch_url(base, jobs)
    with psycopg.connect(base, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and (refill or drop):
            admin.execute(f'DROP DATABASE "{name}"')
            exists = None
        if drop:
            print(f"dropped {name}")
            return None
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
    return url


def measure(jobs: int, repeat: int) -> dict[str, list[float]]:
    """In this process's DATABASE_URL (a scratch database): fill it with ``jobs`` jobs if it
    is empty, then time each case ``repeat`` times."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from container_manager.models import ContainerJob, ExecutorHost, QueueOverview, Worker

    if not ContainerJob.objects.exists():
        hosts = 4
        for number in range(1, hosts + 1):
            ExecutorHost.objects.create(
                name=f"engine-{number}", executor_type="mock", max_concurrent_jobs=8
            )
        host_ids = list(ExecutorHost.objects.order_by("pk").values_list("pk", flat=True))
        assert host_ids == list(range(1, hosts + 1)), "fill expects host ids 1..N"
        Worker.objects.create(hostname="bench", pid=os.getpid())
        start = time.perf_counter()
        queued = min(5000, jobs // 5)
        with connection.cursor() as cursor:
            cursor.execute(FILL, {"jobs": jobs, "hosts": hosts, "queued": queued, "running": 20})
            cursor.execute("VACUUM ANALYZE container_manager_containerjob")
        print(f"filled {jobs:,} jobs in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    from django.contrib.admin.sites import site
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    from container_manager.overview import queue_overview, why_waiting

    queued_job = ContainerJob.objects.filter(status="queued").order_by("created_at").first()
    some = ContainerJob.objects.filter(status="completed").order_by("created_at").first()
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench"
    )
    job_admin = site._registry[ContainerJob]
    overview_admin = site._registry[QueueOverview]
    factory = RequestFactory()

    def get(view, path):
        request = factory.get(path)
        request.user = user
        view(request).render()

    def changelist(query: str = ""):
        get(job_admin.changelist_view, "/admin/container_manager/containerjob/" + query)

    cases = {
        "queue overview (queries)": queue_overview,
        "queue overview page": lambda: get(
            overview_admin.changelist_view, "/admin/container_manager/queueoverview/"
        ),
        "job list, first page": changelist,
        "job list, status=failed": lambda: changelist("?status__exact=failed"),
        "job list, host=engine-2": lambda: changelist("?host__id__exact=2"),
        "job list, search by execution id": lambda: changelist(f"?q={some.execution_id}"),
        "why waiting (a queued job)": lambda: why_waiting(queued_job),
        "lookup by execution id": lambda: ContainerJob.objects.identified_by(
            some.execution_id
        ).get(),
    }
    return {label: timings(function, repeat) for label, function in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--baseline-jobs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each size")
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--drop", action="store_true")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # internal: one size
    options = parser.parse_args()
    if options.measure:
        json.dump(measure(options.measure, options.repeat), sys.stdout)
        return
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL server (postgres://...)")
    sizes = [options.baseline_jobs, options.jobs]
    urls = {jobs: prepare(base, jobs, options.refill, options.drop) for jobs in sizes}
    if options.drop:
        return
    # Each size in a process of its own (one database per Django process), taking turns.
    times: dict[int, dict[str, list[float]]] = {jobs: {} for jobs in sizes}
    for _ in range(options.rounds):
        for jobs in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(jobs), "--repeat", str(options.repeat)],
                env={**os.environ, "DATABASE_URL": urls[jobs]},
                check=True,
                capture_output=True,
                text=True,
            )
            sys.stderr.write(out.stderr)
            for label, runs in json.loads(out.stdout).items():
                times[jobs].setdefault(label, []).extend(runs)
    big, small = options.jobs, options.baseline_jobs
    print(
        f"ms, min / median / max of {options.rounds * options.repeat} runs; "
        f"ratio: median with {big:,} jobs over median with {small:,}"
    )
    print(f"  {'':<34} {f'{big:,} jobs':>22} {f'{small:,} jobs':>22} {'ratio':>7}")
    for label, runs in times[big].items():
        base_runs = times[small][label]
        ratio = statistics.median(runs) / statistics.median(base_runs)
        print(f"  {label:<34} {spread(runs):>22} {spread(base_runs):>22} {ratio:7.2f}")


def spread(runs: list[float]) -> str:
    return f"{min(runs):.1f} / {statistics.median(runs):.1f} / {max(runs):.1f}"


if __name__ == "__main__":
    main()

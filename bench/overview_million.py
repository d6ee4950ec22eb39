"""How the operator pages perform with a million jobs in the table, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python bench/overview_million.py

Creates a scratch database beside the one DATABASE_URL names (``<name>_overview_bench``),
fills it with --jobs jobs (default 1,000,000) in one INSERT ... SELECT (about a minute),
then times, over repeated runs, the queries behind the queue overview, the job list's first
page (unfiltered, filtered by status and host, searched by execution id), a job's "why is it
waiting" and the lookup by execution id. Keeps the scratch database for reruns (--refill to
start again, --drop to remove it).
"""

import argparse
import os
import statistics
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


def scratch_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = (parts.path.lstrip("/") or "postgres") + "_overview_bench"
    return urlunsplit(parts._replace(path="/" + name)), name


def timed(function, repeat: int) -> tuple[float, float, float]:
    function()  # warm caches: an operator's second look, not the first after a restart
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--drop", action="store_true")
    options = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL server (postgres://...)")
    url, name = scratch_url(base)

    import psycopg

    with psycopg.connect(base, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and (options.refill or options.drop):
            admin.execute(f'DROP DATABASE "{name}"')
            exists = None
        if options.drop:
            print(f"dropped {name}")
            return
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from container_manager.models import ContainerJob, ExecutorHost, Worker

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
        with connection.cursor() as cursor:
            cursor.execute(
                FILL, {"jobs": options.jobs, "hosts": hosts, "queued": 5000, "running": 20}
            )
            cursor.execute("VACUUM ANALYZE container_manager_containerjob")
        print(f"filled {options.jobs:,} jobs in {time.perf_counter() - start:.1f} s")

    from django.contrib.admin.sites import site
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    from container_manager.overview import queue_overview, why_waiting

    total = ContainerJob.objects.count()
    print(f"{total:,} jobs in {name}; times in ms (min / median / max of {options.repeat})")
    queued = ContainerJob.objects.filter(status="queued").order_by("created_at").first()
    some = ContainerJob.objects.filter(status="completed").order_by("created_at").first()
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench"
    )
    from container_manager.models import QueueOverview

    model_admin = site._registry[ContainerJob]
    overview_admin = site._registry[QueueOverview]
    factory = RequestFactory()

    def changelist(query: str = ""):
        request = factory.get("/admin/container_manager/containerjob/" + query)
        request.user = user
        response = model_admin.changelist_view(request)
        response.render()

    def overview():
        request = factory.get("/admin/container_manager/queueoverview/")
        request.user = user
        overview_admin.changelist_view(request).render()

    cases = {
        "queue overview (queries)": queue_overview,
        "queue overview page": overview,
        "job list, first page": changelist,
        "job list, status=failed": lambda: changelist("?status__exact=failed"),
        "job list, host=engine-2": lambda: changelist("?host__id__exact=2"),
        "job list, search by execution id": lambda: changelist(f"?q={some.execution_id}"),
        "why waiting (a queued job)": lambda: why_waiting(queued),
        "lookup by execution id": lambda: ContainerJob.objects.get(execution_id=some.execution_id),
    }
    for label, function in cases.items():
        low, median, high = timed(function, options.repeat)
        print(f"  {label:<36} {low:8.1f} {median:8.1f} {high:8.1f}")


if __name__ == "__main__":
    main()

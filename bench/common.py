"""Shared set-up for the benchmarks: a database of their own and real worker processes."""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    os.environ.setdefault("CONTAINER_MANAGER_LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


# -- databases -------------------------------------------------------------------------


def database_url(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _admin(url: str, *statements: str) -> None:
    """Run ``statements`` on the server's ``postgres`` database (CREATE/DROP DATABASE
    cannot run inside a transaction, nor while connected to the database they name)."""
    import psycopg

    with psycopg.connect(database_url(url, "postgres"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def fresh_postgres(url: str, template: str | None = None) -> str:
    """Drop and create the database named in ``url`` (a copy of ``template`` if given,
    which is much faster than migrating again); returns the url."""
    name = urlsplit(url).path.lstrip("/")
    copy = f' TEMPLATE "{template}"' if template else ""
    _admin(url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"{copy}')
    return url


def drop_postgres(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def use_database(url: str) -> None:
    """Point this process's Django connection, and the workers it starts from now on, at
    another database of the same server (one process, one fresh database per workload)."""
    from django.db import connections

    connections.close_all()
    connections["default"].settings_dict["NAME"] = urlsplit(url).path.lstrip("/")
    os.environ["DATABASE_URL"] = url


def clone_jobs(template, count: int, status: str = "queued", notify: bool = True) -> None:
    """Insert ``count`` copies of the job ``template`` (new ids, created and queued now) in
    one INSERT ... SELECT: thousands of jobs in well under a second, and the same columns
    as a job made by ``create_job``, whatever the model grows. ``notify=False`` skips the
    queued-job trigger for fills nobody listens to."""
    from django.db import connection, transaction

    from container_manager.models import ContainerJob

    fresh = {"id": "gen_random_uuid()", "status": "%s", "created_at": "now()"}
    fresh["queued_at"] = "now()" if status == "queued" else "NULL"
    columns = [f.column for f in ContainerJob._meta.concrete_fields]
    values = [fresh.get(column, f'"{column}"') for column in columns]
    table = ContainerJob._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        if not notify:  # triggers off for this transaction only
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            f'INSERT INTO "{table}" ({", ".join(columns)}) '
            f'SELECT {", ".join(values)} FROM "{table}", generate_series(1, %s) '
            "WHERE id = %s",
            [status, count, template.pk],
        )


# -- processes -------------------------------------------------------------------------


def start_worker(*args, settings=None, env=None):
    env = {
        **os.environ,
        "CONTAINER_MANAGER_SETTINGS": json.dumps(settings or {}),
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", *args],
        cwd=ROOT,
        env=env,
    )


def stop(*processes, timeout: float = 30) -> None:
    """SIGTERM (a graceful stop), then SIGKILL for any process still there after
    ``timeout`` seconds: a benchmark never leaves a worker behind."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def wait_for(predicate, timeout=120, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)


# -- figures ---------------------------------------------------------------------------


def summary(values_ms):
    values = sorted(values_ms)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return statistics.median(values), p95


def machine(server: str) -> str:
    """What the figures were measured on: cores, CPU model, PostgreSQL (at the ``server``
    url) and Docker versions."""
    import psycopg

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    with psycopg.connect(database_url(server, "postgres")) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores, {model}; PostgreSQL {postgres}; "
        f"Docker {docker or 'not reachable'}; Python {platform.python_version()}"
    )


def run_json(argv: list, env: dict, what: str, timeout: float = 600) -> dict | None:
    """Run a baseline's driver; its JSON answer on stdout (None when it prints nothing)."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout) if done.stdout.strip() else None

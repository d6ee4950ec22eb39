"""Shared set-up for the benchmarks: a database of their own and real worker processes."""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def fresh_postgres(url: str) -> str:
    """Drop and create the database named in ``url``; returns the url."""
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url


def start_worker(*args, settings=None):
    env = {
        **os.environ,
        "CONTAINER_MANAGER_SETTINGS": json.dumps(settings or {}),
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", *args],
        cwd=ROOT,
        env=env,
    )


def wait_for(predicate, timeout=120, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)


def summary(values_ms):
    values = sorted(values_ms)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return statistics.median(values), p95

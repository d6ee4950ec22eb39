"""Coming from django-container-manager 1.0.14: a database made by the real package (its own
virtualenv, its migrations, rows through its models), then our migrate and import run as
an operator would, as processes. The SQLite pass converts a SQLite file, the PostgreSQL pass
a fresh database of the same server."""

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from baselines import dcm_venv  # noqa: E402
from common import database_url, drop_postgres, fresh_postgres  # noqa: E402

FILL = Path(__file__).resolve().parent / "legacy" / "fill_dcm_1x.py"
pytestmark = pytest.mark.processes

# Our rows as JSON, read through our models by the converted database's own process.
DUMP = """
import json
from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost
hosts = {h.name: [h.executor_type, h.connection_string, h.is_active, h.max_concurrent_jobs,
                  h.weight, h.executor_config] for h in ExecutorHost.objects.all()}
templates = {t.name: [t.description, t.environment_variables] for t in
             EnvironmentVariableTemplate.objects.all()}
jobs = {str(j.pk): dict(
    status=j.status, command=j.command, image=j.image, execution_id=j.execution_id,
    exit_code=j.exit_code, stdout=j.stdout, stderr=j.stderr, env=j.get_environment(),
    stored_env=j.environment_overrides, host=j.host and j.host.name,
    requested_host=j.requested_host and j.requested_host.name,
    template=j.environment_template and j.environment_template.name,
    memory=j.memory_limit, cpu=j.cpu_limit, timeout=j.timeout_seconds,
    peak=j.peak_memory_bytes, priority=j.priority, max_attempts=j.max_attempts,
    last_error=j.last_error, attempts=[a.execution_id for a in j.attempt_set.all()],
    created_by=j.created_by_id, working_dir=j.working_dir,
    started=j.started_at is not None, finished=j.finished_at is not None,
    found=[str(f.pk) for f in ContainerJob.objects.identified_by(j.execution_id)]
    if j.execution_id else []) for j in ContainerJob.objects.all()}
print(json.dumps({"hosts": hosts, "templates": templates, "jobs": jobs}))
"""


@pytest.fixture(scope="module")
def old_package():
    try:
        dcm_venv.ensure_venv()
    except subprocess.CalledProcessError as error:
        if IN_CI:
            raise
        pytest.skip(f"django-container-manager 1.0.14 could not be installed: {error}")


@pytest.fixture
def legacy_url(old_package, tmp_path):
    """A database of our suite's kind for the old package (dropped afterwards)."""
    if connection.vendor != "postgresql":
        yield f"sqlite:///{tmp_path / 'legacy.sqlite3'}"
        return
    url = fresh_postgres(database_url(os.environ["DATABASE_URL"], f"cm_legacy_{uuid.uuid4().hex}"))
    yield url
    drop_postgres(url)


def manage(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def dump(url: str) -> dict:
    return json.loads(ok(manage(url, "shell", "--no-imports", "-c", DUMP)))


def test_hosts_templates_and_jobs_carried_over_once(legacy_url):
    made = dcm_venv.run_script(legacy_url, FILL)
    jobs = made["jobs"]
    ok(manage(legacy_url, "migrate", "--no-input"))

    dry = ok(manage(legacy_url, "import_container_manager_1x", "--dry-run"))
    assert "Would import 2 host(s), 1 template(s), 10 job(s)" in dry
    assert dump(legacy_url) == {"hosts": {}, "templates": {}, "jobs": {}}

    out = ok(manage(legacy_url, "import_container_manager_1x"))
    assert "Imported 2 host(s), 1 template(s), 10 job(s)" in out
    # Each loss is said, per row.
    assert "host 'scw': not carried over: executor_type: unknown executor type 'scaleway'" in out
    assert f"job {jobs['bad_quotes']}: not carried over: command" in out
    assert f"job {jobs['running']}: was running: imported as failed" in out
    assert f"job {jobs['pending']}: not carried: description" in out
    assert f"job {jobs['completed']}: not carried: cpu_usage_percent" in out
    assert "template 'base': not carried: created_by" in out

    ours = dump(legacy_url)
    assert ours["hosts"] == {
        "docker-main": [
            "docker",
            "unix:///var/run/docker.sock",
            True,
            7,
            300,
            {"pull_policy": "never"},
        ],
        "cloud": [
            "cloudrun",
            "projects/acme/locations/europe-west1",
            False,
            10,
            100,
            {"project": "acme", "region": "europe-west1"},
        ],
    }
    assert ours["templates"] == {"base": ["shared", "LOG_LEVEL=info\nURL=http://x/?a=b"]}
    got = ours["jobs"]
    assert set(got) == set(jobs.values()) - {jobs["bad_quotes"]}
    done = got[jobs["completed"]]
    assert done["command"] == ["sh", "-c", 'echo "hello world"; exit 0']  # shlex.split
    assert done["env"] == {
        "LOG_LEVEL": "info",
        "URL": "http://x/?a=b",
        "GREETING": "hi there",
        "API_TOKEN": "s3cret",
    }
    assert done["stored_env"]["API_TOKEN"] != "s3cret"  # sealed at rest, as ours are
    assert {
        k: done[k]
        for k in (
            "status",
            "execution_id",
            "exit_code",
            "stdout",
            "stderr",
            "host",
            "template",
            "memory",
            "cpu",
            "timeout",
            "peak",
            "priority",
            "attempts",
            "created_by",
            "working_dir",
            "started",
            "finished",
            "found",
        )
    } == {
        "status": "completed",
        "execution_id": "4f1c0ffee",
        "exit_code": 0,
        "stdout": "hello world\n",
        "stderr": "a warning\n",
        "host": "docker-main",
        "template": "base",
        "memory": 64,
        "cpu": 0.5,
        "timeout": 120,
        "peak": 1234567,
        "priority": 80,
        "attempts": ["4f1c0ffee"],
        "created_by": made["user"],
        "working_dir": "/tmp",
        "started": True,
        "finished": True,
        "found": [jobs["completed"]],
    }
    statuses = {key: got[jobs[key]]["status"] for key in jobs if key != "bad_quotes"}
    assert statuses == {
        "completed": "completed",
        "failed": "failed",
        "timeout": "timed_out",
        "cancelled": "cancelled",
        "pending": "pending",
        "queued": "queued",
        "retrying": "queued",
        "running": "failed",
        "scaleway": "completed",
        "scaleway_queued": "pending",
    }
    assert got[jobs["timeout"]]["execution_id"] == "slow01"
    assert got[jobs["queued"]]["requested_host"] == "docker-main"
    assert got[jobs["queued"]]["max_attempts"] == 5
    assert got[jobs["queued"]]["attempts"] == []
    assert "live01" in got[jobs["running"]]["last_error"]
    assert got[jobs["scaleway"]]["host"] is None
    assert got[jobs["scaleway"]]["execution_id"] == "scw-exec-1"

    again = manage(legacy_url, "import_container_manager_1x")
    assert again.returncode == 1
    assert "already imported" in again.stderr and "Nothing was changed" in again.stderr
    assert dump(legacy_url) == ours
    # A second migrate finds nothing to do.
    assert "No migrations to apply" in ok(manage(legacy_url, "migrate", "--no-input"))


def old_tables(url: str) -> tuple[set, set]:
    """The tables of the database and its container_manager migration names."""
    tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    migrations = "SELECT name FROM django_migrations WHERE app = 'container_manager'"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return {r[0] for r in db.execute(tables)}, {r[0] for r in db.execute(migrations)}
    import psycopg

    with psycopg.connect(url) as db:
        names = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in names}, {r[0] for r in db.execute(migrations)}


def test_an_unknown_schema_is_refused_unchanged(legacy_url):
    dcm_venv.run_script(legacy_url, FILL, "--drop-column", "docker_log")
    before = old_tables(legacy_url)

    refused = manage(legacy_url, "migrate", "--no-input")
    assert refused.returncode != 0
    assert "table container_manager_containerjob lacks columns: docker_log" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    tables, migrations = old_tables(legacy_url)
    # Others' apps may have migrated (admin, sessions); ours changed nothing.
    assert migrations == before[1]
    assert {t for t in tables if t.startswith("container_manager")} == {
        t for t in before[0] if t.startswith("container_manager")
    }
    assert (
        "no container_manager_legacy_" in manage(legacy_url, "import_container_manager_1x").stderr
    )

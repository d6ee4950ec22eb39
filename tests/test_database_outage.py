"""Real workers, and a follower of a job's output, while their PostgreSQL server restarts
under them.

The server is the private cluster of tests/services.py (port 5433), never the shared one. The
test does not use the Django test database at all: it makes a database of its own on the
private cluster, migrates it and fills it through subprocesses, and reads it with psycopg, so
it runs in the PostgreSQL pass of scripts/test only.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection  # noqa: F401 - read by the skipif condition below

from . import services

# The private cluster's fixtures, visible to this module's tests.
private_postgres_cluster = services.private_postgres_cluster
private_postgres = services.private_postgres

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "cm_outage"
JOBS = 400
WORKERS = 3
DEADLINE_SECONDS = 180  # the whole run: first job to the last worker's exit
FINAL_STATUSES = {"completed", "failed", "timed_out", "cancelled"}
STALL_SECONDS = 30  # no job changed status for this long while some are unfinished: give up

pytestmark = [
    pytest.mark.processes,
    # One pass is enough (the private cluster is the same in both), and it is the PostgreSQL one.
    pytest.mark.skipif(
        "connection.vendor != 'postgresql'",
        reason="uses a private PostgreSQL cluster; runs in the PostgreSQL pass only",
    ),
]


def manage(env, *args, timeout=120):
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"harness: manage.py {' '.join(args[:1])} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def start_worker(env, log_path, *args):
    """A ``process_container_jobs`` process writing to ``log_path`` (kept as ``log_path``)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    return proc


def snapshot(url):
    """Job status counts and attempt figures, or the error if the server cannot be reached."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            statuses = dict(
                conn.execute(
                    "SELECT status, count(*) FROM container_manager_containerjob GROUP BY status"
                ).fetchall()
            )
            attempt_rows = conn.execute(
                "SELECT count(*) FROM container_manager_jobattempt"
            ).fetchone()[0]
            # Jobs without exactly one attempt row, and jobs whose attempts counter is not 1.
            wrong_rows = conn.execute(
                "SELECT count(*) FROM ("
                "  SELECT j.id FROM container_manager_containerjob j"
                "  LEFT JOIN container_manager_jobattempt a ON a.job_id = j.id"
                "  GROUP BY j.id HAVING count(a.id) <> 1) AS odd"
            ).fetchone()[0]
            attempts = dict(
                conn.execute(
                    "SELECT attempts, count(*) FROM container_manager_containerjob "
                    "GROUP BY attempts"
                ).fetchall()
            )
            unfinished = conn.execute(
                "SELECT id::text, status, attempts FROM container_manager_containerjob "
                "WHERE status <> 'completed' ORDER BY id LIMIT 10"
            ).fetchall()
    except psycopg.Error as error:
        return {"error": str(error).strip()}
    return {
        "statuses": statuses,
        "attempt_rows": attempt_rows,
        "jobs_without_exactly_one_attempt_row": wrong_rows,
        "jobs_by_attempts": attempts,
        "unfinished_sample": unfinished,
    }


def problems(path, limit=25):
    """The worker's WARNING/ERROR headlines and the last line of each traceback."""
    headline = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (WARNING|ERROR|CRITICAL) ")
    exception = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Shutdown)\w*: ")
    lines = Path(path).read_text(errors="replace").splitlines()
    found = [line[:300] for line in lines if headline.match(line) or exception.match(line)]
    more = f"\n  ... and {len(found) - limit} more" if len(found) > limit else ""
    return "\n".join(found[:limit]) + more


def mentions(paths, job_ids):
    """Every log line naming one of ``job_ids``: what each worker did with a stranded job."""
    lines = []
    for path in paths:
        for line in Path(path).read_text(errors="replace").splitlines():
            if any(job_id in line for job_id in job_ids):
                lines.append(f"{Path(path).name}: {line[:300]}")
    return "\n".join(lines)


def tail(path, lines=10):
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def test_database_restarted_twice_under_three_workers_strands_nothing(private_postgres, tmp_path):
    url = private_postgres.fresh_database(DATABASE)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONTAINER_MANAGER_LOG_LEVEL": "INFO",
        "CONTAINER_MANAGER_SETTINGS": json.dumps({"HEARTBEAT_INTERVAL": 0.5, "WORKER_TIMEOUT": 5}),
    }
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        "from container_manager.models import ContainerJob, ExecutorHost\n"
        "host = ExecutorHost.objects.create(name='mock', executor_type='mock',"
        " max_concurrent_jobs=50, executor_config={'duration_seconds': 0.05})\n"
        "ContainerJob.objects.bulk_create("
        f"ContainerJob(image='img', command=[str(i)], host=host) for i in range({JOBS}))\n",
    )
    before = snapshot(url)
    assert before.get("statuses") == {"queued": JOBS}, f"harness: jobs not queued: {before}"

    procs = []
    restart_at = [JOBS // 3, 2 * JOBS // 3]  # completed jobs before each restart
    still_running = []
    events = []  # what happened when, for the failure message
    started = time.monotonic()

    def note(what):
        events.append(f"{time.monotonic() - started:6.1f}s {what}")

    try:
        for i in range(WORKERS):
            args = ["--until-idle", "--poll-interval", "0.1", "--max-concurrent", "4"]
            procs.append(start_worker(env, tmp_path / f"worker-{i}.log", *args))
        note(f"started {WORKERS} workers: pids {[p.pid for p in procs]}")

        last_seen, last_change = None, time.monotonic()
        gave_up = None
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            seen = snapshot(url)
            statuses = seen.get("statuses")
            if statuses is not None:
                if statuses != last_seen:
                    last_seen, last_change = statuses, now
                done = statuses.get("completed", 0)
                if restart_at and done >= restart_at[0]:
                    note(f"restart (fast) at {statuses}")
                    private_postgres.restart()
                    note("server accepting connections again")
                    restart_at.pop(0)
                    continue
            unfinished = statuses is None or set(statuses) - FINAL_STATUSES
            if now - started > DEADLINE_SECONDS:
                gave_up = f"deadline of {DEADLINE_SECONDS} s passed"
            elif unfinished and now - last_change > STALL_SECONDS:
                gave_up = f"no job changed status for {STALL_SECONDS} s"
            if gave_up:
                note(f"gave up: {gave_up}; last snapshot {seen}")
                break
            time.sleep(0.2)
        else:
            note("all workers exited")
    finally:
        still_running = [p.pid for p in procs if p.poll() is None]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    final = snapshot(url)
    exit_codes = {p.pid: p.returncode for p in procs}
    statuses = final.get("statuses") or {}
    headline = (
        f"{JOBS - statuses.get('completed', 0)} of {JOBS} jobs not completed after "
        f"{2 - len(restart_at)} fast restart(s): {statuses or final}"
        + (
            f"; {len(still_running)} worker(s) never exited and were killed"
            if still_running
            else ""
        )
    )
    report = "\n".join(
        [
            headline,
            f"final: {final}",
            f"worker exit codes: {exit_codes}"
            + (f" (killed by the test, still running: {still_running})" if still_running else ""),
            f"restarts left undone (completed-job thresholds): {restart_at}",
            "timeline:",
            *events,
            "log lines naming the unfinished jobs above:",
            mentions(
                [p.log_path for p in procs],
                [row[0] for row in final.get("unfinished_sample", [])],
            ),
            *(
                f"--- worker {p.pid} ({p.log_path}): warnings and errors\n{problems(p.log_path)}"
                f"\n--- worker {p.pid}: last lines\n{tail(p.log_path)}"
                for p in procs
            ),
        ]
    )
    assert not still_running and not restart_at, report
    assert all(code == 0 for code in exit_codes.values()), report
    assert final.get("statuses") == {"completed": JOBS}, report
    assert final.get("attempt_rows") == JOBS, report
    assert final.get("jobs_without_exactly_one_attempt_row") == 0, report
    assert final.get("jobs_by_attempts") == {1: JOBS}, report


SCHEDULE_MINUTES = 24
RESTART_AT_MINUTES = (8, 16)


def test_a_schedule_fires_each_due_minute_once_through_database_restarts(
    private_postgres, tmp_path, monkeypatch
):
    """Three workers fire a ``* * * * *`` schedule while the test's clock moves a minute at
    a time; twice, the server is restarted the moment a minute falls due, while the workers'
    firings are in flight. Every minute gets its one job, and the workers carry on."""
    from datetime import UTC, datetime, timedelta

    from . import clock

    url = private_postgres.fresh_database("cm_outage_schedules")
    monkeypatch.setenv(clock.FILE_VARIABLE, str(tmp_path / "clock"))
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    clock.set_to(start)
    settings = {**clock.SETTINGS, "HEARTBEAT_INTERVAL": 0.5, "WORKER_TIMEOUT": 5}
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONTAINER_MANAGER_LOG_LEVEL": "INFO",
        "CONTAINER_MANAGER_SETTINGS": json.dumps(settings),
    }
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        "from container_manager import scheduling\n"
        "from container_manager.models import ExecutorHost, Schedule\n"
        "ExecutorHost.objects.create(name='mock', executor_type='mock', max_concurrent_jobs=50)\n"
        "scheduling.save_schedule(Schedule(name='each-minute', cron='* * * * *',"
        " job_spec={'image': 'x', 'host': 'mock'}, successful_runs_to_keep=100))\n",
    )

    def cursor_after(minute) -> bool:
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                (cursor,) = conn.execute(
                    "SELECT next_run_at FROM container_manager_schedule"
                ).fetchone()
        except psycopg.Error:
            return False  # restarting
        return cursor > minute

    procs = []
    try:
        for i in range(3):
            procs.append(start_worker(env, tmp_path / f"worker-{i}.log", "--poll-interval", "0.05"))
        logs = lambda: "\n".join(  # noqa: E731
            f"--- worker {p.pid}\n{problems(p.log_path)}\n{tail(p.log_path)}" for p in procs
        )
        minutes = [start + timedelta(minutes=n) for n in range(1, SCHEDULE_MINUTES + 1)]
        for number, minute in enumerate(minutes, start=1):
            clock.set_to(minute + timedelta(seconds=1))
            if number in RESTART_AT_MINUTES:
                private_postgres.restart()
            deadline = time.monotonic() + 30
            while not cursor_after(minute):
                assert time.monotonic() < deadline, f"{minute} never fired\n{logs()}"
                time.sleep(0.05)

        import psycopg

        with psycopg.connect(url) as conn:
            fired = conn.execute(
                "SELECT scheduled_run_at, count(*) FROM container_manager_containerjob "
                "GROUP BY scheduled_run_at ORDER BY scheduled_run_at"
            ).fetchall()
        assert fired == [(minute, 1) for minute in minutes], logs()
        # The restarts reached the workers (not only the quiet moments between their looks).
        assert "database error in worker loop" in logs(), logs()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(30) for proc in procs] == [0, 0, 0], logs()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_a_follower_waits_through_a_database_restart(private_postgres, tmp_path):
    """``logs --follow`` of a job that a worker runs while the server restarts: the follower
    looks at the job's record every half second meanwhile, and prints its output once it
    ends, as if nothing had happened."""
    import psycopg

    url = private_postgres.fresh_database("cm_outage_follow")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONTAINER_MANAGER_LOG_LEVEL": "INFO",
        "CONTAINER_MANAGER_SETTINGS": json.dumps({"HEARTBEAT_INTERVAL": 0.5, "WORKER_TIMEOUT": 5}),
    }
    manage(env, "migrate", "--noinput")
    job_id = manage(
        env,
        "shell",
        "-c",
        "from container_manager import api\n"
        "from container_manager.models import ExecutorHost\n"
        "host = ExecutorHost.objects.create(name='mock', executor_type='mock',"
        " executor_config={'duration_seconds': 6})\n"
        "print(api.create_job('img', ['echo', 'hi'], host=host).pk)\n",
    ).split()[-1]  # after what the shell says of itself
    follower = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "manage_container_job",
            "logs",
            "--follow",
            job_id,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs = [follower]
    try:
        # Following before the restart (a command that starts while the server is down fails
        # at its first query, as any manage.py command does).
        assert follower.stderr.readline().startswith(f"Waiting for job {job_id} to start")
        args = ["--until-idle", "--poll-interval", "0.1"]
        worker = start_worker(env, tmp_path / "worker.log", *args)
        procs.append(worker)
        deadline = time.monotonic() + 30
        with psycopg.connect(url) as conn:
            while conn.execute(
                "SELECT status FROM container_manager_containerjob WHERE id = %s", [job_id]
            ).fetchone() != ("running",):
                assert time.monotonic() < deadline, tail(worker.log_path)
                time.sleep(0.1)
        private_postgres.restart()
        out, err = follower.communicate(timeout=60)
        assert worker.wait(60) == 0, tail(worker.log_path, 30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert follower.returncode == 0, err
    assert out == "mock: echo hi\n", (out, err)
    assert f"following job {job_id}: database unavailable" in err, err

"""Real workers on a private Docker engine broken on purpose: stopped under a backlog and
started again, flooded with output, and a worker told twice to stop.

The engine is a private one (tests/engines.py), never the shared engine other tests use.
"""

import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from django.db import connections
from django.db.models import Count

from container_manager import api
from container_manager.api import create_job
from container_manager.live_output import read_live_output
from container_manager.models import ContainerJob, ExecutorHost

from .conftest import TEST_IMAGE
from .engines import PRIVATE_ENGINE_TESTS, PrivateEngine, require_dockerd
from .test_queue_processes import wait_until

pytestmark = PRIVATE_ENGINE_TESTS

MIB = 1024 * 1024
FAST = {
    "HEARTBEAT_INTERVAL": 0.5,
    "WORKER_TIMEOUT": 3,
    "CANCEL_CHECK_INTERVAL": 0.2,
    "STOP_GRACE_SECONDS": 1,
    "RETRY_BACKOFF_BASE": 1.0,
    "HEALTH_RECHECK_BASE": 0.5,
    "HEALTH_RECHECK_MAX": 2.0,
}


@contextlib.contextmanager
def private_engine(docker_engine, *args):
    require_dockerd()
    engine = PrivateEngine(extra_args=["--shutdown-timeout=1", *args])
    try:
        engine.start()
        engine.load_test_image(docker_engine)
        yield engine
    finally:
        engine.destroy()


@pytest.fixture
def engine(docker_engine):
    with private_engine(docker_engine) as engine:
        yield engine


def host_on(engine):
    return ExecutorHost.objects.create(
        name="private-engine",
        executor_type="docker",
        connection_string=engine.url,
        executor_config={"pull_policy": "never"},
        max_concurrent_jobs=6,
    )


@pytest.fixture
def host(engine):
    return host_on(engine)


def start_worker(worker_processes, host, *args, settings=None):
    return worker_processes.start(
        "--poll-interval",
        "0.1",
        "--host",
        host.name,
        *args,
        env={"CONTAINER_MANAGER_SETTINGS": json.dumps({**FAST, **(settings or {})})},
    )


def statuses():
    return dict(ContainerJob.objects.values_list("status").annotate(n=Count("pk")))


def test_engine_stopped_for_20_s_under_a_backlog_holds_it(engine, host, worker_processes):
    # Six that run first and long enough for the engine's shutdown to end them (they end at
    # its SIGTERM, so it does not wait out its 10 s grace), then a backlog of short ones.
    jobs = [
        create_job(
            TEST_IMAGE,
            ["sh", "-c", f"trap 'exit 143' TERM; sleep {8 if i < 6 else 1} & wait; echo done-{i}"],
            host=host,
            max_attempts=3,
            priority=1 if i < 6 else 0,
        )
        for i in range(24)
    ]
    worker = start_worker(worker_processes, host, "--max-concurrent", "8")
    assert wait_until(lambda: statuses().get("running") == 6, 30), worker_processes.logs()
    running = set(ContainerJob.objects.filter(status="running").values_list("pk", flat=True))
    assert running == {job.pk for job in jobs[:6]}

    engine.stop()
    time.sleep(20)
    # Nothing was failed or spent meanwhile: the running jobs are followed through the outage,
    # the queued ones wait for the host to be healthy again.
    assert statuses() == {"running": 6, "queued": 18}, worker_processes.logs()
    assert ExecutorHost.objects.get(pk=host.pk).health_status == "unhealthy"
    engine.start()

    assert wait_until(lambda: statuses() == {"completed": 24}, 120), (
        statuses(),
        worker_processes.logs()[-6000:],
    )
    for job in jobs:
        job.refresh_from_db()
        assert job.stdout.endswith(f"done-{jobs.index(job)}\n")
        if job.pk in running:
            # Killed with its engine: the first attempt says so, and a retry completed it.
            first = job.attempt_set.get(number=1)
            assert first.status == "failed"
            assert "around an outage of host private-engine" in first.error, first.error
            assert job.attempts == 2
        else:
            assert job.attempts == 1, (job.pk, list(job.attempt_set.values()))
    assert ExecutorHost.objects.get(pk=host.pk).health_status == "healthy"
    assert worker.poll() is None, "the worker died"


def test_output_flood_ends_within_its_timeout_with_bounded_memory_and_disk(
    engine, host, worker_processes
):
    job = create_job(
        TEST_IMAGE, ["sh", "-c", "yes | head -c 300000000"], host=host, timeout_seconds=12
    )
    worker = start_worker(
        worker_processes, host, "--until-idle", settings={"STOP_GRACE_SECONDS": 2}
    )
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30)
    running_since = time.monotonic()
    job.refresh_from_db()
    log_dir = Path(engine.root) / "data" / "containers" / job.execution_id
    largest_log = peak_rss = 0
    while worker.poll() is None and time.monotonic() - running_since < 90:
        largest_log = max(largest_log, directory_bytes(log_dir / "local-logs"))
        peak_rss = max(peak_rss, peak_rss_bytes(worker.pid))
        time.sleep(0.2)
    ended_after = time.monotonic() - running_since
    assert worker.wait(5) == 0, worker_processes.logs()

    job.refresh_from_db()
    assert job.status in ("completed", "timed_out"), (job.status, job.last_error)
    # The timeout (12 s), the stop grace (2 s), and a little for harvesting and recording.
    assert ended_after < 12 + 2 + 5, ended_after
    # Two log files of at most 4 x MAX_OUTPUT_BYTES (1 MB) each, and never the 300 MB.
    assert largest_log <= 2 * 4_000_000 + 64 * 1024, largest_log
    assert len(job.stdout) < 1_000_000 + 1000
    assert "older output may have been dropped" in job.stdout
    print(
        f"300 MB job: {job.status} after {ended_after:.1f} s; largest log {largest_log} B; "
        f"worker peak RSS {peak_rss / MIB:.0f} MiB"
    )
    assert peak_rss < 150 * MIB, peak_rss


def test_a_second_sigterm_releases_running_jobs_at_once(engine, host, worker_processes):
    job = create_job(TEST_IMAGE, ["sh", "-c", "sleep 6; echo done"], host=host)
    first = start_worker(worker_processes, host, settings={"SHUTDOWN_GRACE_SECONDS": 600})
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30)
    execution_id = ContainerJob.objects.get(pk=job.pk).execution_id
    first.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    asked = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0, worker_processes.logs()
    assert time.monotonic() - asked < 5
    job.refresh_from_db()
    assert (job.status, job.worker) == ("running", None)

    second = start_worker(worker_processes, host, "--until-idle")
    assert second.wait(60) == 0, worker_processes.logs()
    job.refresh_from_db()
    assert (job.status, job.stdout, job.execution_id) == ("completed", "done\n", execution_id)
    assert job.attempt_set.count() == 1


def directory_bytes(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.iterdir())
    except OSError:
        return 0


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), or 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def test_the_log_panel_says_when_the_engine_is_gone_and_reads_on_when_it_is_back(
    engine, host, worker_processes
):
    # It ends at the engine's SIGTERM: the engine need not wait out its 10 s grace.
    command = [
        "sh",
        "-c",
        "trap 'exit 143' TERM; for i in $(seq 1 200); do echo line-$i; sleep 0.1; done",
    ]
    job = create_job(TEST_IMAGE, command, host=host)
    start_worker(worker_processes, host, settings={"ENGINE_OUTAGE_GRACE": 60})
    assert wait_until(lambda: statuses().get("running") == 1, 30), worker_processes.logs()
    job.refresh_from_db()  # running, with its execution id; kept so while the engine is away

    def live_after(offset):
        live = read_live_output(job, offset)
        assert live is not None
        return live

    assert wait_until(lambda: "line-3" in live_after(0).text, 15)
    before = live_after(0)
    engine.stop()
    gone = live_after(before.offset)
    assert "unreachable" in gone.error, gone
    assert (gone.text, gone.offset) == ("", before.offset)  # nothing lost, nothing made up

    engine.start()
    back = live_after(before.offset)
    assert back.error == "" and not back.restarted, back
    assert back.offset >= before.offset  # it reads on from where the panel was
    assert "line-1\n" not in back.text  # not the whole log again


def test_a_follower_reads_on_through_an_engine_restart_that_the_container_outlives(
    docker_engine, worker_processes
):
    # With live-restore the container runs on while its engine restarts; the engine's
    # follow stream ends when it goes, and a new one starts from the first line.
    with private_engine(docker_engine, "--live-restore") as engine:
        host = host_on(engine)
        command = ["sh", "-c", "for i in $(seq 1 60); do echo line-$i; sleep 0.1; done"]
        job = create_job(TEST_IMAGE, command, host=host)
        start_worker(worker_processes, host, settings={"ENGINE_OUTAGE_GRACE": 60})
        assert wait_until(lambda: statuses().get("running") == 1, 30), worker_processes.logs()
        job.refresh_from_db()
        followed, said = [], []

        def follow():
            try:
                followed.extend(api.follow_output(job, poll=0.1, say=said.append))
            finally:
                connections.close_all()  # this thread's own

        follower = threading.Thread(target=follow)
        follower.start()
        assert wait_until(lambda: "line-3\n" in "".join(followed), 15)
        engine.stop()
        time.sleep(2)
        engine.start()
        follower.join(60)
        assert not follower.is_alive()

    job.refresh_from_db()
    assert (job.status, job.attempts) == ("completed", 1), worker_processes.logs()
    # Every line once, in order: none lost in the outage, none given again after it.
    assert "".join(followed) == "".join(f"line-{i}\n" for i in range(1, 61))
    assert said[0].startswith(f"Cannot read job {job.pk} from its host ("), said
    assert f"Job {job.pk}'s host answers again; reading on." in said, said

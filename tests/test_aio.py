"""The asyncio API: acreate_job, await_job (woken by the job-ended notification on
PostgreSQL), stream_logs over a real container run by a real worker process.

Each test runs its coroutine with asyncio.run: no async test plugin needed."""

import asyncio
import contextlib
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, connections
from django.utils import timezone

from container_manager import aio, api, notify
from container_manager.models import ContainerJob
from container_manager.states import JobStatus

from .conftest import TEST_IMAGE
from .test_docker_queue import FAST_LIVENESS
from .test_queue_processes import wait_until

# Each coroutine's queries run in threads of their own, outside a test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def close_the_async_callers_connection():
    """Outside a request nothing closes the database connection of the thread that runs the
    ORM for coroutines (asgiref's thread for sync code): the test does, as a script would."""
    yield
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


def test_acreate_job_validates_like_create_job(mock_host):
    job = asyncio.run(aio.acreate_job("alpine", ["echo", "hi"], host="mock", memory_limit=64))
    assert ContainerJob.objects.get(pk=job.pk).memory_limit == 64
    with pytest.raises(ValidationError) as raised:
        asyncio.run(aio.acreate_job("alpine", ["true"], host="mock", memory_limit=-1))
    assert "memory_limit" in raised.value.message_dict
    assert ContainerJob.objects.count() == 1


def test_await_job_times_out(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job.pk} still queued after 0.3 s"):
        asyncio.run(aio.await_job(job, timeout=0.3, interval=0.05))
    assert time.monotonic() - started < 3


def test_await_job_returns_the_ended_job_and_lets_the_loop_run(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)

    def end_it():
        ContainerJob.objects.get(pk=job.pk).transition(
            JobStatus.CANCELLED, finished_at=timezone.now()
        )

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        threading.Timer(0.3, end_it).start()
        ended = await aio.await_job(job, timeout=20, interval=0.05)
        ticking.cancel()
        return ended, ticks

    ended, ticks = asyncio.run(main())
    assert ended.status == JobStatus.CANCELLED
    assert ticks > 5  # the wait never held the event loop


@pytest.mark.parametrize("waiter", ["api.wait_for_job", "aio.await_job"])
def test_a_waiter_looks_again_after_losing_its_connection(mock_host, monkeypatch, waiter):
    job = api.create_job("alpine", ["true"], host=mock_host)
    job.transition(JobStatus.CANCELLED, finished_at=timezone.now())
    refresh = ContainerJob.refresh_from_db
    lost = []

    def refresh_after_a_restart(self, *args, **kwargs):
        if not lost:  # the server restarts under the first look
            lost.append(self.pk)
            raise OperationalError("terminating connection due to administrator command")
        return refresh(self, *args, **kwargs)

    monkeypatch.setattr(ContainerJob, "refresh_from_db", refresh_after_a_restart)
    if waiter == "api.wait_for_job":
        waited = api.wait_for_job(job, timeout=10)
    else:
        waited = asyncio.run(aio.await_job(job, timeout=10))
    assert (waited.status, lost) == (JobStatus.CANCELLED, [job.pk])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="notifications: PostgreSQL")
def test_await_job_is_woken_by_a_worker_process_ending_the_job(
    docker_host, worker_processes, monkeypatch
):
    """Looks at the job a minute apart: only the notification can end the wait soon after
    the worker records the ending."""
    monkeypatch.setattr(notify, "ENDED_RECHECK_SECONDS", 60)
    worker_processes.start("--poll-interval", "0.1")
    job = api.create_job(TEST_IMAGE, ["sh", "-c", "sleep 1; echo done"], host=docker_host)
    ended = asyncio.run(aio.await_job(job, timeout=60, interval=60))
    woken = timezone.now()
    assert ended.status == JobStatus.COMPLETED, worker_processes.logs()
    assert ended.stdout == "done\n"
    latency = (woken - ended.finished_at).total_seconds()
    # The poll interval is 60 s; a notification arrives in milliseconds (2 s of slack for a
    # busy shared machine).
    assert latency < 2, latency


def collect(job, most: int | None = None) -> list[str]:
    async def main():
        lines = []
        async with contextlib.aclosing(aio.stream_logs(job, poll=0.1)) as stream:
            async for line in stream:
                lines.append(line)
                if most is not None and len(lines) == most:
                    break
        return lines

    return asyncio.run(main())


def test_stream_logs_of_an_ended_job_is_its_stored_output(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    ContainerJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED, stdout="a\nb", stderr="bad \\xff\n"
    )
    assert collect(job) == ["a\n", "b\n", "bad \\xff\n"]


@pytest.mark.processes
def test_stream_logs_follows_a_real_container(docker_host, worker_processes):
    worker_processes.start("--poll-interval", "0.1")
    script = "for i in 1 2 3; do echo line $i; sleep 0.4; done; printf café"
    job = api.create_job(TEST_IMAGE, ["sh", "-c", script], host=docker_host)
    assert collect(job) == ["line 1\n", "line 2\n", "line 3\n", "café"], worker_processes.logs()
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).is_terminal, 30)


@pytest.mark.processes
def test_a_consumer_that_stops_early_stops_the_reading_thread(docker_host, worker_processes):
    worker_processes.start(
        "--poll-interval", "0.1", env={"CONTAINER_MANAGER_SETTINGS": FAST_LIVENESS}
    )
    job = api.create_job(
        TEST_IMAGE, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"], host=docker_host
    )
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 30)
    assert collect(job, most=2) == ["tick\n", "tick\n"]
    # It stops at the next output, 0.2 s on: well before the job's end, which never comes.
    assert wait_until(
        lambda: not any(t.name == f"cm-logs-{job.pk}" for t in threading.enumerate()), 5
    )
    api.cancel_job(ContainerJob.objects.get(pk=job.pk))
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).is_terminal, 30)

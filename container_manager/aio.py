"""The Python API for asyncio code (ASGI views, async tasks): create a job, await its end,
and read its output as it is printed, without blocking the event loop.

``acreate_job`` is ``create_job`` run in Django's thread for sync code. ``await_job`` is
woken by the database's notification when the job ends on PostgreSQL (an asynchronous
connection LISTENing, as ``wait_for_job`` does), and looks at the job every ``interval``
seconds elsewhere. ``stream_logs`` gives the lines ``manage_container_job logs --follow``
prints, decoded by the same code (``api.follow_output``), read in a thread of its own.
"""

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.db import connections

from . import api, notify
from .models import ContainerJob

# A stream's end, sent by its reading thread.
_END = object()


async def acreate_job(image: str, command: list[str] | None = None, **arguments) -> ContainerJob:
    """``create_job`` awaited: same arguments, same validation (ValidationError naming each
    bad field), run in the thread Django keeps for sync code."""
    return await sync_to_async(api.create_job, thread_sensitive=True)(image, command, **arguments)


async def await_job(
    job: ContainerJob, timeout: float | None = None, interval: float = 0.2
) -> ContainerJob:
    """Wait until ``job`` ends (or raise TimeoutError after ``timeout`` seconds); returns it
    refreshed.

    On PostgreSQL (with ``LISTEN_NOTIFY`` on) the ending's notification wakes the caller at
    once: the listening starts before the job is first looked at, so an ending in between is
    not missed. Elsewhere the job is looked at every ``interval`` seconds. A database restart
    meanwhile is waited out for up to ``DATABASE_RETRY_SECONDS``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    look_again = sync_to_async(api.look_again, thread_sensitive=True)
    async with notify.async_job_endings(job.pk, poll=interval) as pause:
        await look_again(job)
        while not job.is_terminal:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job.pk} still {job.status} after {timeout} s")
            await pause(left)
            await look_again(job)
    return job


async def stream_logs(
    job: ContainerJob, poll: float = api.FOLLOW_POLL_SECONDS
) -> AsyncIterator[str]:
    """The lines ``job`` prints, stdout and stderr together, as it prints them, until it
    ends (``async for line in stream_logs(job)``); each line keeps its newline, the last
    one may have none. A job not started yet is waited for; an ended one gives its stored
    output. Its retries and its host's outages are followed through (``api.follow_output``).

    The executor is read in a thread; when the consumer stops early (``break``, a
    cancelled task) the thread is told to stop, and does at the next output or the job's
    end, whichever comes first: it never blocks the event loop.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stopped = threading.Event()

    def send(item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        try:
            for text in api.follow_output(job, poll=poll):
                if stopped.is_set():
                    return
                send(text)
            send(_END)
        except BaseException as error:  # noqa: BLE001 - raised again in the consumer
            send(error)
        finally:
            connections.close_all()  # this thread's own connections: it ends here

    threading.Thread(target=read, name=f"cm-logs-{job.pk}", daemon=True).start()
    partial = ""
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            *lines, partial = (partial + item).split("\n")
            for line in lines:
                yield line + "\n"
        if partial:
            yield partial
    finally:
        stopped.set()

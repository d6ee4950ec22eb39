"""Long-lived threads for runners: each carries one job at a time and stays for the next.

A thread of its own per job would open a database connection per job (Django's connections
are per thread), which costs more than everything else a short job does. These threads keep
theirs between jobs, dropping it only when an error left it broken, and close it when they
leave: once the worker stops, or after ``IDLE_SECONDS`` without work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from django.db import connections

from . import logs
from .db import TRANSIENT_ERRORS, drop_if_broken, first_line

logger = logs.get_logger(__name__)

# An idle thread leaves (closing its connection) after this long without a job.
IDLE_SECONDS = 300.0


class Handle:
    """One submitted job, as the worker follows it (shaped like a thread: alive until done)."""

    def __init__(self, name: str):
        self.name = name
        self.done = threading.Event()

    def is_alive(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self.done.wait(timeout)


Task = tuple[Callable[[], None], Handle]


class RunnerThreads:
    """Runs each submitted callable in an idle thread, or in a new one when none is idle."""

    def __init__(self, on_done: Callable[[], None]):
        self.on_done = on_done
        self.tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0  # threads waiting for a task (never fewer than the tasks queued)
        self.threads: list[threading.Thread] = []

    def submit(self, target: Callable[[], None], name: str) -> Handle:
        handle = Handle(name)
        with self.lock:
            if self.idle:
                self.idle -= 1
                self.tasks.put((target, handle))
                return handle
            thread = threading.Thread(
                target=self._serve, args=((target, handle),), name=name, daemon=True
            )
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()
        return handle

    def shutdown(self, wait: float) -> None:
        """Let idle threads go, closing their connections; busy ones go when their job ends."""
        with self.lock:
            threads = [t for t in self.threads if t.is_alive()]
            for _ in threads:
                self.tasks.put(None)
        for thread in threads:
            if thread.is_alive():
                thread.join(wait)

    def _serve(self, task: Task | None) -> None:
        try:
            while task is not None:
                self._run(*task)
                task = self._next()
        finally:
            connections.close_all()

    def _next(self) -> Task | None:
        with self.lock:
            self.idle += 1
        while True:
            try:
                return self.tasks.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self.lock:
                    # A task put while this lock was free is waiting for some idle thread.
                    if self.tasks.empty():
                        self.idle -= 1
                        return None

    def _run(self, target: Callable[[], None], handle: Handle) -> None:
        thread = threading.current_thread()
        thread.name = handle.name
        try:
            target()
        except TRANSIENT_ERRORS as error:  # expected of an outage: no traceback
            logger.warning(
                "%s stopped: the database is unavailable (%s); the worker's watchdog resumes "
                "its job",
                handle.name,
                first_line(error),
            )
        except Exception:  # a runner's job is resumed by the watchdog; the worker goes on
            logger.exception("%s crashed", handle.name)
        finally:
            drop_if_broken()
            handle.done.set()
            self.on_done()

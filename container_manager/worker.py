"""The worker loop: claim ready jobs, run each in its own thread, keep a heartbeat.

Launching and harvesting are one thing here: the thread that launches a job stays with it
until its outcome is recorded, so the loop itself never blocks on a container and never
leaves a launched job unwatched.
"""

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from django.db import close_old_connections, connections
from django.utils import timezone

from . import queue
from .conf import setting
from .models import Worker as WorkerRecord
from .runner import run_attempt

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0


class Worker:
    def __init__(
        self,
        *,
        max_concurrent: int | None = None,
        poll_interval: float | None = None,
        host_names: list[str] | None = None,
        until_idle: bool = False,
    ):
        self.max_concurrent = max_concurrent or setting("MAX_CONCURRENT_JOBS")
        self.poll_interval = (
            setting("POLL_INTERVAL") if poll_interval is None else float(poll_interval)
        )
        self.host_names = host_names or None
        self.until_idle = until_idle
        self.stopping = threading.Event()
        self.running = {}  # future -> job
        self.record = None
        self.jobs_finished = 0

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        self.record = WorkerRecord.objects.create(hostname=socket.gethostname(), pid=os.getpid())
        logger.info(
            "worker %s started (max %d concurrent, poll every %ss%s)",
            self.record.pk,
            self.max_concurrent,
            self.poll_interval,
            f", hosts {', '.join(self.host_names)}" if self.host_names else "",
        )
        with ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="cm-job") as pool:
            self.pool = pool
            try:
                self._loop()
            finally:
                WorkerRecord.objects.filter(pk=self.record.pk).update(stopped_at=timezone.now())
        logger.info("worker %s stopped after %d job(s)", self.record.pk, self.jobs_finished)

    def request_stop(self, *_args) -> None:
        if not self.stopping.is_set():
            logger.info("stopping: no new jobs will be claimed; waiting for running ones")
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        next_heartbeat = 0.0
        while True:
            self._reap()
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
            if self.stopping.is_set():
                if not self.running:
                    return
            else:
                claimed = self._claim()
                if self.until_idle and not self.running and not claimed and not self._has_work():
                    return
            self._wait()

    def _has_work(self) -> bool:
        return queue.has_ready_jobs(self._host_ids())

    def _host_ids(self):
        if self.host_names is None:
            return None
        return list(queue.active_hosts(self.host_names).values_list("pk", flat=True))

    def _claim(self) -> int:
        free = self.max_concurrent - len(self.running)
        if free <= 0:
            return 0
        close_old_connections()
        jobs = queue.claim_jobs(self.record, free, self._host_ids())
        for job in jobs:
            logger.info("claimed job %s (%s) for host %s", job.pk, job, job.host.name)
            self.running[self.pool.submit(self._run_in_thread, job)] = job
        return len(jobs)

    def _run_in_thread(self, job) -> None:
        try:
            run_attempt(job)
        finally:
            connections.close_all()

    def _reap(self) -> None:
        for future in [f for f in self.running if f.done()]:
            job = self.running.pop(future)
            self.jobs_finished += 1
            if future.exception() is not None:
                logger.error("job %s: runner crashed", job.pk, exc_info=future.exception())

    def _wait(self) -> None:
        # A finished job frees a slot at once; otherwise look for new work every poll.
        if self.running:
            wait(list(self.running), timeout=self.poll_interval, return_when=FIRST_COMPLETED)
        else:
            self.stopping.wait(self.poll_interval)

    def _heartbeat(self) -> None:
        WorkerRecord.objects.filter(pk=self.record.pk).update(last_heartbeat=timezone.now())

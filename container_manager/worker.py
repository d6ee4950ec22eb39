"""The worker loop: claim ready jobs, run each in a runner thread, keep a heartbeat, and
adopt the jobs of workers that died.

Launching and harvesting are one thing here: the thread that launches a job stays with it
until its outcome is recorded, so the loop itself never blocks on a container. A watchdog
makes sure of it: every job this worker holds without a live thread (a runner that ended
early, say during a long database outage, or a claim whose commit answer was lost) is
resumed, so no job is ever held by a live worker and watched by nobody.

Workers check every host's health, one worker per check (``HEALTH_CHECK_INTERVAL``); an
unhealthy host gets no new jobs (see ``routing``), is checked again with a growing pause, and
one check passing brings it back.
"""

import os
import signal
import socket
import threading
import time

from django.db import DatabaseError, connections
from django.utils import timezone

from . import janitor, logs, queue, retention, scheduling, webhooks
from .conf import setting
from .db import TRANSIENT_ERRORS, drop_if_broken
from .models import ContainerJob, ExecutorHost
from .models import Worker as WorkerRecord
from .notify import Listener
from .runner import Runner
from .runner_threads import Handle, RunnerThreads

logger = logs.get_logger(__name__)

# Seconds between sweeps for what finished attempts could not remove (see janitor).
SWEEP_INTERVAL = 60.0
# Seconds between looks for hosts due for a health check.
CHECK_LOOK_INTERVAL = 0.5
# Seconds between promotions of jobs whose retry delay has passed, and of jobs whose
# dependencies ended (each starts at most this late); not every loop turn, which under load
# is every job. Due schedules are fired as often, or every poll interval if that is shorter.
PROMOTE_INTERVAL = 1.0
# Once running jobs are released (a second SIGTERM), how long their threads get to notice
# before the worker signs off without them.
RELEASE_WAIT_SECONDS = 5.0


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
        self.stopping = threading.Event()  # no more claiming
        self.release = threading.Event()  # running jobs are let go, for another worker
        self.wake = threading.Event()  # something happened: look again now
        self.queued = threading.Event()  # a job was queued (a notification): claim at once
        self.running: dict[Handle, ContainerJob] = {}  # each job a runner follows
        self.runners = RunnerThreads(on_done=self.wake.set)
        self.record: WorkerRecord | None = None  # this worker's row, from ``run`` on
        self.jobs_finished = 0
        self.stop_deadline: float | None = None  # time.monotonic(); set with ``stopping``
        self.sweeper: threading.Thread | None = None
        self.checker: threading.Thread | None = None
        self.housekeeper: threading.Thread | None = None
        # Webhook deliveries, in threads of their own: never in the way of the job loop.
        self.webhooks = webhooks.Pump()
        # After a database outage, other workers' heartbeats are as stale as this one's:
        # their jobs are not adopted until they have had time to beat again.
        self.adopt_after = 0.0
        # Orphans are looked for at each heartbeat (a worker is presumed lost only after
        # WORKER_TIMEOUT), and again while there were more than free slots.
        self.look_for_orphans = True
        # The pks of this worker's hosts (None: every host), looked up at each heartbeat.
        self.host_ids: list[int] | None = None
        # The last claim took all it asked for: more jobs may be ready (see claim_jobs).
        self.maybe_more = False

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
        listener = Listener(self.wake, queued=self.queued) if Listener.available() else None
        if listener:
            listener.start()
        self.webhooks.start()
        try:
            self._loop()
        finally:
            self.release.set()
            self._join_runners()
            self.runners.shutdown(RELEASE_WAIT_SECONDS)
            self.webhooks.stop()
            for helper in (self.sweeper, self.checker, self.housekeeper):
                if helper is not None:
                    helper.join(timeout=RELEASE_WAIT_SECONDS)
            if listener:
                listener.stop()
            self._sign_off()
        logger.info("worker %s stopped after %d job(s)", self.record.pk, self.jobs_finished)

    def request_stop(self, *_args) -> None:
        if self.stopping.is_set():
            logger.info("second stop request: releasing running jobs now")
            self.release.set()
        else:
            grace = setting("SHUTDOWN_GRACE_SECONDS")
            logger.info("stopping: no new jobs; following running ones for up to %ss", grace)
            self.stop_deadline = time.monotonic() + grace
            self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)

    def _own_record(self) -> WorkerRecord:
        """This worker's row: ``run`` creates it before anything that needs it runs."""
        assert self.record is not None, "the worker has not been started (run)"
        return self.record

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        next_heartbeat = next_sweep = next_check = next_promotion = next_firing = 0.0
        while True:
            self._reap()
            if self.stopping.is_set():
                if not self.running:
                    return
                assert self.stop_deadline is not None  # request_stop sets it before ``stopping``
                if self.release.is_set() or time.monotonic() >= self.stop_deadline:
                    self.release.set()
                    return
            try:
                drop_if_broken()
                if time.monotonic() >= next_heartbeat:
                    self._heartbeat()
                    self._resume_unwatched()
                    self.host_ids = self._look_up_host_ids()
                    self.look_for_orphans = True
                    next_heartbeat = time.monotonic() + setting("HEARTBEAT_INTERVAL")
                if time.monotonic() >= next_promotion:
                    queue.promote_due_retries()
                    queue.settle_dependents()
                    next_promotion = time.monotonic() + PROMOTE_INTERVAL
                if time.monotonic() >= next_firing and not self.stopping.is_set():
                    scheduling.fire_due_schedules()
                    next_firing = time.monotonic() + min(PROMOTE_INTERVAL, self.poll_interval)
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    self._housekeep()
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                if time.monotonic() >= next_check:
                    self._check_hosts()
                    next_check = time.monotonic() + CHECK_LOOK_INTERVAL
                if not self.stopping.is_set():
                    started = self._take_work()
                    idle = not self.running and not started
                    if self.until_idle and idle and not self._has_work():
                        return
            except DatabaseError as error:
                # The database went away (restart, killed connection): keep following the
                # running jobs and try again at the next turn.
                logger.warning("database error in worker loop: %s; retrying", error)
                connections.close_all()
                if isinstance(error, TRANSIENT_ERRORS):
                    self.adopt_after = time.monotonic() + 2 * setting("HEARTBEAT_INTERVAL")
                    next_heartbeat = 0.0
            self.wake.wait(self.poll_interval)
            self.wake.clear()

    def _look_up_host_ids(self) -> list[int] | None:
        if self.host_names is None:
            return None
        return list(queue.active_hosts(self.host_names).values_list("pk", flat=True))

    def _has_work(self) -> bool:
        # A job that waited for others may have just become ready; the webhooks of jobs
        # that ended are tried before an --until-idle worker leaves.
        return (
            queue.settle_dependents() > 0
            or queue.has_pending_work(self.host_ids)
            or self.webhooks.busy()
        )

    def _take_work(self) -> int:
        """Adopt orphaned jobs first (they are already running), then claim new ones."""
        host_ids = self.host_ids
        free = self.max_concurrent - len(self.running)
        adopted = []
        if self.look_for_orphans and free > 0 and time.monotonic() >= self.adopt_after:
            adopted = queue.adopt_orphans(self._own_record(), free, host_ids)
            self.look_for_orphans = len(adopted) == free  # more may be waiting for a slot
        for job in adopted:
            with logs.about(job):
                logger.info("adopted job %s (%s) from a lost worker", job.pk, job.status)
            self._submit(Runner(job, self.release).resume, job)
        wanted = free - len(adopted)
        notified = self.queued.is_set()
        self.queued.clear()
        claimed = queue.claim_jobs(
            self._own_record(), wanted, host_ids, look_first=not (self.maybe_more or notified)
        )
        self.maybe_more = wanted > 0 and len(claimed) == wanted
        for job in claimed:
            assert job.host is not None  # claim_jobs routes each job it claims to a host
            with logs.about(job):
                logger.info("claimed job %s (%s) for host %s", job.pk, job, job.host.name)
            self._submit(Runner(job, self.release).run, job)
        return len(adopted) + len(claimed)

    def _resume_unwatched(self) -> None:
        """Resume every job this worker holds that no live runner thread follows."""
        # Taken before the query: a thread that ends after it wrote its job's outcome must
        # not make that job look unwatched.
        watched = {job.pk for handle, job in self.running.items() if handle.is_alive()}
        for job in queue.owned_jobs(self._own_record()):
            if job.pk not in watched:
                with logs.about(job):
                    logger.warning("job %s (%s) had no runner; resuming it", job.pk, job.status)
                self._submit(Runner(job, self.release).resume, job)

    def _submit(self, target, job) -> None:
        def carry() -> None:
            with logs.about(job):  # the runner's lines, and its executor's, name the job
                target()

        self.running[self.runners.submit(carry, f"cm-job-{job.pk}")] = job

    def _in_thread(self, target) -> None:
        """A helper thread's body (sweeper, health checks): rare, so it connects each time."""
        try:
            target()
        except Exception:  # the next round tries again; the worker goes on
            logger.exception("%s crashed", threading.current_thread().name)
        finally:
            connections.close_all()
            self.wake.set()

    def _reap(self) -> None:
        for handle in [h for h in self.running if not h.is_alive()]:
            self.running.pop(handle)
            self.jobs_finished += 1

    def _join_runners(self) -> None:
        """Wait for runners: all of them when stopping gracefully, a few seconds once their
        jobs are released (they may be busy reading output; another worker re-attaches)."""
        deadline = time.monotonic() + RELEASE_WAIT_SECONDS
        for handle in list(self.running):
            left = deadline - time.monotonic() if self.release.is_set() else None
            handle.join(None if left is None else max(0.0, left))
        self._reap()
        if self.running:
            logger.warning("leaving %d runner thread(s) behind", len(self.running))

    def _sweep(self) -> None:
        """Sweep leftovers in a thread of its own: an unreachable host may take a while."""
        if self.sweeper is not None and self.sweeper.is_alive():
            return
        hosts = list(queue.active_hosts(self.host_names))
        self.sweeper = threading.Thread(
            target=self._in_thread,
            args=(lambda: janitor.sweep_leftovers(hosts),),
            name="cm-sweeper",
            daemon=True,
        )
        self.sweeper.start()

    def _housekeep(self) -> None:
        """The daily retention (``RETENTION_DAYS``...), when this worker takes it: in a
        thread of its own, a batch at a time, for as long as it takes."""
        if self.housekeeper is not None and self.housekeeper.is_alive():
            return
        if self.stopping.is_set() or not retention.daily_retention_due():
            return
        self.housekeeper = threading.Thread(
            target=self._in_thread,
            args=(lambda: retention.apply_retention_settings(stop=self.stopping),),
            name="cm-retention",
            daemon=True,
        )
        self.housekeeper.start()

    def _check_hosts(self) -> None:
        """Check the hosts whose time has come (see ``recheck_delay``), in a thread of its
        own: an unreachable host may take a while to answer, or not answer at all."""
        if self.checker is not None and self.checker.is_alive():
            return
        due = [
            host
            for host in ExecutorHost.objects.due_for_check().filter(
                pk__in=queue.active_hosts(self.host_names)
            )
            if ExecutorHost.objects.take_check(host)
        ]
        if not due:
            return
        self.checker = threading.Thread(
            target=self._in_thread,
            args=(lambda: [self._check(host) for host in due],),
            name="cm-health",
            daemon=True,
        )
        self.checker.start()

    @staticmethod
    def _check(host) -> None:
        was = host.health_status
        health = host.check_health()
        if health.healthy and was == ExecutorHost.Health.UNHEALTHY:
            logger.info("host %s is healthy again: %s", host.name, health.message)
        elif not health.healthy:
            logger.warning("host %s is unhealthy: %s", host.name, health.message)

    def _heartbeat(self) -> None:
        record = self._own_record()
        record.last_heartbeat = timezone.now()
        if not WorkerRecord.objects.filter(pk=record.pk).update(
            last_heartbeat=record.last_heartbeat
        ):
            # Deleted while this worker was silent (a prune, an operator): written again, so
            # the jobs it claims can name it.
            logger.warning("this worker's record %s was deleted; writing it again", record.pk)
            record.stopped_at = None
            record.save(force_insert=True)

    def _sign_off(self) -> None:
        """Hand back what is still running, and say this worker is gone."""
        for attempt in range(3):
            try:
                drop_if_broken()
                record = self._own_record()
                released = queue.release_jobs(record)
                WorkerRecord.objects.filter(pk=record.pk).update(stopped_at=timezone.now())
                if released:
                    logger.info("released %d running job(s) for another worker", released)
                return
            except DatabaseError as error:
                logger.warning("could not sign off (%s); retrying", error)
                connections.close_all()
                time.sleep(attempt + 1)

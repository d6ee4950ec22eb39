"""Instant news on PostgreSQL: triggers NOTIFY when a job becomes queued (each worker
LISTENs on a connection of its own) and when a job ends (``job_endings``, for callers waiting
on a job). Polling stays the fallback (and is all SQLite has).
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from django.db import connections

from . import logs
from .conf import setting
from .states import TERMINAL

logger = logs.get_logger(__name__)

JOB_TABLE = "container_manager_containerjob"


def notify_trigger(event: str, channel: str, on: str, when: str) -> tuple[str, str]:
    """The SQL creating, and the SQL dropping, a trigger (and its function, both named after
    ``event``) that NOTIFYs ``channel`` with the job's id after ``on`` (``UPDATE OF status``,
    say) of each job row matching ``when``."""
    function, trigger = f"container_manager_notify_{event}", f"container_manager_job_{event}"
    create = f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{channel}', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER {trigger}
AFTER {on} ON {JOB_TABLE}
FOR EACH ROW WHEN ({when})
EXECUTE FUNCTION {function}();
"""
    drop = f"""
DROP TRIGGER IF EXISTS {trigger} ON {JOB_TABLE};
DROP FUNCTION IF EXISTS {function}();
"""
    return create, drop


CHANNEL = "container_manager_job_queued"

# Installed by migration 0001 on PostgreSQL only. A trigger, rather than a Django signal,
# so that every path that queues a job (ORM, bulk update, admin, raw SQL) wakes the workers.
TRIGGER_SQL, DROP_TRIGGER_SQL = notify_trigger(
    "queued", CHANNEL, "INSERT OR UPDATE OF status", "NEW.status = 'queued'"
)

ENDED_CHANNEL = "container_manager_job_ended"

# Installed by migration 0007 on PostgreSQL only: for callers waiting on a job.
ENDED_TRIGGER_SQL, DROP_ENDED_TRIGGER_SQL = notify_trigger(
    "ended",
    ENDED_CHANNEL,
    "UPDATE OF status",
    "NEW.status IN ({}) AND OLD.status IS DISTINCT FROM NEW.status".format(
        ", ".join(f"'{status}'" for status in sorted(TERMINAL))
    ),
)

# Without notifications (SQLite, or a notification lost with its connection), a waiting
# caller looks at the job at least this often.
ENDED_RECHECK_SECONDS = 1.0


def on_postgresql(sql: str) -> Callable[[Any, Any], None]:
    """A migration step (RunPython) that runs ``sql`` on PostgreSQL, and nothing elsewhere."""

    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


install_trigger = on_postgresql(TRIGGER_SQL)
drop_trigger = on_postgresql(DROP_TRIGGER_SQL)
install_ended_trigger = on_postgresql(ENDED_TRIGGER_SQL)
drop_ended_trigger = on_postgresql(DROP_ENDED_TRIGGER_SQL)


def _connection_params(alias: str) -> dict:
    """What psycopg needs to open a connection of its own to database ``alias``."""
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return params


def _listening_connection(alias: str, channel: str):
    import psycopg

    conn = psycopg.connect(**_connection_params(alias), autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn


@contextlib.contextmanager
def job_endings(job_id, poll: float, alias: str = "default") -> Iterator[Callable[[float], None]]:
    """A ``pause(seconds)`` that returns early when job ``job_id`` ends.

    On PostgreSQL it listens from the moment this is entered, so an ending between the
    caller's look at the job and its pause is not missed; each pause lasts at most
    ``ENDED_RECHECK_SECONDS``. Elsewhere a pause is a sleep of at most ``poll`` seconds.
    """
    conn = None
    if Listener.available(alias):
        try:
            conn = _listening_connection(alias, ENDED_CHANNEL)
        except Exception as error:  # noqa: BLE001 - polling still works
            logger.warning("cannot listen for job endings (%s); polling", error)
    wanted = str(job_id)

    def pause(seconds: float) -> None:
        if conn is None:
            time.sleep(max(0.0, min(seconds, poll)))
            return
        until = time.monotonic() + max(0.0, min(seconds, ENDED_RECHECK_SECONDS))
        try:
            while (left := until - time.monotonic()) > 0:
                for note in conn.notifies(timeout=left, stop_after=1):
                    if note.payload == wanted:
                        return
        except Exception as error:  # noqa: BLE001 - the caller looks at the job again anyway
            logger.warning("listening for job endings: %s", error)
            time.sleep(max(0.0, until - time.monotonic()))

    try:
        yield pause
    finally:
        if conn is not None:
            conn.close()


async def _async_listening_connection(alias: str, channel: str):
    import psycopg

    conn = await psycopg.AsyncConnection.connect(**_connection_params(alias), autocommit=True)
    await conn.execute(f"LISTEN {channel}")
    return conn


@contextlib.asynccontextmanager
async def async_job_endings(
    job_id, poll: float, alias: str = "default"
) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """``job_endings`` for a coroutine: an ``await pause(seconds)`` that returns early when
    job ``job_id`` ends, on an asynchronous connection, so the event loop runs on meanwhile.
    Listening starts on entering, before the caller first looks at the job."""
    conn = None
    if Listener.available(alias):
        try:
            conn = await _async_listening_connection(alias, ENDED_CHANNEL)
        except Exception as error:  # noqa: BLE001 - polling still works
            logger.warning("cannot listen for job endings (%s); polling", error)
    wanted = str(job_id)

    async def pause(seconds: float) -> None:
        if conn is None:
            await asyncio.sleep(max(0.0, min(seconds, poll)))
            return
        until = time.monotonic() + max(0.0, min(seconds, ENDED_RECHECK_SECONDS))
        try:
            while (left := until - time.monotonic()) > 0:
                async for note in conn.notifies(timeout=left, stop_after=1):
                    if note.payload == wanted:
                        return
        except Exception as error:  # noqa: BLE001 - the caller looks at the job again anyway
            logger.warning("listening for job endings: %s", error)
            await asyncio.sleep(max(0.0, until - time.monotonic()))

    try:
        yield pause
    finally:
        if conn is not None:
            await conn.close()


class Listener(threading.Thread):
    """Sets ``wake`` whenever a job is queued (and ``queued``, which says why); reconnects
    when its connection drops."""

    def __init__(
        self,
        wake: threading.Event,
        alias: str = "default",
        queued: threading.Event | None = None,
    ):
        super().__init__(name="cm-listener", daemon=True)
        self.wake = wake
        self.queued = queued
        self.alias = alias
        self.stopped = threading.Event()

    @staticmethod
    def available(alias: str = "default") -> bool:
        """Whether notifications may be listened for: PostgreSQL, with ``LISTEN_NOTIFY`` on
        (off behind a transaction-pooling proxy, where a LISTEN hears nothing)."""
        return bool(setting("LISTEN_NOTIFY")) and connections[alias].vendor == "postgresql"

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                with _listening_connection(self.alias, CHANNEL) as conn:
                    # Jobs may have been queued while we were not listening.
                    self.wake.set()
                    while not self.stopped.is_set():
                        for _ in conn.notifies(timeout=0.2, stop_after=1):
                            if self.queued is not None:
                                self.queued.set()
                            self.wake.set()
            except Exception as error:  # noqa: BLE001 - keep listening whatever happens
                logger.warning("job listener: %s; reconnecting", error)
                self.stopped.wait(1.0)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

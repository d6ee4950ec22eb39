"""Database calls that outlive a dropped connection or a restarting server.

A worker's writes (claim, running, heartbeat, outcome) meet two kinds of database error:
transient ones (the server restarted, the connection was killed: ``OperationalError``,
``InterfaceError``), after which the same call on a new connection succeeds, and the rest
(constraints, bad data), which no retry fixes. Only the first kind is retried here.
"""

import time

from django.db import InterfaceError, OperationalError, connection

from . import logs
from .conf import setting

logger = logs.get_logger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def reset_connection() -> None:
    """Drop this thread's connection so the next query opens a new one."""
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail too; it is gone
        connection.connection = None


def drop_if_broken() -> None:
    """Close this thread's connection if an error may have broken it and it no longer
    answers; a working one is kept, whatever ``CONN_MAX_AGE`` says: a worker queries too
    often to open a connection each time (see ``runner_threads``)."""
    if connection.connection is None or not connection.errors_occurred:
        return
    if connection.is_usable() and not connection.in_atomic_block:
        connection.errors_occurred = False
    else:
        reset_connection()


def retry_transient(step, what: str, seconds: float | None = None):
    """Call ``step()`` until it succeeds, retrying transient database errors for ``seconds``
    (default ``DATABASE_RETRY_SECONDS``) with a growing pause; then the error is raised.

    ``step`` must be safe to run again after a failure whose commit may have happened (check
    the state it wants before writing it): a server can go away between COMMIT and its answer.
    """
    limit = setting("DATABASE_RETRY_SECONDS") if seconds is None else seconds
    deadline = time.monotonic() + limit
    pause = 0.1
    while True:
        try:
            return step()
        except TRANSIENT_ERRORS as error:
            if connection.in_atomic_block:
                raise  # the outermost transaction decides; it is rolled back as a whole
            if time.monotonic() + pause > deadline:
                logger.error("%s: database unavailable for %.0f s; giving up", what, limit)
                raise
            logger.warning("%s: database unavailable (%s); retrying", what, first_line(error))
            reset_connection()
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

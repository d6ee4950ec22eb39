"""Bench-only settings: the example project's, plus counters of the SQL statements a
process sends through Django and of the database connections it opens.

PostgreSQL here has no pg_stat_statements, so the count is taken in the worker itself:
every connection gets an execute wrapper when it is opened (``connection_created``), which
also counts the connection. SIGUSR1 writes the counts to ``$BENCH_COUNTS_FILE`` so the
benchmark can read them before and after a batch of jobs. What does not go through
Django's cursors is not counted: COMMIT/ROLLBACK, and the LISTEN connection (one per worker
for its lifetime, opened with psycopg directly).
"""

import json
import os
import signal
import threading

from django.db.backends.signals import connection_created

from example_project.settings import *  # noqa: F403

COUNTS = {"statements": 0, "connections": 0}
# How often each statement was sent, by its opening words: where the count comes from.
BY_STATEMENT: dict[str, int] = {}
_lock = threading.Lock()


def _count_statement(execute, sql, params, many, context):
    opening = " ".join(sql.split())[:90]
    with _lock:
        COUNTS["statements"] += 1
        BY_STATEMENT[opening] = BY_STATEMENT.get(opening, 0) + 1
    return execute(sql, params, many, context)


def _count_connection(sender, connection, **kwargs):
    with _lock:
        COUNTS["connections"] += 1
    # A thread's connection wrapper is reused when it reconnects: wrap it once.
    if _count_statement not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count_statement)


def _write_counts(signum, frame):
    with _lock:
        counts = {**COUNTS, "by_statement": dict(BY_STATEMENT)}
    path = os.environ["BENCH_COUNTS_FILE"]
    with open(path + ".tmp", "w") as file:
        json.dump(counts, file)
    os.replace(path + ".tmp", path)  # the reader never sees half a file


connection_created.connect(_count_connection, weak=False)
signal.signal(signal.SIGUSR1, _write_counts)

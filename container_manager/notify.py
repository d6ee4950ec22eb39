"""Instant pickup on PostgreSQL: a trigger NOTIFYs when a job becomes queued, and each
worker LISTENs on a connection of its own. Polling stays the fallback (and is all SQLite has).
"""

import logging
import threading

from django.db import connections

logger = logging.getLogger(__name__)

CHANNEL = "container_manager_job_queued"

# Installed by migration 0002 on PostgreSQL only. A trigger, rather than a Django signal,
# so that every path that queues a job (ORM, bulk update, admin, raw SQL) wakes the workers.
TRIGGER_SQL = f"""
CREATE OR REPLACE FUNCTION container_manager_notify_queued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER container_manager_job_queued
AFTER INSERT OR UPDATE OF status ON container_manager_containerjob
FOR EACH ROW WHEN (NEW.status = 'queued')
EXECUTE FUNCTION container_manager_notify_queued();
"""

DROP_TRIGGER_SQL = """
DROP TRIGGER IF EXISTS container_manager_job_queued ON container_manager_containerjob;
DROP FUNCTION IF EXISTS container_manager_notify_queued();
"""


def install_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER_SQL)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGER_SQL)


class Listener(threading.Thread):
    """Sets ``wake`` whenever a job is queued; reconnects when its connection drops."""

    def __init__(self, wake: threading.Event, alias: str = "default"):
        super().__init__(name="cm-listener", daemon=True)
        self.wake = wake
        self.alias = alias
        self.stopped = threading.Event()

    @staticmethod
    def available(alias: str = "default") -> bool:
        return connections[alias].vendor == "postgresql"

    def run(self) -> None:
        import psycopg

        params = connections[self.alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        while not self.stopped.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Jobs may have been queued while we were not listening.
                    self.wake.set()
                    while not self.stopped.is_set():
                        for _ in conn.notifies(timeout=0.2, stop_after=1):
                            self.wake.set()
            except Exception as error:  # noqa: BLE001 - keep listening whatever happens
                logger.warning("job listener: %s; reconnecting", error)
                self.stopped.wait(1.0)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

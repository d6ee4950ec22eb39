"""What a webhook says about a job that ended: its JSON body, frozen as the job ends.

``ContainerJob`` builds it in the transaction that ends the job (see ``models``), and
``container_manager.webhooks`` sends it. It sits below the models: it reads a job's
attributes and imports no model.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from django.db import transaction

from .units import iso_time

EVENT = "job.finished"

# Of each output stream, the body carries the end: what a job printed last says most.
TAIL_BYTES = 4096

# Set when a transaction that wrote a delivery commits: a worker's pump in this process then
# looks at once instead of at its next poll.
written = threading.Event()


def build(job: Any) -> str:
    """The body about ``job`` as it is now (ended); ``sent`` adds the delivery's id."""
    host = job.host
    return json.dumps(
        {
            "event": EVENT,
            "job_id": str(job.pk),
            "name": job.name,
            "execution_id": job.execution_id,
            "status": job.status,
            "exit_code": job.exit_code,
            "error": job.last_error,
            "attempts": job.attempts,
            "created_at": iso_time(job.created_at),
            "started_at": iso_time(job.started_at),
            "finished_at": iso_time(job.finished_at),
            "host": host.name if host is not None else None,
            "stdout_tail": tail(job.stdout),
            "stderr_tail": tail(job.stderr),
        }
    )


def sent(delivery_id: int, body: str) -> bytes:
    """The bytes POSTed for delivery ``delivery_id``: ``body`` with the id first, the key a
    receiver dedupes by (the id exists only once the delivery's row is written)."""
    return json.dumps({"delivery_id": delivery_id, **json.loads(body)}).encode()


def tail(text: str, size: int = TAIL_BYTES) -> str:
    """The last ``size`` bytes of ``text`` in UTF-8, cut on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return text
    # Only the character the cut went through can be broken: it is dropped.
    return data[-size:].decode("utf-8", "ignore")


def announce_written() -> None:
    """Wake this process's pump once the current transaction (writing a delivery) commits."""
    transaction.on_commit(written.set)

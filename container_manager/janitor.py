"""Removing what finished attempts left on their hosts.

An attempt removes its own container once its outcome is written. When the backend cannot
be reached at that moment (engine down), the container stays behind; a worker sweeps such
leftovers from time to time. Only executions of jobs in this database that are not launching
or running are removed.
"""

import uuid

from . import logs
from .executors import ExecutorError
from .models import ContainerJob
from .states import ACTIVE

logger = logs.get_logger(__name__)


def sweep_leftovers(hosts) -> int:
    removed = 0
    for host in hosts:
        try:
            executor = host.get_executor()
            executions = executor.list_executions()
        except ExecutorError as error:
            logger.debug("sweep of %s skipped: %s", host.name, error)
            continue
        if not executions:
            continue
        job_ids = {job_id for job_id in executions.values() if is_uuid(job_id)}
        # Only jobs of this database that nothing runs now: a container whose job is unknown
        # may belong to another deployment sharing the engine, and is left alone.
        done = {
            str(pk)
            for pk in ContainerJob.objects.filter(pk__in=job_ids)
            .exclude(status__in=ACTIVE)
            .values_list("pk", flat=True)
        }
        for execution_id, job_id in executions.items():
            if job_id not in done:
                continue
            try:
                executor.cleanup(execution_id)
                removed += 1
                logger.info("removed leftover %s of job %s on %s", execution_id, job_id, host.name)
            except ExecutorError as error:
                logger.warning("could not remove leftover %s: %s", execution_id, error)
    return removed


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError):
        return False
    return True

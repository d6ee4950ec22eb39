"""A Cloud Run execution's output, from Cloud Logging.

Cloud Run writes each line a task prints as one log entry of the job (``resource.type=
"cloud_run_job"``), labelled with the execution's name (``labels."run.googleapis.com/
execution_name"``), in the log ``run.googleapis.com/stdout`` or ``run.googleapis.com/stderr``:
so the two streams come back apart, each within the output cap. A line is an entry: the
newline that ended it is given back, but a last line without one gets one too, and a line
Cloud Run recognised as JSON (structured logging) comes back as JSON re-serialised.
Cloud Logging receives entries a little after they are written: ``log_settle_seconds`` after
an execution ends is waited for before its output is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ...output import CappedOutput

STDOUT_LOG = "run.googleapis.com%2Fstdout"
STDERR_LOG = "run.googleapis.com%2Fstderr"
PAGE_SIZE = 1000


def log_filter(project: str, job: str, execution: str, since: datetime | None) -> str:
    """The Logging query for one execution's stdout and stderr (``job`` and ``execution``
    are short names)."""
    terms = [
        'resource.type="cloud_run_job"',
        f'resource.labels.job_name="{job}"',
        f'labels."run.googleapis.com/execution_name"="{execution}"',
        f'(logName="projects/{project}/logs/{STDOUT_LOG}" OR '
        f'logName="projects/{project}/logs/{STDERR_LOG}")',
    ]
    # Logging searches the last 24 hours unless told otherwise.
    start = (since or datetime.now(UTC)).astimezone(UTC) - timedelta(minutes=5)
    terms.append(f'timestamp>="{start.strftime("%Y-%m-%dT%H:%M:%SZ")}"')
    return " AND ".join(terms)


def entries(client: Any, project: str, query: str) -> Iterator[tuple[bool, bytes]]:
    """(is stderr, line with its newline) for each entry, oldest first."""
    from google.cloud.logging import ASCENDING

    for entry in client.list_entries(
        resource_names=[f"projects/{project}"],
        filter_=query,
        order_by=ASCENDING,
        page_size=PAGE_SIZE,
    ):
        yield (entry.log_name or "").endswith(STDERR_LOG), _line(entry.payload)


def _line(payload: Any) -> bytes:
    if payload is None:
        text = ""
    elif isinstance(payload, str):
        text = payload
    elif isinstance(payload, dict):
        text = json.dumps(payload, separators=(",", ":"))
    else:
        text = str(payload)
    return text.encode("utf-8", "surrogateescape") + b"\n"


def read_output(
    client: Any, project: str, query: str, deadline: float | None = None
) -> tuple[CappedOutput, CappedOutput]:
    """(stdout, stderr), each capped; reading stops at ``deadline`` (a ``time.monotonic()``
    value), keeping what was read, marked as cut."""
    stdout, stderr = CappedOutput(), CappedOutput()
    for is_stderr, line in entries(client, project, query):
        (stderr if is_stderr else stdout).feed(line)
        if deadline is not None and time.monotonic() > deadline:
            for output in (stdout, stderr):
                output.cut_short("reading it took longer than the job's time allowed")
            break
    return stdout, stderr

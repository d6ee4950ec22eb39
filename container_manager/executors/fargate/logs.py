"""A task's output, from the CloudWatch Logs stream its ``awslogs`` driver wrote.

The stream is ``<prefix>/<container name>/<task id>`` in the task definition's log group.
CloudWatch keeps one stream per container: stdout and stderr arrive there interleaved, with
nothing saying which line came from which, so all of it is reported as stdout (stderr is
empty). The driver stores each line as one event without its newline; the output is rebuilt
line by line, so a last line printed without a newline gets one. Reading stops at the
harvest's deadline, keeping what was read, marked as cut, and never holds more than the cap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ...output import CappedOutput


def stream_name(options: dict[str, str], container: str, task_arn: str) -> str:
    return f"{options['awslogs-stream-prefix']}/{container}/{task_arn.rsplit('/', 1)[-1]}"


def events(logs: Any, group: str, stream: str, deadline: float | None = None) -> Iterator[bytes]:
    """Each event's message as a line, oldest first; missing stream: nothing. Raises
    TimeoutError when ``deadline`` passes between pages."""
    token = None
    while True:
        kwargs: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if token:
            kwargs["nextToken"] = token
        try:
            page = logs.get_log_events(**kwargs)
        except Exception as error:
            if getattr(error, "response", {}).get("Error", {}).get("Code") == (
                "ResourceNotFoundException"
            ):
                return  # the container never wrote anything (or never started)
            raise
        for event in page.get("events", []):
            yield (event.get("message", "") + "\n").encode("utf-8", "surrogateescape")
        following = page.get("nextForwardToken")
        # The end of the stream: the same token comes back (pages may be empty before it).
        if not following or following == token:
            return
        token = following
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError


def read_output(logs: Any, group: str, stream: str, deadline: float | None = None) -> CappedOutput:
    output = CappedOutput()
    try:
        for line in events(logs, group, stream, deadline):
            output.feed(line)
    except TimeoutError:
        output.cut_short("reading it took longer than the job's time allowed")
    return output

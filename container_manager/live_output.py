"""A running job's output as it is printed, read from its executor a piece at a time.

For pages that poll (the admin's log panel): each call returns what was printed after
``offset`` bytes, and the offset to ask from next time. The executor is asked for the
output so far, which its own log limits bound (for Docker, the ``local`` log driver's
files); only up to ``limit`` bytes after the offset are kept per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .exceptions import ContainerManagerError
from .models import ContainerJob
from .output import decode_output, split_incomplete_utf8
from .states import JobStatus

LIVE_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class LiveOutput:
    execution_id: str  # whose output this is: a new attempt starts again at offset 0
    text: str  # stdout and stderr as they were printed, interleaved
    offset: int  # bytes read so far: where the next call starts
    restarted: bool = False  # the output was shorter than the offset: ``text`` starts afresh
    error: str = ""  # why nothing could be read (the host did not answer, say)


def read_live_output(
    job: ContainerJob, offset: int = 0, limit: int = LIVE_CHUNK_BYTES
) -> LiveOutput | None:
    """What ``job`` printed after ``offset`` bytes; None unless it is running somewhere."""
    execution_id = job.get_execution_identifier()
    if job.status != JobStatus.RUNNING or job.host is None or not execution_id:
        return None
    seen = 0
    kept = bytearray()
    try:
        for chunk in job.host.get_executor().stream_logs(execution_id, follow=False):
            end = seen + len(chunk)
            if end > offset:
                kept += chunk[max(0, offset - seen) :]
            seen = end
            if len(kept) >= limit:
                break
    except ContainerManagerError as error:
        return LiveOutput(execution_id, "", offset, error=str(error))
    if seen < offset:  # the engine rotated the log away: show what it still has
        again = read_live_output(job, 0, limit)
        return again if again is None else replace(again, restarted=True)
    complete, _cut = split_incomplete_utf8(bytes(kept[:limit]))
    return LiveOutput(execution_id, decode_output(complete), offset + len(complete))

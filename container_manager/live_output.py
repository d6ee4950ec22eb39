"""A running job's output as it is printed, read from its executor a piece at a time.

For pages that poll (the admin's log panel): each call returns what was printed after
``offset`` bytes, and the offset to ask from next time. The executor is asked for the
output so far, which its own log limits bound (for Docker, the ``local`` log driver's
files); at most the latest ``limit`` bytes after the offset are sent per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .exceptions import ContainerManagerError
from .models import ContainerJob
from .output import decode_output, split_incomplete_utf8, without_cut_head
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
    """What ``job`` printed after ``offset`` bytes; None unless it is running somewhere.

    A tail, like ``tail -f``: when more than ``limit`` bytes came since ``offset``, the
    latest ``limit`` are sent, after a line saying how much was skipped.
    """
    execution_id = job.get_execution_identifier()
    if job.status != JobStatus.RUNNING or job.host is None or not execution_id:
        return None
    seen = 0
    tail = bytearray()
    try:
        for chunk in job.host.get_executor().stream_logs(execution_id, follow=False):
            end = seen + len(chunk)
            if end > offset:
                tail += chunk[max(0, offset - seen) :]
                if len(tail) > 2 * limit:  # trimmed now and then, not at every chunk
                    del tail[: len(tail) - limit]
            seen = end
    except ContainerManagerError as error:
        return LiveOutput(execution_id, "", offset, error=str(error))
    if seen < offset:  # the engine rotated the log away: show what it still has
        again = read_live_output(job, 0, limit)
        return again if again is None else replace(again, restarted=True)
    skipped = max(0, seen - offset - limit)
    kept = bytes(tail[-limit:]) if skipped else bytes(tail)
    if skipped:  # cut at a byte count: start at the next whole character
        kept = without_cut_head(kept)
    complete, cut = split_incomplete_utf8(kept)
    text = decode_output(complete)
    if skipped:
        text = f"[... container_manager: {skipped} bytes skipped to keep up ...]\n" + text
    return LiveOutput(execution_id, text, seen - len(cut))

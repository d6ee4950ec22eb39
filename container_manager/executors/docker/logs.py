"""Reading a container's stdout and stderr from the engine, within the output cap and the
time the job has left.

The engine sends a frame (8-byte header, then the bytes) per line written, and reads its whole
log file for every request: so both streams are read at once, in large blocks, and split here
by each frame's stream byte. Nothing is held beyond the caps. The engine's log itself is
bounded (``options.log_config``); when it may have dropped the oldest output, the stored
output says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from urllib.parse import quote

import docker
import docker.errors
import requests

from ...output import CappedOutput
from .options import LOG_FILES, log_file_bytes

# Log frames' stream numbers, and how much of a log is read at a time.
STDOUT, STDERR = 1, 2
READ_BLOCK = 256 * 1024
# At most how many bytes the local log driver adds to each entry (line) it stores: length
# prefix and suffix, stream, time.
LOG_ENTRY_OVERHEAD = 40


def read_output(
    api: docker.APIClient, execution_id: str, tty: bool = False, deadline: float | None = None
) -> tuple[CappedOutput, CappedOutput]:
    """(stdout, stderr) of an execution, each capped; reading stops at ``deadline`` (a
    ``time.monotonic()`` value), keeping what was read, marked as cut."""
    outputs = {STDOUT: CappedOutput(), STDERR: CappedOutput()}
    response = _request_logs(api, execution_id, deadline)
    with closing(response):
        try:
            response.raise_for_status()
        except requests.HTTPError as error:
            docker.errors.create_api_error_from_http_exception(error)
        blocks = _blocks(response, deadline, outputs)
        if tty:  # one raw stream, no frames
            for block in blocks:
                outputs[STDOUT].feed(block)
            return outputs[STDOUT], outputs[STDERR]
        entries = _demultiplex(blocks, outputs)
    if _may_have_rotated(outputs, entries):
        for output in outputs.values():
            if output.total:
                output.lost_before(
                    "the engine keeps a bounded log per container "
                    f"({LOG_FILES} files of {log_file_bytes():,} bytes), so older output "
                    "may have been dropped"
                )
    return outputs[STDOUT], outputs[STDERR]


def _request_logs(api, execution_id, deadline):
    url = f"{api.base_url}/v{api.api_version}/containers/{quote(execution_id, safe='')}/logs"
    read_timeout = api.timeout
    if deadline is not None:
        read_timeout = max(1.0, min(read_timeout, deadline - time.monotonic()))
    return api.get(
        url,
        params={"stdout": 1, "stderr": 1, "follow": 0},
        stream=True,
        timeout=(api.timeout, read_timeout),
    )


def _blocks(response, deadline, outputs) -> Iterator[bytes]:
    while block := response.raw.read(READ_BLOCK):
        yield block
        if deadline is not None and time.monotonic() > deadline:
            for output in outputs.values():
                output.cut_short("reading it took longer than the job's time allowed")
            return


def _demultiplex(blocks, outputs) -> int:
    """Feed each frame's bytes to its stream's output; returns how many frames there were."""
    pending = bytearray()
    entries = 0
    for block in blocks:
        pending += block
        parts: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
        position, available = 0, len(pending)
        while available - position >= 8:
            end = position + 8 + int.from_bytes(pending[position + 4 : position + 8], "big")
            if end > available:
                break
            # 1 is stdout, 2 stderr; 0 (stdin, never sent for a log) goes with stdout.
            stream = STDERR if pending[position] == STDERR else STDOUT
            parts[stream].append(bytes(pending[position + 8 : end]))
            position = end
            entries += 1
        del pending[:position]
        for stream, chunks in parts.items():
            if chunks:
                outputs[stream].feed(b"".join(chunks))
    return entries


def _may_have_rotated(outputs, entries) -> bool:
    """Whether the engine may have dropped the oldest part of this log.

    It only drops once a log file has filled up, so a log that cannot have filled one (at a
    generous estimate of the engine's bytes per entry) is whole.
    """
    held = sum(output.total for output in outputs.values()) + entries * LOG_ENTRY_OVERHEAD
    return held >= log_file_bytes()

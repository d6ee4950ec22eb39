"""Peak memory and CPU time of a running container, from the engine's stats stream.

One daemon thread per execution reads the stream while the container runs and keeps the peak
memory (the cgroup's own high-water mark where the engine reports it, i.e. cgroup v1; else the
highest usage seen) and the CPU time. The engine samples about once a second, so an execution
shorter than that may report no usage at all (None).
"""

from __future__ import annotations

import contextvars
import threading

from ... import logs

logger = logs.get_logger(__name__)

# What the engine puts in a stats frame for a container that is not running.
ZERO_TIME = "0001-01-01T00:00:00Z"


class UsageSampler:
    """Reads one container's stats stream in a daemon thread and keeps peak memory and CPU."""

    def __init__(self, api, container_id):
        self.api = api
        self.container_id = container_id
        self.peak_memory_bytes: int | None = None
        self.cpu_seconds: float | None = None
        self.stopped = threading.Event()
        # Its lines are about the job of the thread that started it (see logs.job_context).
        self.thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run,),
            name=f"docker-stats-{container_id[:12]}",
            daemon=True,
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        # Seen at the next frame (about a second); removing the container ends the stream.
        self.stopped.set()

    def _run(self):
        try:
            for frame in self.api.stats(self.container_id, stream=True, decode=True):
                if self.stopped.is_set():
                    break
                if not self._record(frame) and not self._still_running():
                    # The engine keeps sending empty frames for an ended container.
                    break
        except Exception as error:  # noqa: BLE001 - a sampler must never take a worker down
            logger.debug("stats of container %s: %s", self.container_id[:12], error)
        finally:
            self.stopped.set()

    def _record(self, frame):
        if not isinstance(frame, dict) or frame.get("read", ZERO_TIME) == ZERO_TIME:
            return False
        memory = frame.get("memory_stats") or {}
        # cgroup v1: the cgroup's own high-water mark. cgroup v2 engines report usage only.
        peak = max(memory.get("max_usage") or 0, memory.get("usage") or 0)
        if peak:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, peak)
        total = ((frame.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total:
            self.cpu_seconds = max(self.cpu_seconds or 0.0, total / 1e9)
        return bool(peak or total)

    def _still_running(self):
        try:
            return bool(self.api.inspect_container(self.container_id)["State"]["Running"])
        except Exception:  # noqa: BLE001 - gone or unreachable: either way, stop sampling
            return False

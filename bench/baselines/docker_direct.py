"""Running a container without us: the least a Docker SDK user writes, and `docker run --rm`.

Both are timed around what their user waits for: the SDK's create, start, wait, logs and
remove; the CLI call as a whole.
"""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

IMAGE = "local/busybox:latest"
COMMAND = ["true"]


def sdk_client():
    import docker

    return docker.from_env(timeout=60)


def sdk_once(client) -> None:
    container = client.containers.create(IMAGE, COMMAND)
    container.start()
    container.wait(timeout=60)
    container.logs()
    container.remove()


def docker_run_once(_client=None) -> None:
    subprocess.run(["docker", "run", "--rm", IMAGE, *COMMAND], check=True, timeout=60)


def each_ms(run, jobs: int, client=None) -> list[float]:
    """``jobs`` runs one after another: the time of each, in ms."""
    times = []
    for _ in range(jobs):
        started = time.perf_counter()
        run(client)
        times.append((time.perf_counter() - started) * 1000)
    return times


def wall_s(run, jobs: int, threads: int, client=None) -> float:
    """``jobs`` runs, ``threads`` at a time: the wall time of the lot, in seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: run(client), range(jobs)))
    return time.perf_counter() - started

"""What running a job through container_manager costs over running the container by hand.

Sequential short jobs (`true` in the test image) on the local engine, end to end: for
container_manager from queued_at to finished_at, with a worker already waiting on PostgreSQL
(LISTEN/NOTIFY) or SQLite (polling at 0.05 s); baseline in the same run: `docker run --rm` of
the same image and command, timed around the whole CLI call.

    .venv/bin/python bench/docker_overhead.py [--jobs 20] [--database-url ...]
"""

import argparse
import subprocess
import time

from common import fresh_postgres, setup_django, start_worker, summary, wait_for

IMAGE = "local/busybox:latest"


def docker_run_baseline(jobs):
    times = []
    for _ in range(jobs):
        started = time.monotonic()
        subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True)
        times.append((time.monotonic() - started) * 1000)
    return summary(times)


def through_container_manager(jobs):
    from container_manager.api import create_job
    from container_manager.models import ContainerJob, ExecutorHost, Worker

    host = ExecutorHost.objects.create(
        name="bench-docker", executor_type="docker", executor_config={"pull_policy": "never"}
    )
    worker = start_worker("--host", host.name, "--poll-interval", "0.05")
    try:
        wait_for(lambda: Worker.objects.filter(stopped_at__isnull=True).exists())
        time.sleep(1.5)
        times = []
        for _ in range(jobs):
            job = create_job(IMAGE, ["true"], host=host)
            wait_for(lambda job=job: ContainerJob.objects.get(pk=job.pk).is_terminal, interval=0.01)
            job.refresh_from_db()
            assert job.status == "completed", job.last_error
            times.append((job.finished_at - job.queued_at).total_seconds() * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
    return summary(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/cm_bench_docker"
    )
    args = parser.parse_args()
    url = args.database_url
    setup_django(fresh_postgres(url) if url.startswith("postgres") else url)
    base_median, base_p95 = docker_run_baseline(args.jobs)
    cm_median, cm_p95 = through_container_manager(args.jobs)
    print(f"{args.jobs} sequential `true` containers, end to end")
    print(
        f"  docker run --rm     : median {base_median:7.1f} ms   p95 {base_p95:7.1f} ms  (baseline)"
    )
    print(f"  container_manager   : median {cm_median:7.1f} ms   p95 {cm_p95:7.1f} ms")
    print(f"  ratio (container_manager / docker run, median): {cm_median / base_median:.2f}")


if __name__ == "__main__":
    main()

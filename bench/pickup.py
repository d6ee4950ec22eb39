"""How long a queued job waits before a worker claims it, on PostgreSQL.

Measured from the job's queued_at to its attempt's start (both written by the database
clients on this machine), for jobs queued one at a time at random moments. Baseline in the
same run: the same worker with LISTEN/NOTIFY turned off, i.e. polling at the default interval.

    .venv/bin/python bench/pickup.py [--jobs 40] [--database-url postgres://.../cm_bench]
"""

import argparse
import random
import time

from common import fresh_postgres, setup_django, start_worker, summary, wait_for


def measure(host, jobs, listen):
    from container_manager.api import create_job
    from container_manager.models import ContainerJob, JobAttempt, Worker

    Worker.objects.all().delete()
    worker = start_worker("--host", host.name, settings={"LISTEN_NOTIFY": listen})
    try:
        wait_for(lambda: Worker.objects.filter(stopped_at__isnull=True).exists())
        time.sleep(1.5)  # let it settle into waiting
        created = []
        for _ in range(jobs):
            time.sleep(random.uniform(0.05, 0.3))
            created.append(create_job("bench", ["true"], host=host).pk)
        wait_for(
            lambda: ContainerJob.objects.filter(pk__in=created, status="completed").count() == jobs
        )
    finally:
        worker.terminate()
        worker.wait(30)
    pickups = []
    for attempt in JobAttempt.objects.filter(job__in=created).select_related("job"):
        pickups.append((attempt.started_at - attempt.job.queued_at).total_seconds() * 1000)
    return summary(pickups)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/cm_bench_pickup"
    )
    args = parser.parse_args()
    setup_django(fresh_postgres(args.database_url))
    from container_manager.models import ExecutorHost

    host = ExecutorHost.objects.create(name="bench-mock", executor_type="mock")
    notify_median, notify_p95 = measure(host, args.jobs, listen=True)
    poll_median, poll_p95 = measure(host, args.jobs, listen=False)
    print(f"pickup of {args.jobs} jobs queued one at a time (default poll interval 1 s)")
    print(f"  LISTEN/NOTIFY : median {notify_median:7.1f} ms   p95 {notify_p95:7.1f} ms")
    print(f"  polling only  : median {poll_median:7.1f} ms   p95 {poll_p95:7.1f} ms  (baseline)")
    print(f"  ratio (notify / polling, median): {notify_median / poll_median:.3f}")
    print(f"  target median under 50 ms: {'met' if notify_median < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()

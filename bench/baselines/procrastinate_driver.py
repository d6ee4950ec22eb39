"""Procrastinate's side of the benchmark, run by the Python of its own virtualenv
(``var/bench/procrastinate-venv``), never imported by ours.

    BENCH_PG_URL=postgres://... BENCH_MARKS=FILE python procrastinate_driver.py COMMAND

COMMAND is ``schema``, ``worker [--concurrency 4]``, ``pickup --jobs 20`` or
``throughput --jobs 200``. ``pickup`` and ``throughput`` are the client: they expect workers
to be running already (started by bench/run.py, which reads their CPU time), and print one
JSON object. The tasks write to BENCH_MARKS, in the worker, when their code starts.
"""

import argparse
import json
import logging
import os
import random
import sys
import time

import procrastinate

QUEUE = "bench"
# Every wait is bounded: a stuck worker fails the benchmark instead of hanging it.
TIMEOUT = 300

# Its warning that the App lives in __main__ is true and harmless here: a script of its own.
logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
URL = os.environ["BENCH_PG_URL"]
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))


@app.task(queue=QUEUE, name="mark")
def mark(seq: int) -> None:
    """Zero-length, but says when its code started (the pickup's "task started")."""
    with open(os.environ["BENCH_MARKS"], "a") as file:
        file.write(f"{seq} {time.time()}\n")


@app.task(queue=QUEUE, name="noop")
def noop() -> None:
    pass


def _count(connection, status: str) -> int:
    return connection.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE status = %s", [status]
    ).fetchone()[0]


def _wait_done(connection, total: int, interval: float) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _count(connection, "succeeded") < total:
        if time.monotonic() > deadline:
            sys.exit(f"procrastinate: jobs not done after {TIMEOUT} s")
        time.sleep(interval)


def pickup(jobs: int) -> dict:
    """Jobs deferred one at a time to an idle worker, at random moments, as bench/run.py
    does for ours: defer call -> claimed ("started" event) and -> task code running."""
    import psycopg

    marks = os.environ["BENCH_MARKS"]
    open(marks, "w").close()
    deferred = {}  # seq -> (job id, wall time of the defer call)
    with psycopg.connect(URL, autocommit=True) as connection:
        before = _count(connection, "succeeded")
        with app.open():
            for seq in range(jobs):
                time.sleep(random.uniform(0.05, 0.3))
                started = time.time()
                deferred[seq] = (mark.defer(seq=seq), started)
        _wait_done(connection, before + jobs, 0.05)
        claimed = dict(
            connection.execute(
                "SELECT job_id, extract(epoch FROM at) FROM procrastinate_events "
                "WHERE type = 'started' AND job_id = ANY(%s)",
                [[job_id for job_id, _ in deferred.values()]],
            ).fetchall()
        )
    running = {}
    with open(marks) as file:
        for line in file:
            seq, at = line.split()
            running[int(seq)] = float(at)
    return {
        "claimed_ms": [(float(claimed[job]) - t0) * 1000 for job, t0 in deferred.values()],
        "running_ms": [(running[seq] - t0) * 1000 for seq, (_, t0) in deferred.items()],
    }


def throughput(jobs: int) -> dict:
    """N zero-length jobs in one batch_defer (one INSERT), timed from the call to all of
    them seen succeeded."""
    import psycopg

    with psycopg.connect(URL, autocommit=True) as connection:
        before = _count(connection, "succeeded")
        with app.open():
            started = time.perf_counter()
            noop.batch_defer(*({} for _ in range(jobs)))
            _wait_done(connection, before + jobs, 0.01)
            elapsed = time.perf_counter() - started
    return {"seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["schema", "worker", "pickup", "throughput"])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    if args.command == "schema":
        with app.open():
            app.schema_manager.apply_schema()
    elif args.command == "worker":
        # Deleting nothing and listening for NOTIFY: Procrastinate's defaults, but for
        # concurrency, which matches our worker's default MAX_CONCURRENT_JOBS (4 threads).
        app.run_worker(queues=[QUEUE], concurrency=args.concurrency)
    elif args.command == "pickup":
        print(json.dumps(pickup(args.jobs)))
    else:
        print(json.dumps(throughput(args.jobs)))


if __name__ == "__main__":
    main()

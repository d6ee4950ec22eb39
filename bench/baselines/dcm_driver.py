"""django-container-manager 1.0.14's side of the benchmark, run by the Python of its own
virtualenv (``var/bench/dcm-venv``) in the throwaway project bench/run.py writes into
``var/bench/dcm-project`` (it shares our app label, ``container_manager``, so it can never
live in our virtualenv).

    DJANGO_SETTINGS_MODULE=dcm_settings DCM_DATABASE_URL=postgres://... python dcm_driver.py COMMAND

COMMAND is ``setup`` (migrate, create the Docker host), ``worker`` (its --legacy-mode
worker: its default queue mode does not complete jobs), ``seq --jobs N`` or
``many --jobs N``; the last two are the client and print one JSON object.
"""

import argparse
import json
import sys
import time

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from container_manager.models import ContainerJob, ExecutorHost  # noqa: E402

IMAGE, COMMAND, HOST = "local/busybox:latest", "true", "bench-docker"
ENDED = {"completed", "failed", "timeout", "cancelled"}
TIMEOUT = 120  # every wait is bounded


def create():
    host = ExecutorHost.objects.get(name=HOST)
    return ContainerJob.objects.create(docker_image=IMAGE, command=COMMAND, docker_host=host)


def wait(ids, interval) -> None:
    deadline = time.monotonic() + TIMEOUT
    while ContainerJob.objects.filter(pk__in=ids).exclude(status__in=ENDED).exists():
        if time.monotonic() > deadline:
            sys.exit(f"django-container-manager: jobs not done after {TIMEOUT} s")
        time.sleep(interval)
    failed = ContainerJob.objects.filter(pk__in=ids).exclude(status="completed").first()
    if failed:
        sys.exit(f"django-container-manager: job {failed.pk} ended {failed.status}")


def seq(jobs: int) -> dict:
    """One job at a time, created and followed as a client would (as ours in run.py)."""
    times = []
    for _ in range(jobs):
        started = time.perf_counter()
        wait([create().pk], 0.005)
        times.append((time.perf_counter() - started) * 1000)
    return {"ms": times}


def many(jobs: int) -> dict:
    started = time.perf_counter()
    wait([create().pk for _ in range(jobs)], 0.01)
    return {"seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "worker", "seq", "many"])
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    if args.command == "setup":
        call_command("migrate", verbosity=0)
        ExecutorHost.objects.create(
            name=HOST,
            executor_type="docker",
            host_type="unix",
            connection_string="unix:///var/run/docker.sock",
            auto_pull_images=False,  # nothing can be pulled here
            max_concurrent_jobs=8,
        )
    elif args.command == "worker":
        # Its shortest poll interval (whole seconds); 8 jobs launched per turn, as ours
        # runs 8 at once in the Docker workloads.
        call_command(
            "process_container_jobs",
            "--legacy-mode",
            "--poll-interval=1",
            "--max-jobs=8",
            f"--host={HOST}",
        )
    else:
        print(json.dumps((seq if args.command == "seq" else many)(args.jobs)))


if __name__ == "__main__":
    main()

"""Submit a handful of jobs, run a worker until they are done, and show the results."""

import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
(ROOT / "var").mkdir(exist_ok=True)
DB_PATH = ROOT / "var" / "demo.sqlite3"
DB_PATH.unlink(missing_ok=True)  # every demo starts from an empty database
os.environ["DATABASE_URL"] = f"sqlite:///{DB_PATH}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
os.environ.setdefault("CONTAINER_MANAGER_LOG_LEVEL", "WARNING")
# busybox's sleep ignores SIGTERM: kill the timed-out job after 2 s rather than the default 10.
os.environ.setdefault("CONTAINER_MANAGER_SETTINGS", '{"STOP_GRACE_SECONDS": 2}')

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from container_manager.api import create_job  # noqa: E402
from container_manager.models import EnvironmentVariableTemplate, ExecutorHost  # noqa: E402

IMAGE = os.environ.get("DEMO_IMAGE", "local/busybox:latest")
EXECUTOR = os.environ.get("DEMO_EXECUTOR", "docker")


def main():
    call_command("migrate", verbosity=0)
    host = ExecutorHost.objects.create(
        name=f"demo-{EXECUTOR}",
        executor_type=EXECUTOR,
        connection_string=os.environ.get("DOCKER_HOST", "") if EXECUTOR == "docker" else "",
        executor_config={"pull_policy": "if-missing"} if EXECUTOR == "docker" else {},
    )
    health = host.check_health()
    print(f"Host {host.name}: {health.message}")
    template = EnvironmentVariableTemplate.objects.create(
        name="demo", environment_variables="GREETING=hello\n# a comment\nQUERY=a=b&c=d\n"
    )
    jobs = [
        create_job(
            IMAGE,
            ["sh", "-c", 'echo "$GREETING from a container"; echo "QUERY=$QUERY"'],
            host=host,
            name="hello",
            env_template=template,
            env={"GREETING": "hi"},
        ),
        create_job(
            IMAGE,
            ["sh", "-c", "echo hi; echo oops >&2; exit 3"],
            host=host,
            name="exit-code-3",
        ),
        create_job(IMAGE, ["sleep", "60"], host=host, name="timeout-after-2s", timeout_seconds=2),
        create_job(
            IMAGE,
            # dd as the container's main process: the kernel kills it at 16 MB.
            ["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=64"],
            host=host,
            name="out-of-memory",
            memory_limit=16,
        ),
        create_job("local/no-such-image:1.0", ["true"], host=host, name="missing-image"),
    ]
    print(f"Submitted {len(jobs)} jobs; running a worker until they are done...\n")
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.2")

    for job in jobs:
        job.refresh_from_db()
        print(f"== {job.name}: {job.status.upper()}  exit code {job.exit_code}")
        print(f"   Execution ID: {job.execution_id or '-'}")
        if job.peak_memory_bytes is not None:
            cpu = f"{job.cpu_seconds:.2f} s" if job.cpu_seconds is not None else "-"
            print(f"   peak memory {job.peak_memory_bytes / 2**20:.1f} MB, CPU {cpu}")
        for label, text in (
            ("stdout", job.stdout),
            ("stderr", job.stderr),
            ("error", job.last_error),
        ):
            if text.strip():
                print(textwrap.indent(text.rstrip(), f"   {label}| "))
        print()
    print(f"Database: {DB_PATH} (inspect with DATABASE_URL=sqlite:///{DB_PATH} ./manage.py ...)")
    env = f"DATABASE_URL=sqlite:///{DB_PATH}"
    print(
        f"In the admin: {env} .venv/bin/python manage.py createsuperuser, then\n"
        f"  {env} .venv/bin/python manage.py runserver, and open /admin/ (Queue overview)"
    )


if __name__ == "__main__":
    main()

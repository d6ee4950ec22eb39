"""Run by django-container-manager 1.0.14's own virtualenv (bench/baselines/dcm_venv.py):
migrate a database with that package, fill it through its own models, print what was made.

    DJANGO_SETTINGS_MODULE=dcm_settings DCM_DATABASE_URL=sqlite:///path python fill_dcm_1x.py
        [--drop-column COLUMN]

``--drop-column`` then takes a column off its job table: a schema that is not 1.0.14's.
"""

import argparse
import json
from datetime import timedelta

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from container_manager.models import (  # noqa: E402
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
)

IMAGE = "local/busybox:latest"


def fill() -> dict:
    user = User.objects.create(username="old-operator")
    docker = ExecutorHost.objects.create(
        name="docker-main",
        host_type="unix",
        connection_string="unix:///var/run/docker.sock",
        auto_pull_images=False,
        max_concurrent_jobs=7,
        weight=300,
        executor_config={"base_url": "unix:///var/run/docker.sock"},
    )
    ExecutorHost.objects.create(
        name="cloud",
        executor_type="cloudrun",
        connection_string="projects/acme/locations/europe-west1",
        executor_config={"project": "acme", "region": "europe-west1"},
        is_active=False,
    )
    scaleway = ExecutorHost.objects.create(
        name="scw", executor_type="scaleway", connection_string="fr-par"
    )
    template = EnvironmentVariableTemplate.objects.create(
        name="base",
        description="shared",
        environment_variables_text="LOG_LEVEL=info\nURL=http://x/?a=b",
        created_by=user,
    )
    now = timezone.now()
    started = now - timedelta(minutes=5)

    def job(key, status, **fields):
        fields.setdefault("docker_host", docker)
        made = ContainerJob.objects.create(docker_image=IMAGE, status=status, **fields)
        return key, str(made.id)

    jobs = dict(
        [
            job(
                "completed",
                "completed",
                name="nightly",
                command="sh -c 'echo \"hello world\"; exit 0'",
                environment_template=template,
                override_environment="GREETING=hi there\nAPI_TOKEN=s3cret",
                memory_limit=64,
                cpu_limit=0.5,
                timeout_seconds=120,
                execution_id="4f1c0ffee",
                exit_code=0,
                stdout_log="hello world\n",
                stderr_log="a warning\n",
                max_memory_usage=1234567,
                cpu_usage_percent=12.5,
                started_at=started,
                launched_at=started,
                completed_at=now,
                created_by=user,
                priority=80,
                working_directory="/tmp",
            ),
            job(
                "failed",
                "failed",
                command="false",
                execution_id="dead01",
                exit_code=1,
                started_at=started,
                completed_at=now,
                last_error="exit 1",
            ),
            job(
                "timeout",
                "timeout",
                command="sleep 99",
                execution_id="slow01",
                started_at=started,
                completed_at=now,
            ),
            job("cancelled", "cancelled", command="true"),
            job("pending", "pending", command="echo later", description="not carried"),
            job("queued", "queued", command="echo now", queued_at=now, max_retries=5),
            job("retrying", "retrying", command="echo again", retry_count=1, queued_at=now),
            job(
                "running",
                "running",
                command="sleep 1000",
                execution_id="live01",
                started_at=started,
            ),
            job("bad_quotes", "queued", command="echo 'unbalanced", queued_at=now),
            job(
                "scaleway",
                "completed",
                command="true",
                docker_host=scaleway,
                execution_id="scw-exec-1",
                started_at=started,
                completed_at=now,
                exit_code=0,
            ),
            job("scaleway_queued", "queued", command="true", docker_host=scaleway, queued_at=now),
        ]
    )
    return {"user": user.pk, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop-column")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    made = fill()
    if args.drop_column:
        with connection.cursor() as cursor:
            cursor.execute(
                f"ALTER TABLE container_manager_containerjob DROP COLUMN {args.drop_column}"
            )
    print(json.dumps(made))


if __name__ == "__main__":
    main()

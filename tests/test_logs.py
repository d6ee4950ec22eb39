"""Structured logs: a real worker loop logging through the JSON formatter, each line checked,
and no secret value anywhere in what it wrote."""

import io
import json
import logging
from pathlib import Path

import pytest

from container_manager import logs
from container_manager.api import create_job
from container_manager.models import ExecutorHost, RegistryCredential
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "hunter2-s3cret-value"
PASSWORD = "registry-pa55word"


@pytest.fixture
def json_lines():
    """Everything container_manager logs at DEBUG and above, as the documented JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JSONFormatter())
    logger = logging.getLogger("container_manager")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_line_is_json_and_job_lines_name_their_job(json_lines):
    ok = ExecutorHost.objects.create(name="ok", executor_type="mock")
    failing = ExecutorHost.objects.create(
        name="failing", executor_type="mock", executor_config={"exit_code": 3}
    )
    # The engine's error quotes the secret, as Docker quotes a bad environment variable.
    quoting = ExecutorHost.objects.create(
        name="quoting",
        executor_type="mock",
        executor_config={"launch_error": f"invalid environment variable: API_TOKEN={SECRET}"},
    )
    RegistryCredential.objects.create(
        registry="registry.example.com", username="ci", password=PASSWORD
    )
    image = "registry.example.com/team/tool:1"
    jobs = [
        create_job(image, ["sh", "-c", "echo $API_TOKEN"], host=ok, env={"API_TOKEN": SECRET}),
        create_job(image, ["false"], host=failing, env={"API_TOKEN": SECRET}),
        create_job(image, ["true"], host=quoting, env={"API_TOKEN": SECRET}),
    ]
    Worker(until_idle=True, poll_interval=0.05).run()

    text = json_lines.getvalue()
    assert SECRET not in text and PASSWORD not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(
        set(line) >= {"time", "level", "logger", "message", *logs.JOB_FIELDS} for line in lines
    )
    about = {}
    for line in lines:
        if line["job_id"] is not None:
            about.setdefault(line["job_id"], []).append(line)
    assert set(about) == {str(job.pk) for job in jobs}
    for job in jobs:
        job.refresh_from_db()
        for line in about[str(job.pk)]:
            assert line["host"] == job.host.name
            assert line["attempt"] == 1
            assert str(job.pk) in line["message"] or line["logger"].endswith("executor")
        # Once started, its lines name the execution.
        ended = about[str(job.pk)][-1]
        assert ended["execution_id"] == (job.execution_id or None)
    quoted = [line for line in about[str(jobs[2].pk)] if "invalid environment" in line["message"]]
    assert quoted and all("API_TOKEN=••••••" in line["message"] for line in quoted)


def test_a_message_quoting_a_secret_is_masked_in_any_format(caplog):
    logger = logs.get_logger("container_manager.test")
    with logs.job_context("j1", host="h", attempt=2) as fields:
        logs.bind(secrets=(SECRET,), execution_id="e1")
        with caplog.at_level(logging.INFO, logger="container_manager"):
            logger.info("engine said %s", f"TOKEN={SECRET}")
        assert fields["execution_id"] == "e1"
    (record,) = caplog.records
    assert record.getMessage() == "engine said TOKEN=••••••"
    assert (record.job_id, record.execution_id, record.host, record.attempt) == ("j1", "e1", "h", 2)
    line = json.loads(logs.JSONFormatter().format(record))
    assert line["job_id"] == "j1" and line["message"] == "engine said TOKEN=••••••"


def test_lines_about_no_job_carry_the_fields_empty():
    record = logging.LogRecord("container_manager.worker", logging.INFO, "", 0, "hi", (), None)
    line = json.loads(logs.JSONFormatter().format(record))
    assert [line[name] for name in logs.JOB_FIELDS] == [None] * 4
    assert line["message"] == "hi" and line["level"] == "INFO"


def test_the_example_projects_json_logging_from_a_worker_process(worker_processes, mock_host):
    job = create_job("img", ["true"], host=mock_host, env={"DB_PASSWORD": SECRET})
    worker = worker_processes.start(
        "--until-idle", "--poll-interval", "0.1", env={"CONTAINER_MANAGER_LOG_FORMAT": "json"}
    )
    assert worker.wait(60) == 0, worker_processes.logs()
    text = Path(worker.log_path).read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    mine = [line for line in lines if line["job_id"] == str(job.pk)]
    assert mine and all(line["host"] == "mock" and line["attempt"] == 1 for line in mine)

"""manage_container_job: argument parsing, delegation to the API, and what it prints."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from container_manager import api, notify
from container_manager.executors import BaseExecutor, ExecutorUnavailable
from container_manager.executors.mock import MockExecutor
from container_manager.launching import launch
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobAttempt,
)
from container_manager.states import JobStatus

ROOT = Path(__file__).resolve().parent.parent


def run(*args, stderr=None):
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=stderr or io.StringIO())
    return out.getvalue()


def create(*args):
    return run("create", "--host", "mock", "--image", "alpine:3.20", *args)


def make_running(job, **fields):
    assert job.transition(JobStatus.LAUNCHING, attempts=job.attempts + 1)
    assert job.transition(JobStatus.RUNNING, started_at=timezone.now(), **fields)
    return job


def make_failed(job, **fields):
    make_running(job)
    fields.setdefault("exit_code", 1)
    assert job.transition(JobStatus.FAILED, finished_at=timezone.now(), **fields)
    return job


class BrokenExecutor(BaseExecutor):
    type_name = "broken"

    def health_check(self):
        raise ExecutorUnavailable("daemon unreachable at tcp://nowhere:2376")


class LineDroppingExecutor(MockExecutor):
    """Follows as Docker's engine does: a last line without a newline is left out."""

    type_name = "line-dropping"
    printed = b"one\ntwo"

    def stream_logs(self, execution_id, follow=False):
        yield self.printed.rpartition(b"\n")[0] + b"\n" if follow else self.printed


class ChunkyExecutor(MockExecutor):
    """Streams output in chunks that cut a UTF-8 character in two."""

    type_name = "chunky"

    def stream_logs(self, execution_id, follow=False):
        yield from [b"caf", b"\xc3", b"\xa9 ", b"\xff\n"]


@pytest.fixture
def extra_executors(settings):
    settings.CONTAINER_MANAGER = {
        "EXECUTORS": {
            "broken": "tests.test_cli.BrokenExecutor",
            "chunky": "tests.test_cli.ChunkyExecutor",
            "line-dropping": "tests.test_cli.LineDroppingExecutor",
        }
    }


# -- create ------------------------------------------------------------------------------


def test_create_prints_the_job(mock_host):
    out = create("--", "echo", "hi")
    job = ContainerJob.objects.get()
    assert out.strip() == f"Created job {job.pk} (status: queued, host: mock)"
    assert job.command == ["echo", "hi"]
    assert job.host == mock_host


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "echo hi; exit 3"],
        ["-x", "--flag", "-", "--", "--host", "other", "--json", "-1"],
        ["sh", "-c", "cat /etc/passwd | grep root && echo $HOME > /tmp/x; `id` 'q' \"dq\" *"],
        ["printf", "%s\\n", "a b", "", "ünïcødé"],
    ],
)
def test_create_json_keeps_the_argv_after_double_dash_literally(mock_host, argv):
    data = json.loads(create("--json", "--", *argv))
    job = ContainerJob.objects.get()
    assert data["id"] == str(job.pk)
    assert data["command"] == argv
    assert job.command == argv
    assert data["status"] == "queued"
    assert data["host"] == "mock"


def test_create_without_command_uses_the_image_default(mock_host):
    create()
    assert ContainerJob.objects.get().command == []


def test_create_with_every_option(mock_host):
    EnvironmentVariableTemplate.objects.create(
        name="base", environment_variables="TOKEN=template-secret\n"
    )
    out = create(
        "--name",
        "nightly",
        "--env",
        "API_KEY=super=secret=",
        "--env",
        "EMPTY=",
        "--env-template",
        "base",
        "--memory",
        "128",
        "--cpus",
        "0.5",
        "--timeout",
        "60",
        "--priority",
        "-5",
        "--max-attempts",
        "3",
        "--hold",
        "--json",
        "--",
        "true",
    )
    job = ContainerJob.objects.get()
    assert job.name == "nightly"
    # API_KEY is a secret by its name: stored sealed, given to the container in clear.
    assert job.environment_overrides["API_KEY"].startswith("cmsecret:v1:")
    assert job.environment_overrides["EMPTY"] == ""
    assert job.get_environment() == {
        "API_KEY": "super=secret=",
        "EMPTY": "",
        "TOKEN": "template-secret",
    }
    assert job.environment_template.name == "base"
    assert (job.memory_limit, job.cpu_limit, job.timeout_seconds) == (128, 0.5, 60)
    assert (job.priority, job.max_attempts) == (-5, 3)
    assert job.status == JobStatus.PENDING
    data = json.loads(out)
    assert data["environment_override_names"] == ["API_KEY", "EMPTY"]
    assert data["environment_template"] == "base"
    assert "secret" not in out


def test_create_without_host_lets_routing_choose(transactional_db, mock_host):
    ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    run("create", "--image", "alpine", "--", "true")
    job = ContainerJob.objects.get()
    assert (job.requested_host, job.host) == (None, None)  # chosen when it is launched
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")
    job.refresh_from_db()
    assert (job.status, job.host) == ("completed", mock_host)
    assert job.attempt_set.get().routing == "mock: 0 of 10 slots busy, weight 100"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--host", "nope"], "host: no executor host named 'nope'"),
        (["--image", "two words"], "image: "),
        (["--image", ""], "image: "),
        (["--name", "n" * 201], "name: "),
        (["--memory", "-5"], "memory_limit: "),
        (["--memory", "0"], "memory_limit: "),
        (["--memory", str(10**12)], "memory_limit: "),
        (["--cpus", "0"], "cpu_limit: "),
        (["--cpus", "-1"], "cpu_limit: "),
        (["--cpus", "100000"], "cpu_limit: "),
        (["--cpus", "inf"], "cpu_limit: "),
        (["--cpus", "nan"], "cpu_limit: "),
        (["--timeout", "0"], "timeout_seconds: "),
        (["--timeout", "-1"], "timeout_seconds: "),
        (["--timeout", str(10**9)], "timeout_seconds: "),
        (["--max-attempts", "0"], "max_attempts: "),
        (["--max-attempts", "1000"], "max_attempts: "),
        (["--priority", str(2**70)], "priority: "),
        (["--env", "NO_EQUALS_SIGN"], "env: expected KEY=VALUE"),
        (["--env", "1BAD=supersecret"], "environment_overrides: "),
        (["--env", "BAD-NAME=supersecret"], "environment_overrides: "),
        (["--env-template", "nope"], "env_template: "),
        (["--memory", "lots"], "--memory"),
        (["--cpus", "two"], "--cpus"),
        (["--timeout", "1.5"], "--timeout"),
        (["--depends-on", "not-a-job"], "depends_on: 'not-a-job' is not a job id"),
    ],
)
def test_create_rejects_bad_input_naming_the_field(mock_host, extra, expected):
    with pytest.raises(CommandError) as caught:
        create(*extra, "--", "true")
    assert expected in str(caught.value)
    assert "supersecret" not in str(caught.value)
    assert ContainerJob.objects.count() == 0


def test_create_with_dependencies_waits_for_them(mock_host):
    first = api.create_job("alpine:3.20", ["true"], host=mock_host)
    second = api.create_job("alpine:3.20", ["true"], host=mock_host)
    data = json.loads(
        create("--depends-on", str(first.pk), "--depends-on", str(second.pk), "--json", "--", "x")
    )
    assert data["status"] == "pending"
    assert sorted(data["depends_on"]) == sorted([str(first.pk), str(second.pk)])


def test_create_on_an_inactive_host_is_refused(mock_host):
    ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    with pytest.raises(CommandError, match="host: host 'off' is not active"):
        run("create", "--host", "off", "--image", "alpine")
    assert ContainerJob.objects.count() == 0


def test_create_without_any_host_is_refused(db):
    with pytest.raises(CommandError, match="host: no active host fits: any active host"):
        run("create", "--image", "alpine")
    assert ContainerJob.objects.count() == 0


def test_create_requires_an_image(mock_host):
    with pytest.raises(CommandError, match="--image"):
        run("create", "--host", "mock")


def test_a_subcommand_is_required(db):
    with pytest.raises(CommandError, match="required: SUBCOMMAND"):
        run()


# -- job lookup ------------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["show", "logs", "release", "cancel", "retry"])
@pytest.mark.parametrize("job_id", ["nope", "12345", "7c823719-c051-4c16-9406-3454e854f3a8"])
def test_unknown_or_malformed_job_id(db, subcommand, job_id):
    with pytest.raises(CommandError, match=f"no job with id or execution id '{job_id}'"):
        run(subcommand, job_id)


def test_show_and_logs_take_an_execution_id_of_any_attempt(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host, name="found")
    make_running(job, execution_id="exec-second")
    JobAttempt.objects.create(job=job, number=1, host=mock_host, execution_id="exec-first")
    ContainerJob.objects.filter(pk=job.pk).update(stdout="the output\n")
    for identifier in ("exec-second", "exec-first", str(job.pk)):
        assert f"ID: {job.pk}" in run("show", identifier)
        assert run("logs", identifier) == "the output\n"


def test_an_execution_id_shared_by_two_jobs_is_refused_by_name(mock_host):
    jobs = [api.create_job("alpine", ["true"], host=mock_host) for _ in range(2)]
    for job in jobs:
        make_running(job, execution_id="same-id")
    with pytest.raises(CommandError, match="'same-id' names more than one job"):
        run("show", "same-id")


# -- list --------------------------------------------------------------------------------


def test_list(mock_host):
    other = ExecutorHost.objects.create(name="other", executor_type="mock")
    first = api.create_job("alpine", ["true"], host=mock_host, name="first")
    second = api.create_job("busybox", ["true"], host=other, name="second")
    cancelled = api.cancel_job(api.create_job("alpine", ["true"], host=mock_host))

    lines = run("list").splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "HOST", "IMAGE", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [
        str(job.pk) for job in (cancelled, second, first)
    ]
    assert lines[2].split()[1:5] == ["second", "queued", "other", "busybox"]

    only_cancelled = run("list", "--status", "cancelled")
    assert str(cancelled.pk) in only_cancelled
    assert str(first.pk) not in only_cancelled
    on_other = run("list", "--host", "other")
    assert str(second.pk) in on_other
    assert str(first.pk) not in on_other
    assert len(run("list", "--limit", "1").splitlines()) == 2

    data = json.loads(run("list", "--json"))
    assert [item["id"] for item in data] == [str(cancelled.pk), str(second.pk), str(first.pk)]
    assert json.loads(run("list", "--json", "--status", "completed")) == []
    assert run("list", "--status", "completed").strip() == "No jobs."


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--host", "nope"], "host: no executor host named 'nope'"),
        (["--status", "done"], "--status"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_list_rejects_bad_filters(db, args, expected):
    with pytest.raises(CommandError) as caught:
        run("list", *args)
    assert expected in str(caught.value)


# -- show --------------------------------------------------------------------------------


@pytest.mark.parametrize("executor_type", ["docker", "mock"])
def test_show_prints_the_execution_id_the_same_way_for_every_executor_type(db, executor_type):
    host = ExecutorHost.objects.create(name=f"{executor_type}-host", executor_type=executor_type)
    job = api.create_job("alpine", ["true"], host=host)
    job.set_execution_identifier(f"{executor_type}-execution-42")
    job.save()

    assert f"Execution ID: {executor_type}-execution-42" in run("show", str(job.pk)).splitlines()
    assert json.loads(run("show", str(job.pk), "--json"))["execution_id"] == (
        f"{executor_type}-execution-42"
    )


def test_show_everything_but_environment_values(mock_host):
    template = EnvironmentVariableTemplate.objects.create(
        name="base", environment_variables="TOKEN=template-secret\n"
    )
    job = api.create_job(
        "alpine",
        ["sh", "-c", "echo hi; exit 3"],
        host=mock_host,
        name="nightly",
        env={"API_KEY": "override-secret"},
        env_template=template,
        memory_limit=256,
        cpu_limit=1.5,
        max_attempts=2,
    )
    JobAttempt.objects.create(
        job=job,
        number=1,
        host=mock_host,
        execution_id="mock-attempt-1",
        status=JobStatus.FAILED,
        exit_code=3,
        error="exited with 3\nsecond line",
    )
    make_failed(
        job,
        execution_id="mock-attempt-1",
        exit_code=3,
        last_error="exited with 3\nsecond line",
        peak_memory_bytes=64 * 2**20,
        cpu_seconds=1.25,
    )

    out = run("show", str(job.pk))
    lines = out.splitlines()
    for expected in [
        f"ID: {job.pk}",
        "Name: nightly",
        "Status: failed",
        "Host: mock",
        "Execution ID: mock-attempt-1",
        "Image: alpine",
        "Command: sh -c 'echo hi; exit 3'",
        "Environment: template base; variables API_KEY",
        "Limits: timeout 3600 s, memory 256 MB, cpus 1.5",
        "Exit code: 3",
        "Attempts: 1 of 2",
        "Last error: exited with 3",
        "    second line",
        "Peak memory: 64.0 MiB",
        "CPU time: 1.25 s",
        "Attempt history:",
    ]:
        assert expected in lines, expected
    for label in ["Created", "Queued", "Started", "Finished"]:
        assert any(line.startswith(f"{label}: 20") for line in lines), label
    assert any(re.fullmatch(r"Duration: \d+\.\d s", line) for line in lines)
    history = lines[lines.index("Attempt history:") + 2]
    assert history.split()[:5] == ["#1", "failed", "mock", "mock-attempt-1", "3"]
    assert "secret" not in out

    data = json.loads(run("show", str(job.pk), "--json"))
    assert data["execution_id"] == "mock-attempt-1"
    assert data["exit_code"] == 3
    assert data["attempts"] == 1
    assert data["peak_memory_bytes"] == 64 * 2**20
    assert data["environment_override_names"] == ["API_KEY"]
    assert data["attempt_history"][0]["execution_id"] == "mock-attempt-1"
    assert data["attempt_history"][0]["error"] == "exited with 3\nsecond line"
    assert "stdout" not in data
    assert "secret" not in json.dumps(data)


def test_show_a_queued_job(mock_host):
    job = api.create_job("alpine", [], host=mock_host)
    lines = run("show", str(job.pk)).splitlines()
    assert "Execution ID: -" in lines
    assert "Command: (the image's default)" in lines
    assert "Attempt history: none" in lines


# -- logs --------------------------------------------------------------------------------


@pytest.fixture
def finished_job(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    make_running(job)
    job.transition(
        JobStatus.COMPLETED,
        exit_code=0,
        finished_at=timezone.now(),
        stdout="out 1\nbad byte \\xff\n",
        stderr="err 1\n",
    )
    return job


def test_logs_prints_stored_stdout_then_stderr(finished_job):
    job_id = str(finished_job.pk)
    assert run("logs", job_id) == "out 1\nbad byte \\xff\nerr 1\n"
    assert run("logs", job_id, "--stdout") == "out 1\nbad byte \\xff\n"
    assert run("logs", job_id, "--stderr") == "err 1\n"
    # A finished job has nothing to stream: --follow prints what is stored.
    assert run("logs", job_id, "--follow") == "out 1\nbad byte \\xff\nerr 1\n"


def test_logs_separates_streams_without_a_final_newline(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    make_failed(job, stdout="no newline", stderr="also none")
    assert run("logs", str(job.pk)) == "no newline\nalso none"
    assert run("logs", str(job.pk), "--stdout") == "no newline"


def test_logs_of_a_job_without_output_prints_nothing(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    assert run("logs", str(job.pk)) == ""


def test_logs_rejects_conflicting_options(finished_job):
    with pytest.raises(CommandError):
        run("logs", str(finished_job.pk), "--stdout", "--stderr")
    with pytest.raises(CommandError, match="--follow streams stdout and stderr together"):
        run("logs", str(finished_job.pk), "--follow", "--stderr")


def launch_and_run(job):
    execution_id = launch(job, job.host.get_executor())
    make_running(job, execution_id=execution_id)
    return execution_id


@pytest.fixture
def no_ending_recorded(monkeypatch):
    """No worker records the followed job's end here: a follower does not wait for it."""
    monkeypatch.setattr(api, "ENDING_WAIT_SECONDS", 0)


def test_logs_follow_streams_a_running_job_from_its_executor(mock_host, no_ending_recorded):
    mock_host.executor_config = {"stdout": "línea 1\n", "stderr": "problem\n"}
    mock_host.save()
    job = api.create_job("alpine", ["true"], host=mock_host)
    launch_and_run(job)
    assert run("logs", str(job.pk), "--follow") == "línea 1\nproblem\n"


def test_logs_follow_decodes_characters_split_across_chunks(
    db, extra_executors, no_ending_recorded
):
    host = ExecutorHost.objects.create(name="chunky", executor_type="chunky")
    job = api.create_job("alpine", ["true"], host=host)
    make_running(job, execution_id="chunky-1")
    assert run("logs", str(job.pk), "--follow") == "café \\xff\n"


@pytest.mark.parametrize(
    ("stdout", "stderr", "followed"),
    [
        ("one\ntwo", "", "one\ntwo"),
        ("one\ntwo", "err", "one\ntwoerr"),
        ("one\n", "", "one\n"),
    ],
)
def test_logs_follow_gives_last_lines_the_stream_left_out_from_the_record(
    db, extra_executors, monkeypatch, stdout, stderr, followed
):
    host = ExecutorHost.objects.create(name="dropping", executor_type="line-dropping")
    job = api.create_job("alpine", ["true"], host=host)
    make_running(job, execution_id="dropping-1")

    def worker_records_the_end(seconds):
        ContainerJob.objects.get(pk=job.pk).transition(
            JobStatus.COMPLETED, finished_at=timezone.now(), stdout=stdout, stderr=stderr
        )

    monkeypatch.setattr(time, "sleep", worker_records_the_end)
    monkeypatch.setattr(notify.Listener, "available", staticmethod(lambda alias="default": False))
    assert run("logs", str(job.pk), "--follow") == followed


def test_logs_follow_waits_for_a_queued_job_to_start(mock_host, monkeypatch):
    job = api.create_job("alpine", ["echo", "started"], host=mock_host)
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:  # a worker picks it up meanwhile
            launch_and_run(ContainerJob.objects.get(pk=job.pk))
        if len(sleeps) == 3:  # and, once its output has been followed, records its end
            ContainerJob.objects.get(pk=job.pk).transition(
                JobStatus.COMPLETED, finished_at=timezone.now(), stdout="mock: echo started\n"
            )

    monkeypatch.setattr(time, "sleep", fake_sleep)
    monkeypatch.setattr(notify.Listener, "available", staticmethod(lambda alias="default": False))
    err = io.StringIO()
    out = run("logs", str(job.pk), "--follow", stderr=err)
    assert out == "mock: echo started\n"
    assert f"Waiting for job {job.pk} to start (it is queued)" in err.getvalue()
    assert len(sleeps) == 3


def test_logs_follow_falls_back_to_stored_output_when_nothing_streams(mock_host, monkeypatch):
    job = api.create_job("alpine", ["true"], host=mock_host)
    # Started by a worker in another process: this process's mock executor cannot see it.
    make_running(job, execution_id="mock-elsewhere")

    def fake_sleep(seconds):
        row = ContainerJob.objects.get(pk=job.pk)
        row.transition(JobStatus.COMPLETED, finished_at=timezone.now(), stdout="stored\n")

    monkeypatch.setattr(time, "sleep", fake_sleep)
    # The job ends in the waiting's sleep: no notification (nothing is committed here).
    monkeypatch.setattr(notify.Listener, "available", staticmethod(lambda alias="default": False))
    assert run("logs", str(job.pk), "--follow") == "stored\n"


# -- cancel and retry --------------------------------------------------------------------


def test_cancel_a_queued_job(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    assert run("cancel", str(job.pk)).strip() == f"Cancelled job {job.pk}."
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at is not None


def test_cancel_json(mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host, hold=True)
    data = json.loads(run("cancel", str(job.pk), "--json"))
    assert (data["id"], data["status"]) == (str(job.pk), "cancelled")


def test_cancel_a_running_job_requests_it(mock_host):
    job = make_running(api.create_job("alpine", ["true"], host=mock_host))
    out = run("cancel", str(job.pk))
    assert "Cancel requested" in out
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert job.cancel_requested_at is not None


def test_cancel_a_finished_job_is_an_error(finished_job):
    with pytest.raises(CommandError, match="status: job is already completed"):
        run("cancel", str(finished_job.pk))


def test_retry_a_failed_job(mock_host):
    job = make_failed(api.create_job("alpine", ["true"], host=mock_host))
    out = run("retry", str(job.pk))
    assert out.startswith(f"Queued job {job.pk} again")
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


def test_retry_json(mock_host):
    job = make_failed(api.create_job("alpine", ["true"], host=mock_host))
    data = json.loads(run("retry", str(job.pk), "--json"))
    assert (data["id"], data["status"]) == (str(job.pk), "queued")


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.COMPLETED])
def test_retry_refuses_a_job_that_did_not_fail(mock_host, finished_job, status):
    job = (
        finished_job if status == JobStatus.COMPLETED else api.create_job("alpine", host=mock_host)
    )
    with pytest.raises(CommandError, match=f"status: only failed.*this one is {status}"):
        run("retry", str(job.pk))
    job.refresh_from_db()
    assert job.status == status


# -- hosts -------------------------------------------------------------------------------


def test_hosts_lists_hosts_with_their_load(mock_host):
    make_running(api.create_job("alpine", ["true"], host=mock_host))
    api.create_job("alpine", ["true"], host=mock_host)
    lines = run("hosts").splitlines()
    assert lines[0].split() == [
        "NAME",
        "TYPE",
        "CONNECTION",
        "ACTIVE",
        "HEALTH",
        "RUNNING",
        "WEIGHT",
        "CHECKED",
    ]
    assert lines[1].split() == ["mock", "mock", "(default)", "yes", "unknown", "1/10", "100", "-"]

    data = json.loads(run("hosts", "--json"))
    assert data[0]["name"] == "mock"
    assert data[0]["running_jobs"] == 1
    assert data[0]["max_concurrent_jobs"] == 10


def test_hosts_check(mock_host):
    out = run("hosts", "--check")
    assert "mock: healthy: mock executor is always available" in out.splitlines()
    mock_host.refresh_from_db()
    assert mock_host.health_status == ExecutorHost.Health.HEALTHY
    assert mock_host.last_health_check is not None
    assert json.loads(run("hosts", "--check", "--json"))[0]["health_status"] == "healthy"


def test_hosts_check_fails_when_a_host_is_unhealthy(mock_host, extra_executors):
    broken = ExecutorHost.objects.create(name="broken", executor_type="broken")
    out = io.StringIO()
    with pytest.raises(CommandError, match="unhealthy host\\(s\\): broken"):
        call_command("manage_container_job", "hosts", "--check", stdout=out)
    assert "broken: unhealthy: daemon unreachable at tcp://nowhere:2376" in out.getvalue()
    assert "mock: healthy" in out.getvalue()
    broken.refresh_from_db()
    assert broken.health_status == ExecutorHost.Health.UNHEALTHY


def test_hosts_with_none_configured(db):
    assert run("hosts").strip() == "No executor hosts."
    assert json.loads(run("hosts", "--json")) == []


# -- the real command line ---------------------------------------------------------------


@pytest.mark.processes
def test_the_shell_command_line_passes_the_argv_after_double_dash(tmp_path):
    """What a shell user types: quoting and ``--`` go through the real argv handling."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}"}
    manage = f"{shlex.quote(sys.executable)} manage.py"

    def sh(command_line):
        return subprocess.run(
            command_line,
            shell=True,
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    setup = sh(
        f"{manage} migrate -v0 && {manage} shell -v0 -c "
        '"from container_manager.models import ExecutorHost as H; '
        "H.objects.create(name='m', executor_type='mock')\""
    )
    assert setup.returncode == 0, setup.stderr

    created = sh(
        f"{manage} manage_container_job create --host m --image alpine --json "
        "-- sh -c 'echo hi; exit 3' -x --host"
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["command"] == ["sh", "-c", "echo hi; exit 3", "-x", "--host"]

    shown = sh(f"{manage} manage_container_job show {job['id']}")
    assert "Command: sh -c 'echo hi; exit 3' -x --host" in shown.stdout.splitlines()

    refused = sh(f"{manage} manage_container_job create --host nope --image alpine -- true")
    assert refused.returncode != 0
    assert "host: no executor host named 'nope'" in refused.stderr
    assert refused.stdout == ""


def test_create_with_confinement_options(mock_host, settings, tmp_path):
    settings.CONTAINER_MANAGER = {
        "ALLOWED_CAPABILITIES": ["NET_ADMIN"],
        "ALLOWED_MOUNT_SOURCES": [str(tmp_path)],
    }
    out = io.StringIO()
    call_command(
        "manage_container_job", "create", "--host", mock_host.name, "--image", "img",
        "--run-as", "1000:1000", "--read-only-root", "--cap-add", "NET_ADMIN",
        "--mount", f"{tmp_path}:/data", "--mount", f"{tmp_path}:/out:rw", "--json", "--", "true",
        stdout=out,
    )  # fmt: skip
    job = ContainerJob.objects.get(pk=json.loads(out.getvalue())["id"])
    assert (job.run_as_user, job.read_only_root, job.capabilities) == (
        "1000:1000",
        True,
        ["NET_ADMIN"],
    )
    assert job.mounts == [
        {"source": str(tmp_path), "target": "/data", "read_only": True},
        {"source": str(tmp_path), "target": "/out", "read_only": False},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--privileged"], "privileged"),
        (["--host-network"], "host_network"),
        (["--cap-add", "SYS_ADMIN"], "capabilities"),
        (["--mount", "/etc:/etc"], "mounts"),
        (["--mount", "nonsense"], "mounts: expected SOURCE:TARGET"),
    ],
)
def test_create_refuses_what_the_policy_forbids(mock_host, args, message):
    with pytest.raises(CommandError, match=message):
        call_command(
            "manage_container_job", "create", "--host", mock_host.name, "--image", "img",
            *args, "--", "true", stdout=io.StringIO(),
        )  # fmt: skip
    assert ContainerJob.objects.count() == 0


def test_hosts_shows_where_a_fallback_chain_routes(mock_host):
    ExecutorHost.objects.create(
        name="chain", executor_type="fallback", executor_config={"members": ["mock"]}
    )
    lines = run("hosts").splitlines()
    assert lines[1].split()[:6] == ["chain", "fallback", "mock", "yes", "unknown", "-"]
    assert json.loads(run("hosts", "--json"))[0]["members"] == ["mock"]

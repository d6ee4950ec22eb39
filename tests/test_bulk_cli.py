"""manage_container_job bulk: files in, progress and summaries out, refusals, permissions."""

import functools
import io
import json
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from container_manager import api
from container_manager import bulk_operations as bulk
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.states import JobStatus

SPEC = {"image": "alpine:3.20", "host": "mock", "env": {"MODE": "fast"}}
ROWS = [
    {"argv": ["resize", "a.png"], "env": {"SIZE": "16"}, "name": "a"},
    {"argv": ["resize", "b.png"], "env": {"SIZE": "32"}, "name": "b"},
    {"argv": ["resize", "c d.png"], "env": {"SIZE": "64"}, "name": "c"},
]
PARAMS = {
    "json": json.dumps(ROWS),
    "jsonl": "\n".join(json.dumps(row) for row in ROWS) + "\n",
    "csv": "argv,name,SIZE\nresize a.png,a,16\nresize b.png,b,32\nresize 'c d.png',c,64\n",
}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(*args, stdout=None):
    out = stdout or io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def files(tmp_path):
    """Writes a file in the test's directory; returns its path."""

    def write(name, content):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    return write


@pytest.fixture
def spec_file(files):
    return files("spec.json", SPEC)


def make_user(username, *codenames):
    user = User.objects.create_user(username, password="pw")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="container_manager", codename__in=codenames
        )
    )
    return user


def make_running(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    return job


def held(host):
    return api.create_job("alpine", ["true"], host=host, hold=True)


# -- create --------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["json", "jsonl", "csv"])
def test_create_from_each_format(mock_host, files, spec_file, format):
    params = files(f"rows.{format}", PARAMS[format])
    out = run("bulk", "create", "--spec", spec_file, "--params", params)
    assert out == "created 3 of 3 jobs\nCreated 3 jobs (queued).\n"
    jobs = {job.name: job for job in ContainerJob.objects.all()}
    assert jobs["c"].command == ["resize", "c d.png"]
    assert jobs["c"].environment_overrides == {"MODE": "fast", "SIZE": "64"}
    assert {job.status for job in jobs.values()} == {JobStatus.QUEUED}


def test_format_option_wins_over_the_file_name_and_stdin_is_read(mock_host, spec_file, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PARAMS["jsonl"]))
    run("bulk", "create", "--spec", spec_file, "--params", "-", "--format", "jsonl", "--hold")
    assert set(ContainerJob.objects.values_list("status", flat=True)) == {JobStatus.PENDING}


def test_plain_output_has_a_line_per_batch(mock_host, files, spec_file, monkeypatch):
    monkeypatch.setattr(bulk, "create_jobs", functools.partial(bulk.create_jobs, batch_size=2))
    out = run("bulk", "create", "--spec", spec_file, "--params", files("p.csv", PARAMS["csv"]))
    assert out.splitlines() == [
        "created 2 of 3 jobs",
        "created 3 of 3 jobs",
        "Created 3 jobs (queued).",
    ]


def test_a_terminal_gets_a_progress_bar_redrawn_in_place(mock_host, files, spec_file, monkeypatch):
    monkeypatch.setattr(bulk, "create_jobs", functools.partial(bulk.create_jobs, batch_size=2))
    out = run(
        "bulk", "create", "--spec", spec_file, "--params", files("p.csv", PARAMS["csv"]),
        stdout=Terminal(),
    )  # fmt: skip
    bar, summary = out.split("\n")[:2]
    assert bar == "\r[" + "#" * 20 + "-" * 10 + "] 2/3 jobs\r[" + "#" * 30 + "] 3/3 jobs"
    assert summary == "Created 3 jobs (queued)."


def test_json_output_is_the_result_alone(mock_host, files, spec_file):
    out = run("bulk", "create", "--spec", spec_file, "--params", files("p.json", ROWS), "--json")
    data = json.loads(out)
    assert sorted(data["succeeded"]) == sorted(
        str(pk) for pk in ContainerJob.objects.values_list("pk", flat=True)
    )
    assert (data["failed"], data["counts"]) == ([], {"succeeded": 3, "failed": 0})


def test_bad_rows_are_named_by_line_and_nothing_is_created(mock_host, files, spec_file):
    params = files(
        "p.jsonl",
        '{"argv": ["ok"]}\n\n{"argv": "not a list"}\n{"env": {"1BAD": "x"}}\n{"name": "fine"}\n',
    )
    with pytest.raises(CommandError) as caught:
        run("bulk", "create", "--spec", spec_file, "--params", params)
    assert (
        str(caught.value)
        == f"{params}: nothing was created:\nline 3: argv: must be a list of strings"
    )
    # Well formed but invalid: found when the jobs are built, still by line.
    params = files("q.jsonl", '{"argv": ["ok"]}\n{"env": {"1BAD": "x"}}\n')
    with pytest.raises(CommandError) as caught:
        run("bulk", "create", "--spec", spec_file, "--params", params)
    assert str(caught.value).startswith(
        "nothing was created:\nline 2: environment_overrides: invalid variable name '1BAD'"
    )
    assert not ContainerJob.objects.exists()


def test_a_bad_spec_creates_nothing(mock_host, files):
    params = files("p.csv", PARAMS["csv"])
    spec = files("spec.json", {"image": "alpine", "hostname": "mock"})
    with pytest.raises(CommandError, match=r"unknown keys 'hostname'"):
        run("bulk", "create", "--spec", spec, "--params", params)
    spec = files("spec.json", {"image": "alpine", "host": "nowhere"})
    with pytest.raises(CommandError) as caught:
        run("bulk", "create", "--spec", spec, "--params", params)
    assert str(caught.value) == "nothing was created:\nspec: host: no executor host named 'nowhere'"
    assert not ContainerJob.objects.exists()


def test_unreadable_files_are_named(mock_host, files, spec_file, tmp_path):
    with pytest.raises(CommandError, match=r"cannot read .*missing.csv: No such file"):
        run("bulk", "create", "--spec", spec_file, "--params", str(tmp_path / "missing.csv"))
    with pytest.raises(CommandError, match=r"cannot tell the format of .*rows.txt"):
        run("bulk", "create", "--spec", spec_file, "--params", files("rows.txt", ""))


def test_help_documents_the_formats(capsys):
    with pytest.raises(SystemExit):
        call_command("manage_container_job", "bulk", "create", "--help")
    text = capsys.readouterr().out
    for words in (
        "json   an array of objects",
        "jsonl  one such object per line",
        "csv    a header",
    ):
        assert words in text


# -- the other actions ---------------------------------------------------------------------


def test_cancel_reports_each_refusal_and_fails(mock_host):
    queued = api.create_job("alpine", ["true"], host=mock_host)
    running = make_running(api.create_job("alpine", ["true"], host=mock_host))
    done = api.cancel_job(api.create_job("alpine", ["true"], host=mock_host))
    with pytest.raises(CommandError) as caught:
        run("bulk", "cancel", str(queued.pk), str(running.pk), str(done.pk), "nope")
    assert str(caught.value).splitlines() == [
        "Cancelled 2 of 4 jobs (1 running: their workers stop them); 2 refused:",
        f"job {done.pk}: status: job is already cancelled; nothing to cancel",
        "job nope: not a job id",
    ]
    assert ContainerJob.objects.get(pk=queued.pk).status == JobStatus.CANCELLED


def test_ids_from_a_file_or_stdin(mock_host, files, monkeypatch):
    jobs = [held(mock_host) for _ in range(3)]
    path = files("ids.txt", f"{jobs[0].pk}\n\n{jobs[1].pk}\n")
    assert run("bulk", "release", "--ids-from", path) == "Released 2 of 2 jobs.\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{jobs[2].pk}\n"))
    assert run("bulk", "release", "--ids-from", "-") == "Released 1 of 1 jobs.\n"
    with pytest.raises(CommandError, match="no job ids"):
        run("bulk", "release")


def test_reroute_and_its_json(mock_host):
    ExecutorHost.objects.create(name="other", executor_type="mock")
    job = held(mock_host)
    running = make_running(api.create_job("alpine", ["true"], host=mock_host))
    assert run("bulk", "reroute", "--host", "other", str(job.pk)) == (
        "Rerouted 1 of 1 jobs to other.\n"
    )
    assert ContainerJob.objects.get(pk=job.pk).requested_host.name == "other"
    out = io.StringIO()
    with pytest.raises(CommandError, match="Rerouted 0 of 1 jobs to other; 1 refused:"):
        run("bulk", "reroute", "--host", "other", "--json", str(running.pk), stdout=out)
    assert json.loads(out.getvalue()) == {
        "succeeded": [],
        "failed": [
            {"item": str(running.pk), "reason": "status: it is running on mock; cancel it first"}
        ],
        "counts": {"succeeded": 0, "failed": 1},
    }
    with pytest.raises(CommandError, match="host: no executor host named 'nowhere'"):
        run("bulk", "reroute", "--host", "nowhere", str(job.pk))


def test_retry_duplicate_and_delete(mock_host):
    job = api.cancel_job(api.create_job("alpine", ["true"], host=mock_host))
    assert run("bulk", "retry", str(job.pk)) == "Queued again 1 of 1 jobs.\n"
    assert run("bulk", "duplicate", str(job.pk)) == "Duplicated 1 of 1 jobs.\n"
    assert ContainerJob.objects.count() == 2
    make_running(ContainerJob.objects.get(pk=job.pk))
    ids = [str(pk) for pk in ContainerJob.objects.values_list("pk", flat=True)]
    with pytest.raises(CommandError, match="Deleted 1 of 2 jobs; 1 refused:"):
        run("bulk", "delete", *ids)
    assert list(ContainerJob.objects.values_list("pk", flat=True)) == [job.pk]


# -- who may -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, needs",
    [
        ("cancel", "cancel jobs (needs container_manager.cancel_containerjob)"),
        ("retry", "retry jobs (needs container_manager.retry_containerjob)"),
        ("release", "release jobs (needs container_manager.change_containerjob)"),
        ("delete", "delete jobs (needs container_manager.delete_containerjob)"),
        ("duplicate", "create jobs (needs container_manager.add_containerjob)"),
    ],
)
def test_each_action_needs_its_permission(mock_host, action, needs):
    make_user("bob", "view_containerjob")
    job = held(mock_host)
    with pytest.raises(CommandError, match=re.escape(f"user 'bob' may not {needs}")):
        run("--user", "bob", "bulk", action, str(job.pk))
    assert ContainerJob.objects.get(pk=job.pk).status == JobStatus.PENDING


def test_create_and_reroute_need_their_permissions(mock_host, files, spec_file):
    make_user("bob", "view_containerjob")
    params = files("p.csv", PARAMS["csv"])
    with pytest.raises(CommandError, match="may not create jobs"):
        run("bulk", "create", "--spec", spec_file, "--params", params, "--user", "bob")
    with pytest.raises(CommandError, match="may not reroute jobs"):
        run("bulk", "reroute", "--host", "mock", str(held(mock_host).pk), "--user", "bob")
    assert ContainerJob.objects.count() == 1


def test_a_permitted_user_creates_jobs_as_themselves(mock_host, files, spec_file):
    user = make_user("ann", "add_containerjob")
    run("--user", "ann", "bulk", "create", "--spec", spec_file, "--params", files("p.json", ROWS))
    assert {job.created_by for job in ContainerJob.objects.all()} == {user}

"""Job arrays: N indexed members of one spec, a parallelism limit enforced where jobs are
claimed, a summary, and cancel / retry of the whole array or its failed members."""

import io
import json
import re
import threading

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.urls import reverse

from container_manager import bulk_operations as bulk
from container_manager import signals
from container_manager.models import ContainerJob, ExecutorHost, JobArray, JobAttempt
from container_manager.models import Worker as WorkerRecord
from container_manager.queue import claim_jobs
from container_manager.serializers import job_to_dict
from container_manager.states import JobStatus
from container_manager.worker import Worker

from .conftest import TEST_IMAGE

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = {"image": "img", "command": ["work"], "host": "mock"}


def mock_host(name="mock", **config):
    return ExecutorHost.objects.create(
        name=name, executor_type="mock", max_concurrent_jobs=50, executor_config=config
    )


def most_at_once(array: JobArray) -> int:
    """The most members that were ever launching or running together, from their attempts'
    records: an attempt is written as it is claimed and closed as it ends, both inside the
    transactions that move the job, so the intervals cover what the claims counted."""
    events = []
    for started, finished in JobAttempt.objects.filter(job__array=array).values_list(
        "started_at", "finished_at"
    ):
        assert finished is not None, "an attempt never ended"
        events += [(started, 1), (finished, -1)]
    running = peak = 0
    for _, step in sorted(events):  # at one moment, an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


def run_workers(count: int, max_concurrent: int) -> None:
    """``count`` real worker loops, in threads of this process, until there is no work."""

    def work():
        try:
            Worker(poll_interval=0.05, until_idle=True, max_concurrent=max_concurrent).run()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a worker did not finish"


# -- creating ------------------------------------------------------------------------------


def test_an_array_of_n_gives_each_member_its_index_and_the_size():
    mock_host()
    queued = []
    signals.job_queued.connect(lambda job, **_: queued.append(job.array_index), weak=False)
    try:
        result = bulk.create_array(SPEC, size=3, parallelism=2, name="render")
    finally:
        signals.job_queued.receivers.clear()
    assert result.ok, result.failed
    array = result.array
    assert (array.name, array.size, array.parallelism) == ("render", 3, 2)
    members = list(array.members.order_by("array_index"))
    assert [job.name for job in members] == ["render[0]", "render[1]", "render[2]"]
    assert [job.get_environment() for job in members] == [
        {"JOB_ARRAY_INDEX": str(index), "JOB_ARRAY_SIZE": "3"} for index in range(3)
    ]
    assert {job.status for job in members} == {JobStatus.QUEUED}
    assert sorted(queued) == [0, 1, 2]  # each member announced, as bulk creation does
    data = job_to_dict(members[1])
    assert (data["array"], data["array_index"]) == (str(array.pk), 1)


def test_an_array_from_parameter_rows_has_a_member_per_row():
    mock_host()
    rows = bulk.read_params(
        '[{"env": {"FILE": "a"}}, {"env": {"FILE": "b"}, "name": "bee"}]', "json"
    )
    result = bulk.create_array({**SPEC, "name": "files", "env": {"MODE": "x"}}, rows=rows)
    assert result.ok, result.failed
    members = list(result.array.members.order_by("array_index"))
    assert [job.name for job in members] == ["files[0]", "bee"]
    assert members[1].get_environment() == {
        "MODE": "x",
        "FILE": "b",
        "JOB_ARRAY_INDEX": "1",
        "JOB_ARRAY_SIZE": "2",
    }
    assert result.array.parallelism is None


@pytest.mark.parametrize(
    "arguments, item, reason",
    [
        ({"size": 0}, "size", "must be a positive whole number, not 0"),
        ({}, "size", "give either a size or parameter rows"),
        ({"size": 2, "rows": []}, "size", "give either a size or parameter rows"),
        ({"rows": []}, "rows", "no rows"),
        ({"size": 10_001}, "size", "at most 10,000"),
        ({"size": 2, "parallelism": 0}, "parallelism", "must be a positive whole number"),
        ({"size": 2, "parallelism": "3"}, "parallelism", "must be a positive whole number"),
        (
            {"size": 2, "spec": {**SPEC, "env": {"JOB_ARRAY_INDEX": "7"}}},
            "spec",
            "env: JOB_ARRAY_INDEX is set by the array; leave it out",
        ),
        (
            {"size": 2, "spec": {**SPEC, "secrets": {"JOB_ARRAY_SIZE": "7"}}},
            "spec",
            "secrets: JOB_ARRAY_SIZE is set by the array",
        ),
        ({"size": 2, "spec": {**SPEC, "memory_limit": 1}}, "spec", "memory_limit:"),
        ({"size": 2, "spec": {**SPEC, "host": "nowhere"}}, "spec", "host: no executor host"),
    ],
)
def test_bad_input_creates_nothing_and_names_the_field(arguments, item, reason):
    mock_host()
    spec = arguments.pop("spec", SPEC)
    result = bulk.create_array(spec, **arguments)
    assert not result.ok and result.array is None
    assert result.failed[0].item == item
    assert reason in result.failed[0].reason
    assert not JobArray.objects.exists() and not ContainerJob.objects.exists()


def test_a_bad_row_is_named_by_its_line_and_nothing_is_created():
    mock_host()
    rows = bulk.read_params('{"argv": ["ok"]}\n{"env": {"JOB_ARRAY_SIZE": "1"}}\n', "jsonl")
    result = bulk.create_array(SPEC, rows=rows)
    assert [(f.item, f.reason) for f in result.failed] == [
        ("line 2", "env: JOB_ARRAY_SIZE is set by the array; leave it out")
    ]
    rows = bulk.read_params('{"argv": ["ok"]}\n{"name": "' + "x" * 300 + '"}\n', "jsonl")
    result = bulk.create_array(SPEC, rows=rows)
    assert [f.item for f in result.failed] == ["line 2"]
    assert result.failed[0].reason.startswith("name:")
    assert not JobArray.objects.exists() and not ContainerJob.objects.exists()


# -- parallelism ---------------------------------------------------------------------------


def test_two_hundred_members_never_run_more_than_ten_at_once():
    """Two worker loops with 16 slots between them, on a host that takes 50: only the
    array's parallelism holds them to 10."""
    mock_host(duration_seconds=0.1)
    array = bulk.create_array(SPEC, size=200, parallelism=10).array
    run_workers(2, max_concurrent=8)
    assert array.summary()["counts"][JobStatus.COMPLETED] == 200
    # More than one worker's 8 at once: the limit held across both, and was reached.
    assert 8 < most_at_once(array) <= 10


def test_members_of_a_full_array_do_not_crowd_out_other_jobs():
    """A claim looks at ``limit * 4`` candidates: an array at its limit is left out in SQL,
    and a claim counts the members it takes itself."""
    host = mock_host()
    array = bulk.create_array(SPEC, size=200, parallelism=1).array
    others = bulk.create_jobs(SPEC, [bulk.ParamRow(f"row {i}") for i in range(4)]).succeeded
    worker = WorkerRecord.objects.create(hostname="test", pid=1)
    first = claim_jobs(worker, 4)
    assert [job.array_id for job in first] == [array.pk]  # 16 members looked at, one taken
    second = claim_jobs(worker, 4)
    assert {job.pk for job in second} == {job.pk for job in others}
    assert ContainerJob.objects.filter(host=host, status="launching").count() == 5


def test_arrays_without_a_limit_and_other_arrays_are_not_held_back():
    mock_host()
    unlimited = bulk.create_array(SPEC, size=5).array
    limited = bulk.create_array(SPEC, size=5, parallelism=2).array
    claimed = claim_jobs(WorkerRecord.objects.create(hostname="test", pid=1), 20)
    taken = [job.array_id for job in claimed]
    assert (taken.count(unlimited.pk), taken.count(limited.pk)) == (5, 2)


@pytest.mark.processes
def test_several_worker_processes_keep_to_the_limit(worker_processes):
    mock_host(duration_seconds=0.2)
    array = bulk.create_array(SPEC, size=200, parallelism=10).array
    for _ in range(3):
        worker_processes.start("--until-idle", "--poll-interval", "0.05", "--max-concurrent", "8")
    for proc in worker_processes.procs:
        assert proc.wait(240) == 0, worker_processes.logs()
    assert array.summary()["counts"][JobStatus.COMPLETED] == 200, worker_processes.logs()[-5000:]
    assert 8 < most_at_once(array) <= 10  # more than one worker's 8, never more than 10
    assert JobAttempt.objects.values("worker").distinct().count() > 1


# -- on Docker -----------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("no_container_left")
def test_members_on_docker_read_their_index_and_the_size(docker_host):
    spec = {
        "image": TEST_IMAGE,
        "command": ["sh", "-c", "echo $JOB_ARRAY_INDEX $JOB_ARRAY_SIZE"],
        "host": docker_host.name,
        "timeout_seconds": 60,
    }
    array = bulk.create_array(spec, size=3, parallelism=2).array
    Worker(poll_interval=0.05, until_idle=True).run()
    members = array.members.order_by("array_index")
    assert [(job.status, job.stdout) for job in members] == [
        ("completed", f"{index} 3\n") for index in range(3)
    ]
    assert array.summary()["outcome"] == "completed"


# -- summary, cancel and retry -------------------------------------------------------------


def test_the_summary_counts_members_by_status_until_all_have_ended():
    mock_host()
    array = bulk.create_array({**SPEC, "hold": True}, size=4).array
    summary = array.summary()
    assert summary["counts"][JobStatus.PENDING] == 4
    assert (summary["done"], summary["outcome"]) == (False, "in progress")
    bulk.release_jobs(array.members.filter(array_index__lt=2))
    bulk.cancel_jobs(array.members.filter(array_index=3))
    summary = array.summary()
    assert {status: n for status, n in summary["counts"].items() if n} == {
        "queued": 2,
        "pending": 1,
        "cancelled": 1,
    }
    [annotated] = JobArray.objects.with_counts()
    assert annotated.summary() == summary


def test_cancel_a_whole_array_then_retry_only_its_failed_members():
    mock_host("failing", exit_code=3)
    array = bulk.create_array({**SPEC, "host": "failing"}, size=4).array
    bulk.cancel_jobs(array.members.filter(array_index__gte=2))
    Worker(poll_interval=0.05, until_idle=True).run()
    assert array.summary()["counts"] | {} == {
        **dict.fromkeys(JobStatus.values, 0),
        "failed": 2,
        "cancelled": 2,
    }
    assert array.summary()["outcome"] == "failed" and array.summary()["done"]

    retried = bulk.retry_array(array, failed_only=True)
    assert sorted(job.array_index for job in retried.succeeded) == [0, 1]
    assert set(array.members.values_list("status", flat=True)) == {"queued", "cancelled"}

    cancelled = bulk.cancel_array(array)
    assert (len(cancelled.succeeded), cancelled.failed) == (2, [])
    assert array.summary()["outcome"] == "cancelled"

    everything = bulk.retry_array(array)
    assert len(everything.succeeded) == 4
    assert array.summary()["counts"]["queued"] == 4


def test_deleting_an_array_deletes_its_members():
    mock_host()
    array = bulk.create_array(SPEC, size=3).array
    array.delete()
    assert not ContainerJob.objects.exists()


# -- the command line ----------------------------------------------------------------------


def run(*args):
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def make_user(username, *codenames):
    user = User.objects.create_user(username, password="pw")
    permissions = Permission.objects.filter(
        content_type__app_label="container_manager", codename__in=codenames
    )
    user.user_permissions.add(*permissions)
    return user


def test_cli_creates_shows_lists_cancels_and_retries_an_array():
    mock_host()
    created = json.loads(
        run(
            "create", "--image", "img", "--host", "mock", "--name", "batch", "--array", "3",
            "--parallelism", "2", "--hold", "--json", "--", "echo", "hi",
        )
    )  # fmt: skip
    array = JobArray.objects.get(pk=created["array"])
    assert (array.name, array.size, array.parallelism) == ("batch", 3, 2)
    assert len(created["succeeded"]) == 3

    shown = json.loads(run("array", "show", str(array.pk), "--json"))
    assert (shown["size"], shown["counts"]["pending"], shown["done"]) == (3, 3, False)
    text = run("array", "show", str(array.pk))
    assert "Members: pending 3" in text and "Parallelism: 2" in text
    assert str(array.pk) in run("array", "list")
    members = run("list", "--array", str(array.pk))
    assert [line.split()[1] for line in members.splitlines()[1:]] == [
        "batch[0]",
        "batch[1]",
        "batch[2]",
    ]
    member = array.members.get(array_index=2)
    assert f"Array: {array.pk} (index 2)" in run("show", str(member.pk))

    assert run("array", "cancel", str(array.pk)) == "Cancelled 3 members of batch.\n"
    assert run("array", "retry", str(array.pk), "--failed-only") == (
        "Queued again 0 members of batch.\n"
    )
    assert run("array", "retry", str(array.pk)) == "Queued again 3 members of batch.\n"
    assert json.loads(run("array", "show", str(array.pk), "--json"))["counts"]["queued"] == 3


def test_cli_bulk_create_makes_an_array_of_the_rows(tmp_path):
    mock_host()
    spec, params = tmp_path / "spec.json", tmp_path / "rows.csv"
    spec.write_text(json.dumps({"image": "img", "host": "mock", "name": "resize"}))
    params.write_text("argv,SIZE\nresize a,16\nresize b,32\n")
    out = run(
        "bulk", "create", "--spec", str(spec), "--params", str(params), "--array",
        "--parallelism", "1",
    )  # fmt: skip
    array = JobArray.objects.get()
    assert out.endswith(f"Created job array {array.pk} of 2 jobs (queued, at most 1 at once).\n")
    second = array.members.get(array_index=1)
    assert second.command == ["resize", "b"]
    assert second.get_environment() == {"SIZE": "32", "JOB_ARRAY_INDEX": "1", "JOB_ARRAY_SIZE": "2"}


def test_cli_refusals_name_the_problem():
    mock_host()
    with pytest.raises(CommandError, match="give --array N too"):
        run("create", "--image", "img", "--host", "mock", "--parallelism", "2")
    with pytest.raises(CommandError, match="spec: env: JOB_ARRAY_INDEX is set by the array"):
        run("create", "--image", "img", "--array", "2", "--env", "JOB_ARRAY_INDEX=1")
    with pytest.raises(CommandError, match="no job array with id 'nonsense'"):
        run("array", "show", "nonsense")
    with pytest.raises(CommandError, match="invalid positive integer value: '0'"):
        run("create", "--image", "img", "--array", "0")
    assert not ContainerJob.objects.exists()


@pytest.mark.parametrize(
    "action, needs",
    [
        ("cancel", "cancel jobs (needs container_manager.cancel_containerjob)"),
        ("retry", "retry jobs (needs container_manager.retry_containerjob)"),
    ],
)
def test_cli_array_actions_need_the_job_permissions(action, needs):
    mock_host()
    array = bulk.create_array({**SPEC, "hold": True}, size=2).array
    make_user("bob", "view_containerjob")
    with pytest.raises(CommandError, match=re.escape(f"user 'bob' may not {needs}")):
        run("--user", "bob", "array", action, str(array.pk))
    assert set(array.members.values_list("status", flat=True)) == {"pending"}
    run("--user", "bob", "array", "show", str(array.pk))  # bob may view jobs


# -- the admin -----------------------------------------------------------------------------


def admin_url(model, view, *args):
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def test_admin_lists_arrays_with_progress_and_links_to_members(admin_client):
    mock_host()
    array = bulk.create_array({**SPEC, "name": "nightly"}, size=3, parallelism=2).array
    bulk.create_array({**SPEC, "name": "other"}, size=2)
    bulk.cancel_jobs(array.members.filter(array_index=0))
    page = admin_client.get(admin_url("jobarray", "changelist"))
    assert page.status_code == 200
    assert "nightly" in page.text and "1 / 3" in page.text and "in progress" in page.text
    members_url = admin_url("containerjob", "changelist") + f"?array__exact={array.pk}"
    assert members_url.replace("&", "&amp;") in page.text
    members = admin_client.get(members_url)
    assert members.status_code == 200
    shown = {job.pk for job in members.context_data["cl"].result_list}
    assert shown == set(array.members.values_list("pk", flat=True))
    assert admin_client.get(admin_url("jobarray", "change", array.pk)).status_code == 200
    member = array.members.get(array_index=0)  # cancelled: the operator's page
    job_page = admin_client.get(admin_url("containerjob", "change", member.pk))
    assert admin_url("jobarray", "change", array.pk) in job_page.text
    assert "index 0 of 3" in job_page.text
    held = bulk.create_array({**SPEC, "hold": True}, size=1).array.members.get()
    held_page = admin_client.get(admin_url("containerjob", "change", held.pk))  # the form
    assert "index 0 of 1" in held_page.text


def test_admin_actions_cancel_arrays_and_retry_failed_members(admin_client):
    mock_host()
    array = bulk.create_array(SPEC, size=3).array
    bulk.cancel_jobs(array.members.filter(array_index=0))
    response = admin_client.post(
        admin_url("jobarray", "changelist"),
        {"action": "cancel_arrays", "_selected_action": [str(array.pk)]},
    )
    assert response.status_code == 302
    assert array.summary()["counts"]["cancelled"] == 3
    response = admin_client.post(
        admin_url("jobarray", "changelist"),
        {"action": "retry_failed_members", "_selected_action": [str(array.pk)]},
    )
    assert array.summary()["counts"]["cancelled"] == 3  # cancelled is not failed
    response = admin_client.post(
        admin_url("jobarray", "changelist"),
        {"action": "retry_unsuccessful_members", "_selected_action": [str(array.pk)]},
    )
    assert array.summary()["counts"]["queued"] == 3


def test_admin_array_actions_need_the_job_permissions(client):
    mock_host()
    array = bulk.create_array(SPEC, size=2).array
    user = make_user("viewer", "view_jobarray", "view_containerjob")
    user.is_staff = True
    user.save()
    client.force_login(user)
    page = client.get(admin_url("jobarray", "changelist"))
    assert page.status_code == 200
    assert "cancel_arrays" not in page.text and "retry_failed_members" not in page.text
    client.post(
        admin_url("jobarray", "changelist"),
        {"action": "cancel_arrays", "_selected_action": [str(array.pk)]},
    )
    assert array.summary()["counts"]["queued"] == 2

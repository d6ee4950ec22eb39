"""Many jobs at once (container_manager.bulk_operations): reading parameters, creating from a
spec, and each operation on a mix of jobs it may and may not do."""

import uuid
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from container_manager import api
from container_manager import bulk_operations as bulk
from container_manager.bulk_operations import Failure, ParamRow
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt
from container_manager.serializers import validation_error_lines
from container_manager.states import JobStatus

SPEC = {"image": "alpine:3.20", "host": "mock", "env": {"MODE": "fast"}, "memory_limit": 64}
JOB_TABLE = ContainerJob._meta.db_table


def job(host, **fields):
    return api.create_job("alpine", ["echo", "hi"], host=host, **fields)


def make_running(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=job.attempts + 1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    return job


def make_finished(job, status=JobStatus.FAILED):
    make_running(job)
    assert job.transition(status, finished_at=timezone.now(), exit_code=1)
    return job


def status_of(job):
    return ContainerJob.objects.values_list("status", flat=True).get(pk=job.pk)


def rows(count):
    return [ParamRow(f"line {n + 2}", argv=["echo", str(n)], name=f"job-{n}") for n in range(count)]


def inserts(queries) -> int:
    return sum(q["sql"].startswith(f'INSERT INTO "{JOB_TABLE}"') for q in queries)


def failures(result):
    return [(f.item, f.reason) for f in result.failed]


# -- reading parameters --------------------------------------------------------------------


def test_json_array_items_are_numbered_from_one():
    text = '[{"argv": ["echo", "a"], "env": {"N": "1"}, "name": "a"}, {}, {"name": "c"}]'
    assert bulk.read_params(text, "json") == [
        ParamRow("item 1", ["echo", "a"], {"N": "1"}, "a"),
        ParamRow("item 2", None, {}, None),
        ParamRow("item 3", None, {}, "c"),
    ]


def test_json_lines_are_numbered_by_line_and_blank_lines_skipped():
    text = '{"argv": ["a"]}\n\n   \n{"env": {"X": "y\u2028z"}}\n'
    assert bulk.read_params(text, "jsonl") == [
        ParamRow("line 1", ["a"]),
        ParamRow("line 4", None, {"X": "y\u2028z"}),  # U+2028 is inside a string, not a break
    ]


def test_csv_splits_argv_like_a_shell_and_every_other_column_is_a_variable():
    text = (
        "argv,name,INPUT,MODE\n"
        "\"sh -c 'echo $INPUT'\",first,a.png,fast\n"
        "\n"
        ',,"two\nlines",\n'  # empty argv and name: the spec's; a quoted value over two lines
        "resize --to 64,third,c.png,slow\n"
    )
    assert bulk.read_params(text, "csv") == [
        ParamRow(
            "line 2", ["sh", "-c", "echo $INPUT"], {"INPUT": "a.png", "MODE": "fast"}, "first"
        ),
        ParamRow("line 4", None, {"INPUT": "two\nlines", "MODE": ""}, None),
        ParamRow("line 6", ["resize", "--to", "64"], {"INPUT": "c.png", "MODE": "slow"}, "third"),
    ]


@pytest.mark.parametrize(
    "format, text, problems",
    [
        (
            "jsonl",
            '{"argv": ["ok"]}\n{"argv": "echo hi"}\n\n{"env": {"N": 1}, "nme": "x"}\n[1]\n{oops\n',
            [
                "line 2: argv: must be a list of strings",
                "line 4: unknown keys 'nme' (expected argv, env, name)",
                "line 4: env: must be an object of strings",
                "line 5: must be an object with argv, env and/or name, not [1]",
                "line 6: not JSON: Expecting property name enclosed in double quotes: "
                "line 1 column 2 (char 1)",
            ],
        ),
        (
            "json",
            '[{"argv": ["ok"]}, {"name": 5}, "x"]',
            [
                "item 2: name: must be a string",
                "item 3: must be an object with argv, env and/or name, not 'x'",
            ],
        ),
        (
            "csv",
            'argv,N\n"echo \'unclosed",1\necho,1,2\nok,1\n',
            [
                "line 2: argv: not a shell command line: No closing quotation",
                "line 3: has 3 fields; the header has 2",
            ],
        ),
    ],
)
def test_every_bad_row_is_named_and_no_row_is_returned(format, text, problems):
    with pytest.raises(ValidationError) as caught:
        bulk.read_params(text, format)
    assert caught.value.messages == problems


@pytest.mark.parametrize(
    "format, text, problem",
    [
        ("json", '{"argv": []}', "must be a JSON array of objects"),
        ("json", "[", "not JSON: Expecting value: line 1 column 2 (char 1)"),
        ("csv", "", "no header row"),
        ("csv", "argv,1BAD,argv\n", "line 1 (the header): columns named twice: argv"),
        ("csv", "argv,1BAD\n", "line 1 (the header): column '1BAD': invalid variable name"),
        ("yaml", "", "unknown format 'yaml'"),
    ],
)
def test_unreadable_input_says_why(format, text, problem):
    with pytest.raises(ValidationError) as caught:
        bulk.read_params(text, format)
    assert caught.value.messages[0].startswith(problem)


@pytest.mark.parametrize(
    "name, format",
    [("a.json", "json"), ("a.JSONL", "jsonl"), ("dir.x/a.ndjson", "jsonl"), ("a.csv", "csv")],
)
def test_format_from_the_file_name(name, format):
    assert bulk.guess_format(name) == format


def test_a_file_name_that_tells_no_format_is_refused():
    with pytest.raises(ValidationError, match="cannot tell the format of 'rows.txt'"):
        bulk.guess_format("rows.txt")


def test_spec_names_unknown_keys_and_a_missing_image():
    with pytest.raises(ValidationError) as caught:
        bulk.read_spec('{"imge": "alpine", "status": "completed", "env": ["A=1"]}')
    first, *rest = caught.value.messages
    assert first.startswith("unknown keys 'imge', 'status' (known: capabilities, command,")
    assert rest == ["image: is required (e.g. alpine:3.20)", "env: must be an object of strings"]


def test_spec_takes_create_jobs_arguments():
    text = '{"image": "a", "host": "h", "env_template": "t", "secrets": {}, "hold": true, '
    text += '"scheduled_for": "2030-01-01T00:00:00Z", "retry_on": [], "mounts": []}'
    assert bulk.read_spec(text)["host"] == "h"


# -- creating ------------------------------------------------------------------------------


def test_create_makes_a_job_per_row_from_the_spec(mock_host, django_user_model):
    user = django_user_model.objects.create(username="ann")
    result = bulk.create_jobs(
        SPEC,
        [
            ParamRow("line 2", ["resize", "a.png"], {"SIZE": "64"}, "a"),
            ParamRow("line 3", None, {"MODE": "slow"}, None),
        ],
        created_by=user,
    )
    assert result.ok and not result.failed and bool(result)
    first, second = (ContainerJob.objects.get(pk=j.pk) for j in result.succeeded)
    assert (first.command, first.name) == (["resize", "a.png"], "a")
    assert first.environment_overrides == {"MODE": "fast", "SIZE": "64"}
    assert (second.command, second.name) == ([], "")
    assert second.environment_overrides == {"MODE": "slow"}  # a row's env wins over the spec's
    for created in (first, second):
        assert (created.status, created.host, created.requested_host) == (
            "queued",
            *[mock_host] * 2,
        )
        assert (created.memory_limit, created.created_by) == (64, user)
        assert created.queued_at is not None


def test_created_jobs_behave_as_saved_ones(mock_host):
    """bulk_create skips save(): the status it remembers must be set, or transitions fail."""
    created = bulk.create_jobs(SPEC, rows(1)).succeeded[0]
    assert api.cancel_job(created).status == JobStatus.CANCELLED
    assert status_of(created) == JobStatus.CANCELLED


def test_create_with_hold_makes_pending_jobs(mock_host):
    result = bulk.create_jobs({**SPEC, "hold": True}, rows(2))
    assert {status_of(j) for j in result.succeeded} == {JobStatus.PENDING}
    assert all(j.queued_at is None for j in result.succeeded)


def test_secrets_are_sealed_as_create_job_seals_them(mock_host):
    spec = {**SPEC, "env": {"API_TOKEN": "by-name"}, "secrets": {"PLAIN": "given-as-secret"}}
    created = bulk.create_jobs(spec, [ParamRow("item 1", env={"DB_PASSWORD": "row-secret"})])
    one = api.create_job("alpine:3.20", host="mock", env=spec["env"], secrets=spec["secrets"])
    stored = ContainerJob.objects.get(pk=created.succeeded[0].pk)
    for name in ("API_TOKEN", "PLAIN", "DB_PASSWORD"):
        assert stored.environment_overrides[name].startswith("cmsecret:v1:")
    assert stored.get_environment() == {
        "API_TOKEN": "by-name",
        "PLAIN": "given-as-secret",
        "DB_PASSWORD": "row-secret",
    }
    assert one.environment_overrides.keys() <= stored.environment_overrides.keys()


def test_a_row_is_refused_with_create_jobs_own_words(mock_host):
    bad_env = {"1BAD": "x"}
    with pytest.raises(ValidationError) as caught:
        api.create_job(**{**SPEC, "env": {**SPEC["env"], **bad_env}})
    result = bulk.create_jobs(SPEC, [ParamRow("line 7", env=bad_env)])
    assert failures(result) == [("line 7", "; ".join(validation_error_lines(caught.value)))]


def test_nothing_is_created_when_any_row_is_invalid(mock_host):
    before = ContainerJob.objects.count()
    given = [
        *rows(3),
        ParamRow("line 9", argv=["echo", "nul\x00"]),
        ParamRow("line 12", env={"SECRET_A": "x"}, name="n" * 201),
    ]
    result = bulk.create_jobs(SPEC, given)
    assert not result and result.succeeded == []
    assert failures(result) == [
        ("line 9", "command: cannot contain NUL bytes (\\x00)"),
        ("line 12", "name: Ensure this value has at most 200 characters (it has 201)."),
    ]
    assert ContainerJob.objects.count() == before


@pytest.mark.parametrize(
    "spec, reason",
    [
        ({**SPEC, "host": "nowhere"}, "host: no executor host named 'nowhere'"),
        ({**SPEC, "memory_limit": 1}, "memory_limit: Ensure this value is greater than"),
        ({**SPEC, "host": None, "executor_type": "docker"}, "executor_type: no active host fits"),
        ({"image": "a", "status": "completed"}, "unknown keys 'status'"),
    ],
)
def test_an_invalid_spec_creates_nothing_and_is_named_once(mock_host, spec, reason):
    result = bulk.create_jobs(spec, rows(5))
    assert [f.item for f in result.failed] == ["spec"]
    assert result.failed[0].reason.startswith(reason)
    assert not ContainerJob.objects.exists()


def test_rows_are_inserted_in_batches_with_progress(mock_host):
    calls = []
    with CaptureQueriesContext(connection) as queries:
        result = bulk.create_jobs(
            SPEC, rows(10), batch_size=3, progress=lambda done, total: calls.append((done, total))
        )
    assert len(result.succeeded) == 10 == ContainerJob.objects.count()
    assert inserts(queries) == 4
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_rows_cost_no_query_of_their_own(mock_host, django_user_model):
    """The spec's host, template, creator and routing are checked once, not per row."""
    user = django_user_model.objects.create(username="ann")

    def queries_for(count):
        with CaptureQueriesContext(connection) as queries:
            assert bulk.create_jobs(SPEC, rows(count), created_by=user)
        # Past a number of rows SQLite's limit on query parameters splits an INSERT.
        return len(queries) - inserts(queries)

    with mock.patch("container_manager.api.check_routable", wraps=api.check_routable) as check:
        assert queries_for(2) == queries_for(40)
    assert check.call_count == 2  # once per call, whatever the number of rows


def test_to_dict_gives_ids_failures_and_counts(mock_host):
    created = bulk.create_jobs(SPEC, rows(2))
    assert created.to_dict() == {
        "succeeded": [str(j.pk) for j in created.succeeded],
        "failed": [],
        "counts": {"succeeded": 2, "failed": 0},
    }
    refused = bulk.create_jobs(SPEC, [ParamRow("item 1", argv=["x" * 10**6])])
    assert refused.to_dict()["counts"] == {"succeeded": 0, "failed": 1}
    assert refused.to_dict()["failed"][0]["item"] == "item 1"


# -- operating on jobs ---------------------------------------------------------------------


def test_cancel_a_mix_of_queued_running_and_completed(mock_host):
    queued = job(mock_host)
    running = make_running(job(mock_host))
    completed = make_finished(job(mock_host), JobStatus.COMPLETED)
    result = bulk.cancel_jobs([queued, running, completed])
    assert [j.pk for j in result.succeeded] == [queued.pk, running.pk]
    assert failures(result) == [
        (str(completed.pk), "status: job is already completed; nothing to cancel")
    ]
    assert status_of(queued) == JobStatus.CANCELLED
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING and running.cancel_requested_at is not None


def test_retry_a_mix(mock_host):
    failed = make_finished(job(mock_host))
    timed_out = make_finished(job(mock_host), JobStatus.TIMED_OUT)
    queued = job(mock_host)
    result = bulk.retry_jobs(ContainerJob.objects.all())
    assert {j.pk for j in result.succeeded} == {failed.pk, timed_out.pk}
    assert failures(result) == [
        (
            str(queued.pk),
            "status: only failed, timed-out or cancelled jobs can be retried; this one is queued",
        )
    ]
    assert status_of(failed) == status_of(timed_out) == JobStatus.QUEUED


def test_release_a_mix(mock_host):
    held = job(mock_host, hold=True)
    queued = job(mock_host)
    result = bulk.release_jobs([held.pk, str(queued.pk)])  # ids will do
    assert [j.pk for j in result.succeeded] == [held.pk]
    assert failures(result) == [
        (
            str(queued.pk),
            "status: only held (pending) jobs can be released; this one is queued",
        )
    ]


def test_ids_that_name_no_job_are_failures(mock_host):
    held = job(mock_host, hold=True)
    missing = uuid.uuid4()
    result = bulk.release_jobs([str(missing), "nope", str(held.pk), str(held.pk)])
    assert [j.pk for j in result.succeeded] == [held.pk]  # given twice, released once
    assert failures(result) == [(str(missing), "no job with this id"), ("nope", "not a job id")]


def test_a_job_deleted_meanwhile_no_longer_exists(mock_host):
    gone, kept = job(mock_host, hold=True), job(mock_host)
    ContainerJob.objects.filter(pk=gone.pk).delete()
    for operation in (bulk.cancel_jobs, bulk.release_jobs, bulk.delete_jobs):
        result = operation([gone])
        assert failures(result) == [(str(gone.pk), "no longer exists")], operation
    assert bulk.cancel_jobs([gone, kept]).succeeded == [kept]


@pytest.fixture
def chain(mock_host):
    return ExecutorHost.objects.create(
        name="chain", executor_type="fallback", executor_config={"members": ["mock"]}
    )


def test_reroute_moves_waiting_jobs_and_requeues_finished_ones(mock_host, chain):
    other = ExecutorHost.objects.create(name="other", executor_type="mock")
    queued, held = job(mock_host), job(mock_host, hold=True)
    failed = make_finished(job(mock_host))
    result = bulk.reroute_jobs([queued, held, failed], "other")
    assert result.ok and len(result.succeeded) == 3
    for moved, status in [(queued, "queued"), (held, "pending"), (failed, "queued")]:
        moved.refresh_from_db()
        assert (moved.status, moved.requested_host, moved.host) == (status, other, other)
    assert failed.max_attempts == failed.attempts + 1  # one more attempt, as retry gives
    # A chain: routing picks the member at launch.
    assert bulk.reroute_jobs([queued], chain).ok
    queued.refresh_from_db()
    assert (queued.requested_host, queued.host) == (chain, None)


def test_reroute_refuses_what_it_cannot_move(mock_host):
    ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    small = ExecutorHost.objects.create(
        name="small", executor_type="mock", policy={"max_memory_mb": 32}
    )
    running = make_running(job(mock_host))
    completed = make_finished(job(mock_host), JobStatus.COMPLETED)
    big = job(mock_host, memory_limit=64)
    assert failures(bulk.reroute_jobs([running, completed], small)) == [
        (str(running.pk), "status: it is running on mock; cancel it first"),
        (str(completed.pk), "status: completed; duplicate it to run again"),
    ]
    assert failures(bulk.reroute_jobs([big], "off")) == [
        (str(big.pk), "host: host 'off' is not active")
    ]
    (refusal,) = failures(bulk.reroute_jobs([big], small))
    assert refusal[1].startswith("memory_limit: 64 MB is over the maximum of 32 MB on host 'small'")
    big.refresh_from_db()
    assert big.requested_host == mock_host  # a refused job is left as it was
    with pytest.raises(ValidationError, match="no executor host named 'nowhere'"):
        bulk.reroute_jobs([big], "nowhere")


def test_a_job_claimed_meanwhile_is_not_rerouted(mock_host, chain):
    queued = job(mock_host)
    make_running(ContainerJob.objects.get(pk=queued.pk))  # a worker took it
    assert failures(bulk.reroute_jobs([queued], chain)) == [
        (str(queued.pk), "status: job changed meanwhile; it is now running")
    ]


def test_duplicate_copies_the_spec_and_none_of_the_outcome(mock_host, django_user_model):
    user = django_user_model.objects.create(username="ann")
    original = make_finished(
        api.create_job(
            "alpine",
            ["run", "it"],
            host=mock_host,
            env={"API_TOKEN": "t0k"},
            name="nightly",
            memory_limit=64,
            max_attempts=2,
            priority=5,
        )
    )
    sealed = ContainerJob.objects.get(pk=original.pk).environment_overrides["API_TOKEN"]
    result = bulk.duplicate_jobs(ContainerJob.objects.filter(pk=original.pk), created_by=user)
    (twin,) = result.succeeded
    twin.refresh_from_db()
    assert twin.pk != original.pk
    assert (twin.name, twin.command, twin.memory_limit) == ("nightly", ["run", "it"], 64)
    assert (twin.max_attempts, twin.priority, twin.requested_host) == (2, 5, mock_host)
    assert twin.environment_overrides == {"API_TOKEN": sealed}  # sealed as it was stored
    assert twin.get_environment() == {"API_TOKEN": "t0k"}
    assert (twin.status, twin.attempts, twin.exit_code, twin.execution_id) == (
        "queued",
        0,
        None,
        "",
    )
    assert (twin.started_at, twin.finished_at, twin.created_by) == (None, None, user)


def test_delete_refuses_running_jobs_and_takes_attempts_with_the_rest(mock_host):
    running = make_running(job(mock_host))
    failed = make_finished(job(mock_host))
    JobAttempt.objects.create(job=failed, number=1, host=mock_host, status="failed")
    queued = job(mock_host)
    result = bulk.delete_jobs(ContainerJob.objects.all())
    assert {j.pk for j in result.succeeded} == {failed.pk, queued.pk}
    assert failures(result) == [(str(running.pk), "status: it is running: cancel it first")]
    assert list(ContainerJob.objects.values_list("pk", flat=True)) == [running.pk]
    assert not JobAttempt.objects.filter(job_id=failed.pk).exists()


def test_a_queryset_is_walked_in_bounded_batches(mock_host):
    for _ in range(5):
        job(mock_host)
    with CaptureQueriesContext(connection) as queries:
        # Cancelled jobs leave the filter as they are done: none is skipped for it.
        result = bulk.cancel_jobs(ContainerJob.objects.filter(status="queued"), batch_size=2)
    assert len(result.succeeded) == 5 and not ContainerJob.objects.filter(status="queued")
    pages = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and "LIMIT 2" in q["sql"]]
    assert len(pages) == 3


def test_failure_is_plain_data():
    assert Failure("line 3", "argv: must be a list of strings").item == "line 3"

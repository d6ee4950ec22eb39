"""Dependencies: a job waits for the jobs it depends on, runs once they all completed, and
fails unrun when one of them did not."""

import pytest
from django.core.exceptions import ValidationError

from container_manager.api import cancel_job, create_job, delete_job, release_job
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.overview import why_waiting
from container_manager.queue import settle_dependents

from .test_worker import run_worker

pytestmark = pytest.mark.django_db(transaction=True)


def host(name, **config):
    return ExecutorHost.objects.create(name=name, executor_type="mock", executor_config=config)


def fresh(*jobs):
    return [ContainerJob.objects.get(pk=job.pk) for job in jobs]


def diamond(middle_host):
    """top; left and right depend on it; bottom depends on both. ``right`` runs on
    ``middle_host``."""
    ok = host("ok")
    top = create_job("img", ["top"], host=ok, name="top")
    left = create_job("img", ["left"], host=ok, name="left", depends_on=[top])
    right = create_job("img", ["right"], host=middle_host, name="right", depends_on=[top.pk])
    bottom = create_job("img", ["bottom"], host=ok, name="bottom", depends_on=[left, right])
    return top, left, right, bottom


def test_a_diamond_runs_in_order(db):
    top, left, right, bottom = diamond(host("also-ok"))
    assert [job.status for job in (left, right, bottom)] == ["pending"] * 3
    run_worker()
    top, left, right, bottom = fresh(top, left, right, bottom)
    assert [job.status for job in (top, left, right, bottom)] == ["completed"] * 4
    assert left.started_at >= top.finished_at and right.started_at >= top.finished_at
    assert bottom.started_at >= max(left.finished_at, right.finished_at)


def test_a_failure_in_the_middle_fails_what_depends_on_it_unrun(db):
    top, left, right, bottom = diamond(host("bad", exit_code=2))
    run_worker()
    top, left, right, bottom = fresh(top, left, right, bottom)
    assert (top.status, left.status, right.status) == ("completed", "completed", "failed")
    assert bottom.status == "failed"
    assert bottom.attempts == 0 and bottom.started_at is None and not bottom.execution_id
    expected = f"not run: job {right.pk} (right), which it depends on, ended failed"
    assert bottom.last_error == expected


def test_a_cancelled_dependency_fails_its_dependents_and_theirs(db):
    first = create_job("img", host=host("ok"), hold=True)
    second = create_job("img", host=first.host, depends_on=[first])
    third = create_job("img", host=first.host, depends_on=[second])
    cancel_job(first)
    settle_dependents()
    settle_dependents()  # the second round: ``third`` learns of ``second``
    second, third = fresh(second, third)
    assert (second.status, third.status) == ("failed", "failed")
    assert "ended cancelled" in second.last_error and "ended failed" in third.last_error


def test_what_cannot_be_a_dependency_is_refused_naming_the_field(db):
    ok = host("ok")
    for bad, message in [
        ("not-a-list", "must be a list"),
        (["nonsense"], "is not a job id"),
        (["00000000-0000-0000-0000-000000000000"], "no job with id"),
    ]:
        with pytest.raises(ValidationError) as caught:
            create_job("img", host=ok, depends_on=bad)
        assert message in caught.value.message_dict["depends_on"][0]
    first = create_job("img", host=ok)
    with pytest.raises(ValidationError, match="cannot also be held"):
        create_job("img", host=ok, depends_on=[first], hold=True)
    assert ContainerJob.objects.count() == 1


def test_a_waiting_job_says_why_and_cannot_be_released_nor_its_dependency_deleted(db):
    ok = host("ok")
    first = create_job("img", host=ok, hold=True)
    second = create_job("img", host=ok, depends_on=[first])
    [reason] = why_waiting(second)
    assert f"waits for the jobs it depends on: {first.pk} (pending)" in reason
    with pytest.raises(ValidationError, match="waits for jobs it depends on"):
        release_job(second)
    with pytest.raises(ValidationError, match="jobs wait for it"):
        delete_job(first)
    release_job(first)
    run_worker()
    assert fresh(second)[0].status == "completed"

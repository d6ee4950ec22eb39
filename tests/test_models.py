import pytest
from django.core.exceptions import ValidationError

from container_manager.api import create_job, retry_job
from container_manager.envfile import parse_env_text
from container_manager.executors import BaseExecutor, get_executor_class
from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost
from container_manager.output import CappedOutput, capped_text, decode_output
from container_manager.states import InvalidTransition, JobStatus

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("executor_type", ["docker", "mock", "thirdparty"])
def test_one_execution_identifier_for_every_executor(executor_type, settings):
    settings.CONTAINER_MANAGER = {"EXECUTORS": {"thirdparty": "tests.test_models.ThirdParty"}}
    host = ExecutorHost.objects.create(name=executor_type, executor_type=executor_type)
    job = create_job("img", host=host)
    job.set_execution_identifier("exec-123")
    job.save()
    job.refresh_from_db()
    assert job.execution_id == "exec-123"
    assert job.get_execution_identifier() == "exec-123"
    assert not hasattr(job, "container_id")
    assert not hasattr(job, "external_execution_id")


class ThirdParty(BaseExecutor):
    type_name = "thirdparty"


def test_third_party_executor_registered_in_settings_needs_no_migration(settings):
    settings.CONTAINER_MANAGER = {"EXECUTORS": {"thirdparty": "tests.test_models.ThirdParty"}}
    host = ExecutorHost(name="x", executor_type="thirdparty")
    host.full_clean()
    assert get_executor_class("thirdparty") is ThirdParty
    assert isinstance(host.get_executor(), ThirdParty)


def test_unknown_executor_type_is_rejected_naming_the_field():
    host = ExecutorHost(name="x", executor_type="kubernetess")
    with pytest.raises(ValidationError) as error:
        host.full_clean()
    assert "executor_type" in error.value.message_dict
    assert "kubernetess" in str(error.value)


def test_bad_mock_config_is_rejected_naming_the_key():
    host = ExecutorHost(name="x", executor_type="mock", executor_config={"exit_kode": 1})
    with pytest.raises(ValidationError) as error:
        host.full_clean()
    assert "exit_kode" in str(error.value.message_dict["executor_config"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"memory_limit": -5}, "memory_limit"),
        ({"memory_limit": 10**9}, "memory_limit"),
        ({"cpu_limit": -1}, "cpu_limit"),
        ({"cpu_limit": 0}, "cpu_limit"),
        ({"cpu_limit": 10_000}, "cpu_limit"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 10**9}, "timeout_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_limits_are_rejected_and_nothing_is_saved(mock_host, fields, field):
    with pytest.raises(ValidationError) as error:
        create_job("img", ["true"], host=mock_host, **fields)
    assert field in error.value.message_dict
    assert ContainerJob.objects.count() == 0


@pytest.mark.parametrize("image", ["", "   ", "has space:1"])
def test_bad_image_is_rejected(mock_host, image):
    with pytest.raises(ValidationError) as error:
        create_job(image, host=mock_host)
    assert "image" in error.value.message_dict
    assert ContainerJob.objects.count() == 0


def test_unknown_host_and_template_are_named(mock_host):
    with pytest.raises(ValidationError) as error:
        create_job("img", host="nope")
    assert error.value.message_dict == {"host": ["no executor host named 'nope'"]}
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, env_template="nope")
    assert "env_template" in error.value.message_dict


def test_bad_command_and_env_are_rejected(mock_host):
    with pytest.raises(ValidationError) as error:
        create_job("img", "echo hi", host=mock_host)  # a string is not an argv
    assert "command" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, env={"1BAD": "x"})
    assert "environment_overrides" in error.value.message_dict


def test_inactive_host_is_rejected(mock_host):
    mock_host.is_active = False
    mock_host.save()
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host)
    assert "not active" in str(error.value.message_dict["host"])


def test_no_host_given_is_routed_when_launched(mock_host):
    job = create_job("img")
    assert (job.requested_host, job.host) == (None, None)
    assert create_job("img", host=mock_host).host == mock_host  # a named host is the choice


def test_environment_is_template_plus_overrides(mock_host):
    template = EnvironmentVariableTemplate.objects.create(
        name="t", environment_variables="# comment\n\nA=1\nURL=http://x/?a=b&c=d\nexport B=two\n"
    )
    job = create_job("img", host=mock_host, env_template=template, env={"A": "override"})
    assert job.get_environment() == {"A": "override", "URL": "http://x/?a=b&c=d", "B": "two"}


def test_template_errors_name_the_line():
    with pytest.raises(ValidationError, match="line 2"):
        parse_env_text("A=1\nnot a pair\n")
    template = EnvironmentVariableTemplate(name="t", environment_variables="9X=1")
    with pytest.raises(ValidationError) as error:
        template.full_clean()
    assert "environment_variables" in error.value.message_dict


def test_transitions_are_enforced(mock_host):
    job = create_job("img", host=mock_host)
    job.status = JobStatus.COMPLETED
    with pytest.raises(InvalidTransition, match="'queued' to 'completed'"):
        job.save()
    job.refresh_from_db()
    with pytest.raises(InvalidTransition):
        job.transition(JobStatus.RUNNING)
    assert job.transition(JobStatus.LAUNCHING)
    assert job.transition(JobStatus.RUNNING)
    assert job.transition(JobStatus.COMPLETED)
    with pytest.raises(InvalidTransition):
        job.transition(JobStatus.QUEUED)


def test_transition_loses_to_a_concurrent_change(mock_host):
    job = create_job("img", host=mock_host)
    other = ContainerJob.objects.get(pk=job.pk)
    assert other.transition(JobStatus.LAUNCHING)
    assert job.transition(JobStatus.CANCELLED) is False
    assert job.status == JobStatus.LAUNCHING


def test_retry_requeues_a_failed_job(mock_host):
    job = create_job("img", host=mock_host)
    for status in (JobStatus.LAUNCHING, JobStatus.RUNNING, JobStatus.FAILED):
        job.transition(status)
    retry_job(job)
    assert job.status == JobStatus.QUEUED
    with pytest.raises(ValidationError):
        retry_job(job)


def test_capped_output_keeps_head_and_tail_and_says_so():
    capped = CappedOutput(limit=100)
    capped.extend([b"H" * 60, b"m" * 1000, b"T" * 60])
    text = capped.text()
    assert text.startswith("H" * 50)
    assert text.endswith("T" * 50)
    assert "output truncated, 1020 of 1120 bytes omitted" in text
    assert capped_text(b"short", limit=100) == "short"


def test_non_utf8_and_nul_are_stored_as_visible_escapes():
    assert decode_output(b"ok \xff\xfe \x00 end") == "ok \\xff\\xfe \\x00 end"


def test_retry_grants_the_attempts_asked_for_not_a_growing_budget(mock_host):
    job = create_job("img", host=mock_host, max_attempts=3)
    job.attempts = 3
    job.save()
    for status in (JobStatus.LAUNCHING, JobStatus.RUNNING, JobStatus.FAILED):
        job.transition(status)
    retry_job(job)
    assert job.max_attempts == 4
    job.transition(JobStatus.LAUNCHING, attempts=4)
    job.transition(JobStatus.RUNNING)
    job.transition(JobStatus.FAILED)
    retry_job(job, attempts=2)
    assert job.max_attempts == 6

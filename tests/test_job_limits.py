"""What a job may carry, and what no database can store: each is a field error that names the
field and the limit, nothing is saved, and nothing crashes, on SQLite and PostgreSQL alike.

Sizes (MAX_COMMAND_BYTES, MAX_ENV_VARS, MAX_ENV_BYTES), NUL bytes in every text and JSON
field (PostgreSQL refuses them in text and jsonb), JSON nested thousands of levels deep where
the policy looks into it, and hostile values kept out of messages.
"""

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from container_manager import policy
from container_manager.api import create_job
from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
NUL = "cannot contain NUL bytes (\\x00)"
DEEP = "is nested more than 32 levels deep"


def refused(host, image="img", command=("true",), **kwargs) -> dict[str, list[str]]:
    """The errors of a create_job that must fail, once it is known to have saved nothing."""
    with pytest.raises(ValidationError) as caught:
        create_job(image, command, host=host, **kwargs)
    assert not ContainerJob.objects.exists()
    return caught.value.message_dict


def full_clean_errors(instance) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        instance.full_clean()
    return caught.value.message_dict


def nested_list(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def longest_message(errors) -> int:
    return max(len(message) for messages in errors.values() for message in messages)


# -- the command ----------------------------------------------------------------------------


def test_a_10_mb_argument_is_refused_naming_the_limit(mock_host):
    errors = refused(mock_host, command=["echo", "x" * (10 * MB)])
    assert errors == {
        "command": [
            "the command is 10,485,764 bytes; at most 131,072 are allowed (MAX_COMMAND_BYTES)"
        ]
    }


def test_100000_arguments_are_refused(mock_host):
    errors = refused(mock_host, command=["arg"] * 100_000)
    assert errors == {
        "command": ["the command is 300,000 bytes; at most 131,072 are allowed (MAX_COMMAND_BYTES)"]
    }


def test_the_command_limit_counts_utf8_bytes(settings, mock_host):
    settings.CONTAINER_MANAGER = {"MAX_COMMAND_BYTES": 10}
    assert create_job("img", ["é" * 5], host=mock_host).command == ["é" * 5]  # 10 bytes
    ContainerJob.objects.all().delete()
    errors = refused(mock_host, command=["é" * 5, "x"])
    assert errors == {
        "command": ["the command is 11 bytes; at most 10 are allowed (MAX_COMMAND_BYTES)"]
    }


def test_the_cli_refuses_a_10_mb_argument(mock_host):
    with pytest.raises(CommandError) as caught:
        call_command(
            "manage_container_job",
            *("create", "--host", "mock", "--image", "img", "--", "echo", "x" * (10 * MB)),
            stdout=io.StringIO(),
        )
    assert str(caught.value) == (
        "command: the command is 10,485,764 bytes; at most 131,072 are allowed (MAX_COMMAND_BYTES)"
    )
    assert not ContainerJob.objects.exists()


# -- the environment ------------------------------------------------------------------------


def test_100000_environment_variables_are_refused(mock_host):
    errors = refused(mock_host, env={f"VAR_{i}": "x" for i in range(100_000)})
    assert errors == {
        "environment_overrides": [
            "the environment has 100,000 variables; at most 1,000 are allowed (MAX_ENV_VARS)"
        ]
    }


def test_environment_bytes_over_the_limit_are_refused(mock_host):
    errors = refused(mock_host, env={"BIG": "x" * 200_000})
    assert errors == {
        "environment_overrides": [
            "the environment is 200,003 bytes; at most 131,072 are allowed (MAX_ENV_BYTES)"
        ]
    }


def test_environment_bytes_are_names_and_values_in_utf8(settings, mock_host):
    settings.CONTAINER_MANAGER = {"MAX_ENV_BYTES": 10}
    create_job("img", host=mock_host, env={"AB": "ééé", "C": "x"})  # 2 + 6 + 1 + 1
    ContainerJob.objects.all().delete()
    errors = refused(mock_host, env={"AB": "ééé", "C": "xy"})
    assert errors == {
        "environment_overrides": [
            "the environment is 11 bytes; at most 10 are allowed (MAX_ENV_BYTES)"
        ]
    }


def test_a_template_over_the_limit_is_refused():
    text = "".join(f"VAR_{i}=x\n" for i in range(100_000))
    template = EnvironmentVariableTemplate(name="big", environment_variables=text)
    assert full_clean_errors(template) == {
        "environment_variables": [
            "the environment has 100,000 variables; at most 1,000 are allowed (MAX_ENV_VARS)"
        ]
    }
    template.environment_variables = "BIG=" + "x" * 200_000
    assert full_clean_errors(template) == {
        "environment_variables": [
            "the environment is 200,003 bytes; at most 131,072 are allowed (MAX_ENV_BYTES)"
        ]
    }
    assert not EnvironmentVariableTemplate.objects.exists()


def test_a_template_that_pushes_a_job_over_is_named(settings, mock_host):
    EnvironmentVariableTemplate.objects.create(name="base", environment_variables="A=1\nB=2\n")
    settings.CONTAINER_MANAGER = {"MAX_ENV_VARS": 3}
    # A variable of the template given again counts once: that is what the container gets.
    create_job("img", host=mock_host, env_template="base", env={"A": "x", "C": "3"})
    ContainerJob.objects.all().delete()
    errors = refused(mock_host, env_template="base", env={"C": "3", "D": "4"})
    assert errors == {
        "environment_template": [
            "with the template, the environment has 4 variables; at most 3 are allowed "
            "(MAX_ENV_VARS)"
        ]
    }


def test_secrets_count_toward_the_environment_limits(settings, mock_host):
    settings.CONTAINER_MANAGER = {"MAX_ENV_VARS": 2}
    errors = refused(mock_host, env={"A": "1"}, secrets={"S1": "x", "S2": "y"})
    assert errors == {
        "secrets": [
            "with the secrets, the environment has 3 variables; at most 2 are allowed "
            "(MAX_ENV_VARS)"
        ]
    }


def test_secrets_are_measured_in_clear_before_and_after_sealing(settings, mock_host):
    settings.CONTAINER_MANAGER = {"MAX_ENV_BYTES": 41}
    job = create_job("img", host=mock_host, secrets={"S": "x" * 40})
    assert job.environment_overrides["S"].startswith("cmsecret:v1:")  # far longer sealed
    job.full_clean()  # validated again, sealed, it still measures 41 bytes
    ContainerJob.objects.all().delete()
    errors = refused(mock_host, secrets={"S": "x" * 41})
    assert errors == {
        "secrets": [
            "with the secrets, the environment is 42 bytes; at most 41 are allowed (MAX_ENV_BYTES)"
        ]
    }


# -- NUL bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "image", "working_dir", "run_as_user"])
def test_nul_in_a_job_text_field_is_a_field_error(mock_host, field):
    fields = {"image": "img", field: "a\x00b"}
    errors = refused(mock_host, image=fields.pop("image"), **fields)
    assert set(errors) == {field}
    assert NUL in errors[field]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("command", {"command": ["echo", "a\x00b"]}),
        ("environment_overrides", {"env": {"A": "a\x00b"}}),
        ("environment_overrides", {"env": {"A\x00": "b"}}),  # a key
        ("mounts", {"mounts": [{"source": "/srv\x00", "target": "/data"}]}),
        ("capabilities", {"capabilities": ["NET_\x00ADMIN"]}),
        ("retry_on", {"retry_on": ["timeout\x00"]}),
    ],
)
def test_nul_in_a_job_json_field_is_a_field_error(mock_host, field, kwargs):
    errors = refused(mock_host, **kwargs)
    assert set(errors) == {field}
    assert NUL in errors[field]


def test_nul_in_a_host_or_template_name_to_look_up_is_a_field_error(mock_host):
    assert refused(mock_host.name + "\x00") == {"host": [NUL]}
    assert refused(mock_host, env_template="base\x00") == {"env_template": [NUL]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a\x00b"),
        ("executor_type", "mo\x00ck"),
        ("connection_string", "unix:///run/\x00"),
        ("tls_ca_cert", "/ca\x00.pem"),
        ("health_message", "a\x00b"),
        ("labels", {"team": "a\x00b"}),
        ("labels", {"te\x00am": "a"}),  # a key
        ("labels", {"deep": [[{"x": ["a\x00b"]}]]}),
        ("executor_config", {"stdout": "a\x00b"}),
        ("policy", {"allowed_images": ["a\x00b"]}),
    ],
)
def test_nul_in_a_host_is_a_field_error(field, value):
    host = ExecutorHost(**{"name": "h", "executor_type": "mock", field: value})
    errors = full_clean_errors(host)
    assert NUL in errors[field]
    assert not ExecutorHost.objects.exists()


@pytest.mark.parametrize("field", ["name", "description", "environment_variables"])
def test_nul_in_a_template_is_a_field_error(field):
    template = EnvironmentVariableTemplate(**{"name": "t", field: "A=a\x00b"})
    assert NUL in full_clean_errors(template)[field]
    assert not EnvironmentVariableTemplate.objects.exists()


@pytest.mark.parametrize(
    ("labels", "message"),
    [('{"team": "a\\u0000b"}', "cannot contain NUL bytes"), ("[" * 40 + "]" * 40, DEEP)],
    ids=["nul", "deep"],
)
def test_the_admin_shows_the_model_s_own_json_errors_without_a_500(admin_client, labels, message):
    page = admin_client.post(
        "/admin/container_manager/executorhost/add/",
        {
            "name": "h",
            "executor_type": "mock",
            "executor_config": "{}",
            "labels": labels,
            "policy": "{}",
            "weight": "100",
            "max_concurrent_jobs": "10",
        },
    )
    assert page.status_code == 200
    assert message in page.text  # not the form's "Enter a valid JSON."
    assert not ExecutorHost.objects.exists()


# -- JSON nested deep -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [nested_list(2000), [{"source": "/srv", "target": "/data", "read_only": nested_list(2000)}]],
)
@pytest.mark.parametrize("field", ["mounts", "capabilities"])
def test_deep_mounts_and_capabilities_are_one_field_error(mock_host, field, value):
    assert refused(mock_host, **{field: value}) == {field: [DEEP]}


@pytest.mark.parametrize(
    ("executor_type", "field", "value"),
    [
        ("mock", "policy", {"allowed_mount_sources": nested_list(2000)}),
        ("mock", "policy", {"allowed_capabilities": nested_list(2000)}),
        ("mock", "labels", {"mounts": nested_list(2000), "capabilities": nested_list(2000)}),
        ("docker", "executor_config", {"network": nested_list(2000)}),
    ],
)
def test_deep_host_json_is_one_field_error(executor_type, field, value):
    host = ExecutorHost(name="deep", executor_type=executor_type, **{field: value})
    assert full_clean_errors(host) == {field: [DEEP]}


def test_a_deep_host_policy_saved_around_validation_refuses_jobs_in_a_short_message():
    host = ExecutorHost(
        name="h", executor_type="mock", policy={"allowed_mount_sources": nested_list(2000)}
    )
    with pytest.raises(policy.PolicyViolation) as caught:
        policy.check_job(ContainerJob(image="img", host=host))
    (message,) = caught.value.message_dict["host"]
    assert message.startswith(
        "host 'h' has an invalid policy: 'allowed_mount_sources' must be a list of absolute "
        "host paths"
    )
    assert len(message) < 300


@pytest.mark.parametrize("field", ["mounts", "capabilities"])
def test_deep_job_json_saved_around_validation_is_refused_at_launch(mock_host, field):
    # Not skipped: the launch must not go ahead with a field the policy could not read.
    job = ContainerJob(image="img", host=mock_host, **{field: nested_list(2000)})
    with pytest.raises(policy.PolicyViolation) as caught:
        policy.check_job(job)
    assert caught.value.message_dict == {field: [DEEP]}


def test_the_admin_shows_a_job_whose_json_is_too_deep_and_a_command_that_is_no_argv(
    admin_client, mock_host
):
    job = create_job("img", ["true"], host=mock_host, hold=True)
    # Written around validation (an UPDATE), within what the database driver can decode.
    ContainerJob.objects.filter(pk=job.pk).update(mounts=nested_list(40), command=[["x"]])
    page = f"/admin/container_manager/containerjob/{job.pk}/change/"
    change = admin_client.get(page)  # held: the edit form
    assert change.status_code == 200
    assert f"(not shown: {DEEP})" in change.text
    ContainerJob.objects.filter(pk=job.pk).update(status="queued")
    operator = admin_client.get(page)
    assert operator.status_code == 200
    assert "(not an argv: [[&#x27;x&#x27;]])" in operator.text
    assert "mounts" in operator.text
    assert admin_client.get("/admin/container_manager/containerjob/").status_code == 200


# -- messages and names ---------------------------------------------------------------------


def test_a_huge_value_is_not_copied_into_a_message(mock_host):
    errors = refused(
        mock_host,
        image="x " * MB,
        run_as_user="y" * MB,
        mounts=[{"source": "/" + "z" * MB, "target": "/data"}],
        capabilities=["C" * MB],
        retry_on=["w"] * MB,
    )
    assert set(errors) == {"image", "run_as_user", "mounts", "capabilities", "retry_on"}
    assert longest_message(errors) < 1000


def test_an_over_long_name_is_a_field_error(mock_host):
    errors = refused(mock_host, name="n" * 201)
    assert errors == {"name": ["Ensure this value has at most 200 characters (it has 201)."]}


def test_the_cli_refuses_an_over_long_name(mock_host):
    with pytest.raises(CommandError) as caught:
        call_command(
            "manage_container_job",
            *("create", "--host", "mock", "--image", "img", "--name", "n" * 201),
            stdout=io.StringIO(),
        )
    assert str(caught.value) == "name: Ensure this value has at most 200 characters (it has 201)."
    assert not ContainerJob.objects.exists()


@pytest.mark.parametrize("env", ["A=1", ["A=1"], 7])
def test_an_env_that_is_no_mapping_is_a_field_error(mock_host, env):
    errors = refused(mock_host, env=env)
    assert list(errors) == ["env"]
    assert errors["env"][0].startswith("must be an object of NAME to value, not ")

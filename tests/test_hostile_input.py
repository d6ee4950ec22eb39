"""Hostile input, generated: every input ends in a clear validation error or a correct job.

Runs derandomized (a fixed seed) by default; HYPOTHESIS_PROFILE=long searches much longer.
"""

import contextlib
import io
import json
import math

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from hypothesis import given
from hypothesis import strategies as st

from container_manager.api import create_job
from container_manager.envfile import KEY_RE, parse_env_text
from container_manager.models import ContainerJob
from container_manager.output import CappedOutput, decode_output

from .conftest import TEST_IMAGE

pytestmark = pytest.mark.django_db

# What str.splitlines() splits on: a value holding one of these is two lines, not one.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
keys = st.from_regex(KEY_RE, fullmatch=True).filter(lambda k: len(k) < 60)
values = st.text(
    st.characters(exclude_characters=LINE_BREAKS + "\x00", exclude_categories=["Cs"]),
    max_size=200,
).map(str.strip)


# -- the environment template parser --------------------------------------------------


@given(st.text(max_size=2000))
def test_template_text_parses_or_fails_cleanly(text):
    try:
        env = parse_env_text(text)
    except ValidationError as error:
        assert error.messages[0].startswith("line ")
        return
    for key, value in env.items():
        assert KEY_RE.match(key)
        assert "\x00" not in value
        assert not any(c in value for c in LINE_BREAKS)


@given(st.dictionaries(keys, values, max_size=20))
def test_template_round_trips(env):
    text = "# generated\n\n" + "\n".join(f"{key}={value}" for key, value in env.items())
    assert parse_env_text(text) == env


@given(st.binary(max_size=500))
def test_template_from_arbitrary_bytes(data):
    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(ValidationError):
        parse_env_text(text)


# -- the CLI ----------------------------------------------------------------------------

argv_items = st.text(st.characters(exclude_categories=["Cs"]), min_size=0, max_size=40)


@given(st.lists(argv_items, min_size=1, max_size=8))
def test_argv_after_double_dash_is_kept_literally(mock_host, argv):
    out = io.StringIO()
    args = ["create", "--host", mock_host.name, "--image", "img", "--json", "--", *argv]
    try:
        call_command("manage_container_job", *args, stdout=out)
    except CommandError as error:
        assert any("\x00" in arg for arg in argv)
        assert "command" in str(error)
        return
    job = ContainerJob.objects.get(pk=json.loads(out.getvalue())["id"])
    assert job.command == argv


# -- job validation ---------------------------------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "memory_limit": anything,
            "cpu_limit": anything,
            "timeout_seconds": anything,
            "priority": anything,
            "max_attempts": anything,
            "name": anything,
            "working_dir": anything,
            "retry_on": anything,
        },
    ),
    st.one_of(st.text(max_size=50), st.none()),
)
def test_any_field_values_give_a_valid_job_or_a_named_error(mock_host, fields, image):
    before = ContainerJob.objects.count()
    try:
        job = create_job(image, ["true"], host=mock_host, **fields)
    except ValidationError as error:
        assert set(error.message_dict) <= {*fields, "image", "__all__"}
        assert ContainerJob.objects.count() == before
        return
    job.refresh_from_db()
    if job.memory_limit is not None:
        assert 4 <= job.memory_limit <= 256 * 1024
    if job.cpu_limit is not None:
        assert math.isfinite(job.cpu_limit) and 0 < job.cpu_limit <= 256
    assert job.timeout_seconds >= 1
    assert job.image.strip()


# -- output decoding --------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_decoded_output_is_storable_text(data):
    text = decode_output(data)
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogates: any database accepts it
    if b"\\" not in data:
        # Valid UTF-8 comes through unchanged; everything else is escaped, not dropped.
        assert len(text) >= len(data.decode("utf-8", errors="ignore").replace("\x00", ""))


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(min_value=2, max_value=600))
def test_capped_output_is_bounded_and_exact_below_the_cap(chunks, limit):
    capped = CappedOutput(limit).extend(chunks)
    data = b"".join(chunks)
    text = capped.text()
    if len(data) <= limit:
        assert text == decode_output(data)
    else:
        assert "output truncated" in text
        assert f"{len(data) - limit} of {len(data)} bytes omitted" in text
        # Each kept byte becomes at most 4 characters (\xNN).
        assert len(text) <= 4 * limit + 200


# -- shell metacharacters reach the container literally ---------------------------------

SHELLISH = ["$(id)", "`id`", "; rm -rf /", "&&", "|", "> /tmp/x", "*", "'\"", "\\", "$HOME", "~"]


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_shell_metacharacters_reach_the_container_literally(docker_host):
    job = create_job(TEST_IMAGE, ["printf", "%s\\n", *SHELLISH], host=docker_host)
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05")
    job.refresh_from_db()
    assert (job.status, job.stdout) == ("completed", "".join(f"{a}\n" for a in SHELLISH))


# -- deeply nested JSON -----------------------------------------------------------------


def nested(depth):
    value = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("field", ["executor_config", "labels", "policy"])
def test_deeply_nested_host_json_is_a_named_error(db, field):
    from container_manager.models import ExecutorHost

    host = ExecutorHost(name="deep", executor_type="mock", **{field: nested(5000)})
    with pytest.raises(ValidationError) as error:
        host.full_clean()
    assert field in error.value.message_dict


def test_deeply_nested_job_json_is_a_named_error(mock_host):
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, retry_on=[[[]]] * 1 + [nested(5000)])
    assert "retry_on" in error.value.message_dict


def test_admin_refuses_deeply_nested_json_without_a_500(admin_client, mock_host):
    page = admin_client.post(
        f"/admin/container_manager/executorhost/{mock_host.pk}/change/",
        {
            "name": "mock",
            "executor_type": "mock",
            "executor_config": "[" * 100_000 + "]" * 100_000,
            "labels": "{}",
            "policy": "{}",
            "weight": "100",
            "max_concurrent_jobs": "10",
            "health_status": "unknown",
        },
    )
    assert page.status_code == 200
    assert "nested more than 32 levels deep" in page.text

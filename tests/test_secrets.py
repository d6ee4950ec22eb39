"""Secrets: sealed at rest, masked everywhere people look, clear only for the container."""

import io
import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from container_manager import api, rotation, secrets
from container_manager.executors import BaseExecutor, ExecutorError
from container_manager.executors.mock import MockExecutor
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobAttempt,
)
from container_manager.secrets import MASK, SecretError
from container_manager.states import JobStatus

from .conftest import TEST_IMAGE

TOKEN = "tok-3f9a1c77e2b04d5e"  # noqa: S105 - a test value, which must never be seen
PASSWORD = "pw-correct-horse-battery"  # noqa: S105
EXPLICIT = "postgres://app:hunter2-db@db.internal/app"
TEMPLATE_SECRET = "tpl-5be0aa71c9d3"
CLEAR_VALUES = [TOKEN, PASSWORD, EXPLICIT, TEMPLATE_SECRET, "hunter2"]


def assert_hidden(text):
    for value in CLEAR_VALUES:
        assert value not in text, f"a secret value appears in: {text[:2000]}"


@pytest.fixture
def keys(settings):
    """Two configured keys; the first encrypts."""
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [new, old]}
    return new, old


@pytest.fixture
def template(db):
    return EnvironmentVariableTemplate.objects.create(
        name="base",
        description="shared settings",
        environment_variables=(
            f"# the database\nDB_PASSWORD={TEMPLATE_SECRET}\nGREETING=hello\nexport REGION=eu\n"
        ),
    )


@pytest.fixture
def job(mock_host, template):
    return api.create_job(
        "alpine",
        ["sh", "-c", "echo $API_TOKEN"],
        host=mock_host,
        name="with-secrets",
        env={"API_TOKEN": TOKEN, "admin_password": PASSWORD, "MODE": "fast"},
        secrets={"DATABASE_URL": EXPLICIT},
        env_template=template,
        hold=True,  # held: its admin page is the edit form
    )


CLEAR_ENV = {
    "API_TOKEN": TOKEN,
    "admin_password": PASSWORD,
    "MODE": "fast",
    "DATABASE_URL": EXPLICIT,
    "DB_PASSWORD": TEMPLATE_SECRET,
    "GREETING": "hello",
    "REGION": "eu",
}


def run_cli(*args):
    out = io.StringIO()
    call_command("manage_container_job", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def raw_rows(model):
    """Every column of every row of the model's table, as the database holds them."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)}")
        return " | ".join(" ".join(str(value) for value in row) for row in cursor.fetchall())


# -- sealing -----------------------------------------------------------------------------


def test_seal_and_unseal(keys):
    sealed = secrets.seal(TOKEN)
    assert sealed.startswith("cmsecret:v1:")
    assert TOKEN not in sealed
    assert secrets.unseal(sealed) == TOKEN
    assert secrets.seal(TOKEN) != sealed  # a fresh IV each time
    assert secrets.seal(sealed) == sealed  # already sealed: kept as it is
    assert secrets.unseal("plain") == "plain"
    assert secrets.unseal(secrets.seal("")) == ""
    assert secrets.unseal(secrets.seal("ünï=cødé\n")) == "ünï=cødé\n"
    assert secrets.mask(TOKEN) == MASK == "••••••"


def test_a_tampered_token_names_the_variable_not_the_value(keys):
    sealed = secrets.seal(TOKEN)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SecretError) as error:
        secrets.unseal(tampered, "API_TOKEN")
    assert "API_TOKEN" in str(error.value)
    assert TOKEN not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__
    with pytest.raises(SecretError, match="API_TOKEN"):
        secrets.unseal("cmsecret:v1:not-a-token", "API_TOKEN")
    # Something that only looks sealed is refused when given, not at launch.
    with pytest.raises(SecretError, match="X_TOKEN"):
        secrets.seal("cmsecret:v1:garbage", "X_TOKEN")


def test_an_unknown_key_is_refused_with_the_variable_named(settings, keys):
    sealed = secrets.seal(TOKEN)
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [Fernet.generate_key().decode()]}
    with pytest.raises(SecretError) as error:
        secrets.unseal(sealed, "API_TOKEN")
    assert "API_TOKEN" in str(error.value) and "ENCRYPTION_KEYS" in str(error.value)


def test_a_bad_configured_key_is_named_by_position_not_shown(settings):
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [Fernet.generate_key().decode(), "hunter2"]}
    with pytest.raises(ImproperlyConfigured) as error:
        secrets.seal("x")
    assert "entry 2" in str(error.value)
    assert "hunter2" not in str(error.value)
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    with pytest.raises(ImproperlyConfigured, match="must be a list"):
        secrets.seal("x")


def test_key_derived_from_secret_key(settings):
    settings.CONTAINER_MANAGER = {}
    settings.SECRET_KEY = "first-secret-key-" + "x" * 40
    settings.SECRET_KEY_FALLBACKS = []
    derived = secrets.derived_key()
    assert derived == secrets.derived_key(settings.SECRET_KEY)
    Fernet(derived)  # a valid Fernet key
    assert derived != secrets.derived_key("another")
    sealed = secrets.seal(TOKEN)
    assert Fernet(derived).decrypt(sealed.removeprefix(secrets.PREFIX).encode()) == TOKEN.encode()

    old = settings.SECRET_KEY
    settings.SECRET_KEY = "second-secret-key-" + "y" * 40
    with pytest.raises(SecretError):
        secrets.unseal(sealed, "API_TOKEN")
    # Django's own rotation: the old SECRET_KEY in SECRET_KEY_FALLBACKS still decrypts...
    settings.SECRET_KEY_FALLBACKS = [old]
    assert secrets.unseal(sealed) == TOKEN
    # ...and so does the old derived key listed explicitly.
    settings.SECRET_KEY_FALLBACKS = []
    settings.CONTAINER_MANAGER = {
        "ENCRYPTION_KEYS": [Fernet.generate_key().decode(), secrets.derived_key(old).decode()]
    }
    assert secrets.unseal(sealed) == TOKEN


@pytest.mark.parametrize(
    "name, secret",
    [
        ("API_TOKEN", True),
        ("api_token", True),
        ("GITHUB_TOKEN", True),
        ("DB_PASSWORD", True),
        ("db_passwd", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("STRIPE_API_KEY", True),
        ("SSH_PRIVATE_KEY", True),
        ("GCP_CREDENTIALS", True),
        ("SIGNING_KEY", True),
        ("GREETING", False),
        ("KEYBOARD", False),
        ("MONKEY", False),
        ("PATH", False),
        ("DATABASE_URL", False),
    ],
)
def test_secret_names(settings, name, secret):
    settings.CONTAINER_MANAGER = {}
    assert secrets.is_secret_key(name) is secret


def test_secret_name_patterns_come_from_the_setting(settings):
    settings.CONTAINER_MANAGER = {"SECRET_ENV_PATTERNS": ["*_url", "DSN"]}
    assert secrets.is_secret_key("DATABASE_URL")
    assert secrets.is_secret_key("dsn")
    assert not secrets.is_secret_key("API_TOKEN")


def test_template_text_sealing_keeps_layout_and_is_stable(keys):
    text = (
        "# comment with TOKEN=inside\n\n  export  API_TOKEN=a=b \r\nGREETING=hi\nX_KEY=\n"
        "not a line\n"
    )
    sealed = secrets.seal_env_text(text)
    lines = sealed.split("\n")
    assert lines[0] == "# comment with TOKEN=inside"
    assert lines[1] == ""
    assert lines[2].startswith("  export  API_TOKEN=cmsecret:v1:") and lines[2].endswith("\r")
    assert lines[3] == "GREETING=hi"
    assert lines[4].startswith("X_KEY=cmsecret:v1:")
    assert lines[5] == "not a line"
    assert secrets.seal_env_text(sealed) == sealed
    assert secrets.mask_env_text(sealed).splitlines()[2:5] == [
        f"  export  API_TOKEN={MASK}",
        "GREETING=hi",
        f"X_KEY={MASK}",
    ]


# -- storage -----------------------------------------------------------------------------


def test_create_job_seals_secret_names_and_explicit_secrets(keys, job):
    stored = job.environment_overrides
    assert stored["MODE"] == "fast"
    for name in ["API_TOKEN", "admin_password", "DATABASE_URL"]:
        assert stored[name].startswith("cmsecret:v1:"), name
    job = ContainerJob.objects.get(pk=job.pk)
    assert job.get_environment() == CLEAR_ENV
    assert job.get_environment_display() == {
        "API_TOKEN": MASK,
        "admin_password": MASK,
        "MODE": "fast",
        "DATABASE_URL": MASK,
        "DB_PASSWORD": MASK,
        "GREETING": "hello",
        "REGION": "eu",
    }
    assert job.get_environment_display(reveal=True) == CLEAR_ENV


def test_saving_through_the_orm_seals_too(keys, mock_host):
    job = ContainerJob.objects.create(
        image="alpine", host=mock_host, environment_overrides={"API_TOKEN": TOKEN}
    )
    assert_hidden(raw_rows(ContainerJob))
    assert ContainerJob.objects.get(pk=job.pk).get_environment() == {"API_TOKEN": TOKEN}


def test_bad_secrets_are_named_and_nothing_is_saved(keys, mock_host):
    with pytest.raises(ValidationError) as error:
        api.create_job(
            "two words",
            ["true"],
            host=mock_host,
            env={"A_TOKEN": TOKEN},
            secrets={"A_TOKEN": "x", "1BAD": "hunter2"},
        )
    assert set(error.value.message_dict) == {"image", "secrets"}
    assert_hidden(str(error.value))
    with pytest.raises(ValidationError) as error:
        api.create_job("alpine", host=mock_host, secrets={"A": "cmsecret:v1:forged"})
    assert "A" in str(error.value.message_dict["secrets"])
    with pytest.raises(ValidationError) as error:
        api.create_job("alpine", host=mock_host, env={"B": "cmsecret:v1:forged"})
    assert "B" in str(error.value.message_dict["environment_overrides"])
    assert not ContainerJob.objects.exists()


def test_template_secrets_are_sealed_on_save(keys, template):
    stored = template.environment_variables
    assert "\nDB_PASSWORD=cmsecret:v1:" in stored
    assert "# the database\n" in stored and "GREETING=hello\n" in stored
    assert "export REGION=eu" in stored
    assert TEMPLATE_SECRET not in stored
    template.save()
    template.refresh_from_db()
    assert template.environment_variables == stored  # sealed values stay as they are
    assert template.get_environment()["DB_PASSWORD"].startswith("cmsecret:v1:")


def test_the_database_never_holds_a_clear_secret(keys, job, template):
    assert_hidden(raw_rows(ContainerJob))
    assert_hidden(raw_rows(EnvironmentVariableTemplate))
    assert "fast" in raw_rows(ContainerJob)  # not a secret: stored as it is


# -- rotation ----------------------------------------------------------------------------


@pytest.fixture
def one_key(settings):
    key = Fernet.generate_key().decode()
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [key]}
    return key


def test_rotation_with_two_keys_and_reencryption(settings, one_key, job, template):
    first = one_key
    second = Fernet.generate_key().decode()
    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [second, first]}
    assert ContainerJob.objects.get(pk=job.pk).get_environment() == CLEAR_ENV

    out = io.StringIO()
    call_command("container_jobs_rotate_secrets", stdout=out)
    assert out.getvalue().strip() == "Re-encrypted 4 secret value(s): 1 job(s), 1 template(s)."
    assert_hidden(out.getvalue())

    settings.CONTAINER_MANAGER = {"ENCRYPTION_KEYS": [second]}  # the old key is dropped
    assert ContainerJob.objects.get(pk=job.pk).get_environment() == CLEAR_ENV
    assert_hidden(raw_rows(ContainerJob) + raw_rows(EnvironmentVariableTemplate))


def test_reencryption_seals_secrets_left_in_clear_and_lists_what_it_cannot_open(
    keys, mock_host, template
):
    legacy = api.create_job("alpine", host=mock_host, env={"MODE": "x"})
    # Written before secrets were sealed (or by a raw UPDATE): in clear.
    ContainerJob.objects.filter(pk=legacy.pk).update(
        environment_overrides={"API_TOKEN": TOKEN, "MODE": "x"}
    )
    foreign = Fernet(Fernet.generate_key()).encrypt(b"hunter2").decode()
    broken = api.create_job("alpine", host=mock_host)
    ContainerJob.objects.filter(pk=broken.pk).update(
        environment_overrides={"OTHER_TOKEN": secrets.PREFIX + foreign}
    )
    result = rotation.reencrypt_all()
    assert (result.values, result.jobs, result.templates) == (2, 1, 1)
    assert result.failed == [f"job {broken.pk}: OTHER_TOKEN"]
    stored = ContainerJob.objects.get(pk=legacy.pk).environment_overrides
    assert stored["API_TOKEN"].startswith("cmsecret:v1:") and stored["MODE"] == "x"
    assert_hidden(raw_rows(ContainerJob))

    with pytest.raises(CommandError) as error:
        call_command("container_jobs_rotate_secrets", stdout=io.StringIO())
    assert f"job {broken.pk}: OTHER_TOKEN" in str(error.value)
    assert_hidden(str(error.value))


def test_generate_key_prints_a_fernet_key(db):
    out = io.StringIO()
    call_command("container_jobs_rotate_secrets", "--generate-key", stdout=out)
    Fernet(out.getvalue().strip())


# -- the admin ---------------------------------------------------------------------------


def admin_url(model, view, *args):
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


JOB_FORM = {
    "image": "alpine",
    "command": '["true"]',
    "timeout_seconds": "60",
    "priority": "0",
    "scheduled_for_0": "2026-01-01",
    "scheduled_for_1": "00:00:00",
    "max_attempts": "1",
    "gpus": "0",
    "attempt_set-TOTAL_FORMS": "0",
    "attempt_set-INITIAL_FORMS": "0",
}


def started(job):
    assert job.transition(JobStatus.LAUNCHING, attempts=1)
    assert job.transition(JobStatus.RUNNING, execution_id="mock-1", started_at=timezone.now())
    return job


def test_admin_pages_never_show_a_secret(admin_client, keys, job, template):
    running = started(
        api.create_job(
            "alpine", host=job.host, env={"API_TOKEN": TOKEN}, env_template=template, name="run"
        )
    )
    pages = [
        admin_url("containerjob", "changelist"),
        admin_url("containerjob", "change", job.pk),
        admin_url("containerjob", "change", running.pk),
        admin_url("containerjob", "history", job.pk),
        admin_url("containerjob", "delete", job.pk),
        admin_url("containerjob", "add"),
        admin_url("environmentvariabletemplate", "changelist"),
        admin_url("environmentvariabletemplate", "change", template.pk),
        admin_url("environmentvariabletemplate", "add"),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert_hidden(response.text)
        assert "cmsecret:v1:" not in response.text, page
    # The masked values are there, and what is not secret is shown.
    change = admin_client.get(admin_url("containerjob", "change", job.pk)).text
    assert "&quot;API_TOKEN&quot;: &quot;••••••&quot;" in change
    assert "&quot;MODE&quot;: &quot;fast&quot;" in change
    readonly = admin_client.get(admin_url("containerjob", "change", running.pk)).text
    assert f"API_TOKEN={MASK}" in readonly and "GREETING=hello" in readonly
    tpl = admin_client.get(admin_url("environmentvariabletemplate", "change", template.pk)).text
    assert f"DB_PASSWORD={MASK}" in tpl and "GREETING=hello" in tpl


def test_admin_add_job_seals_and_redisplays_masked(admin_client, keys, mock_host):
    overrides = json.dumps({"API_TOKEN": TOKEN, "MODE": "fast"})
    bad = admin_client.post(
        admin_url("containerjob", "add"),
        {**JOB_FORM, "name": "bad", "image": "two words", "environment_overrides": overrides},
    )
    assert bad.status_code == 200  # redisplayed with the error...
    assert "contains whitespace" in bad.text
    assert_hidden(bad.text)  # ...but not with the secret just typed...
    redisplayed = bad.context["adminform"].form["environment_overrides"].value()
    assert json.loads(redisplayed)["MODE"] == "fast"
    # ...which is carried sealed, so that sending the form again loses nothing.
    response = admin_client.post(
        admin_url("containerjob", "add"),
        {**JOB_FORM, "name": "from-admin", "environment_overrides": redisplayed},
        follow=True,
    )
    assert response.status_code == 200
    assert_hidden(response.text)
    job = ContainerJob.objects.get(name="from-admin")
    assert job.get_environment() == {"API_TOKEN": TOKEN, "MODE": "fast"}
    assert_hidden(raw_rows(ContainerJob))
    page = admin_client.get(admin_url("containerjob", "change", job.pk))
    assert_hidden(page.text)


def job_form_data(admin_client, job):
    form = admin_client.get(admin_url("containerjob", "change", job.pk)).context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: "" if value is None else value for name, value in data.items()}
    scheduled = data.pop("scheduled_for")
    data["scheduled_for_0"], data["scheduled_for_1"] = scheduled.date(), scheduled.time()
    data["host"] = job.host_id
    data["environment_template"] = job.environment_template_id or ""
    data.update({"attempt_set-TOTAL_FORMS": "0", "attempt_set-INITIAL_FORMS": "0"})
    return data


def test_admin_edit_keeps_masked_values_and_takes_new_ones(admin_client, keys, job):
    before = dict(ContainerJob.objects.get(pk=job.pk).environment_overrides)
    data = job_form_data(admin_client, job)
    assert json.loads(data["environment_overrides"])["API_TOKEN"] == MASK
    data["name"] = "renamed"
    response = admin_client.post(admin_url("containerjob", "change", job.pk), data)
    assert response.status_code == 302, response.text
    job.refresh_from_db()
    assert job.name == "renamed"
    assert job.environment_overrides == before  # untouched: not even re-encrypted

    env = json.loads(data["environment_overrides"])
    env["API_TOKEN"] = "new-token-value"
    data["environment_overrides"] = json.dumps(env)
    response = admin_client.post(admin_url("containerjob", "change", job.pk), data)
    assert response.status_code == 302, response.text
    job.refresh_from_db()
    assert job.get_environment()["API_TOKEN"] == "new-token-value"
    assert job.get_environment()["admin_password"] == PASSWORD
    assert job.environment_overrides["DATABASE_URL"] == before["DATABASE_URL"]
    assert "new-token-value" not in raw_rows(ContainerJob)

    # A masked value with nothing stored to keep is an error, not a literal "••••••".
    env["NEW_TOKEN"] = MASK
    data["environment_overrides"] = json.dumps(env)
    response = admin_client.post(admin_url("containerjob", "change", job.pk), data)
    assert response.status_code == 200
    assert "NEW_TOKEN is hidden" in response.text


def test_admin_template_edit_keeps_sealed_values(admin_client, keys, template):
    before = template.environment_variables
    change = admin_url("environmentvariabletemplate", "change", template.pk)
    form = admin_client.get(change).context["adminform"].form
    text = form["environment_variables"].value()
    assert f"DB_PASSWORD={MASK}" in text
    data = {"name": "base", "description": "edited", "environment_variables": text}
    response = admin_client.post(change, data)
    assert response.status_code == 302, response.text
    template.refresh_from_db()
    assert template.description == "edited"
    assert template.environment_variables == before.strip()

    data["environment_variables"] = text + "\nNEW_SECRET=s3-new-one\nLEVEL=3"
    assert admin_client.post(change, data).status_code == 302
    template.refresh_from_db()
    assert "s3-new-one" not in template.environment_variables
    assert "DB_PASSWORD=" + before.split("DB_PASSWORD=")[1].split("\n")[0] in (
        template.environment_variables
    )
    job = api.create_job("alpine", host=ExecutorHost.objects.create(name="m", executor_type="mock"))
    job.environment_template = template
    assert job.get_environment()["NEW_SECRET"] == "s3-new-one"
    assert job.get_environment()["DB_PASSWORD"] == TEMPLATE_SECRET

    data["environment_variables"] = f"OTHER_TOKEN={MASK}"
    response = admin_client.post(change, data)
    assert response.status_code == 200
    assert "OTHER_TOKEN is hidden" in response.text

    add = admin_url("environmentvariabletemplate", "add")
    typed = f"API_TOKEN={TOKEN}\nLEVEL=3\nbroken line"
    bad = admin_client.post(add, {"name": "new", "environment_variables": typed})
    assert bad.status_code == 200
    assert "expected KEY=value" in bad.text
    assert_hidden(bad.text)
    redisplayed = bad.context["adminform"].form["environment_variables"].value()
    assert "LEVEL=3" in redisplayed and "broken line" in redisplayed
    fixed = redisplayed.replace("broken line", "")
    response = admin_client.post(add, {"name": "new", "environment_variables": fixed}, follow=True)
    assert response.status_code == 200
    assert_hidden(response.text)
    assert_hidden(raw_rows(EnvironmentVariableTemplate))
    new = EnvironmentVariableTemplate.objects.get(name="new")
    job.environment_template = new
    assert job.get_environment()["API_TOKEN"] == TOKEN


# -- the command line --------------------------------------------------------------------


def test_cli_output_and_json_never_show_a_secret(keys, job, template, mock_host):
    outputs = [
        run_cli("show", str(job.pk)),
        run_cli("show", str(job.pk), "--json"),
        run_cli("list"),
        run_cli("list", "--json"),
        run_cli(
            "create",
            "--host",
            "mock",
            "--image",
            "alpine",
            "--env",
            f"GH_TOKEN={TOKEN}",
            "--secret",
            f"DATABASE_URL={EXPLICIT}",
            "--env-template",
            "base",
        ),
        run_cli(
            "create",
            "--host",
            "mock",
            "--image",
            "alpine",
            "--env",
            f"GH_TOKEN={TOKEN}",
            "--secret",
            f"DATABASE_URL={EXPLICIT}",
            "--json",
        ),
        run_cli("cancel", str(job.pk), "--json"),
    ]
    for out in outputs:
        assert_hidden(out)
        assert "cmsecret:v1:" not in out
    shown = outputs[0].splitlines()
    summary = "template base; variables API_TOKEN, DATABASE_URL, MODE, admin_password"
    assert f"Environment: {summary}" in shown
    for line in [f"    API_TOKEN={MASK}", "    MODE=fast", f"    DB_PASSWORD={MASK}"]:
        assert line in shown
    data = json.loads(outputs[1])
    assert data["environment"]["API_TOKEN"] == MASK
    assert data["environment"]["GREETING"] == "hello"
    created = json.loads(outputs[5])
    assert created["environment"] == {"GH_TOKEN": MASK, "DATABASE_URL": MASK}
    stored = ContainerJob.objects.get(pk=created["id"])
    assert stored.get_environment() == {"GH_TOKEN": TOKEN, "DATABASE_URL": EXPLICIT}
    assert_hidden(raw_rows(ContainerJob))


def test_cli_bad_secret_option_is_named_without_the_value(keys, mock_host):
    with pytest.raises(CommandError) as error:
        run_cli("create", "--host", "mock", "--image", "alpine", "--secret", "1BAD=hunter2")
    assert str(error.value).startswith("secrets: ")
    assert "hunter2" not in str(error.value)


# -- logs and errors during real runs -----------------------------------------------------


class QuotingExecutor(MockExecutor):
    """A backend that quotes the environment it was given in its error, as engines may."""

    type_name = "quoting"

    def launch(self, spec):
        raise ExecutorError(f"rejected environment: {dict(spec.env)}")


class CrashingExecutor(BaseExecutor):
    """Fails with an internal error whose text cannot be cleaned by its args."""

    type_name = "crashing"

    class Weird(Exception):
        def __init__(self, env):
            super().__init__()
            self.env = env

        def __str__(self):
            return f"weird: {self.env}"

    def launch(self, spec):
        raise self.Weird(dict(spec.env))


@pytest.fixture
def leaky_executors(settings):
    settings.CONTAINER_MANAGER = {
        **getattr(settings, "CONTAINER_MANAGER", {}),
        "EXECUTORS": {
            "quoting": "tests.test_secrets.QuotingExecutor",
            "crashing": "tests.test_secrets.CrashingExecutor",
        },
    }


def work():
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.02")


def everything_recorded(job):
    job.refresh_from_db()
    attempts = " ".join(
        f"{attempt.error} {attempt.execution_id}" for attempt in JobAttempt.objects.filter(job=job)
    )
    return f"{job.last_error} {attempts} {job.stderr}"


@pytest.mark.django_db(transaction=True)
def test_a_real_run_on_the_mock_executor_logs_no_secret(keys, template, caplog):
    host = ExecutorHost.objects.create(
        name="mock", executor_type="mock", executor_config={"stdout": "done\n", "exit_code": 3}
    )
    job = api.create_job(
        "alpine",
        ["true"],
        host=host,
        env={"API_TOKEN": TOKEN},
        secrets={"DATABASE_URL": EXPLICIT},
        env_template=template,
        max_attempts=2,
        retry_on=[],
    )
    caplog.set_level(logging.DEBUG)
    work()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.exit_code == 3
    assert caplog.records, "the worker logged nothing"
    assert_hidden(caplog.text)
    assert_hidden(" ".join(str(record.args) for record in caplog.records))
    assert_hidden(everything_recorded(job))


@pytest.mark.django_db(transaction=True)
def test_launch_errors_never_quote_a_secret(keys, leaky_executors, caplog):
    caplog.set_level(logging.DEBUG)
    jobs = {}
    for executor_type in ["quoting", "crashing"]:
        host = ExecutorHost.objects.create(name=executor_type, executor_type=executor_type)
        jobs[executor_type] = api.create_job(
            "alpine", host=host, env={"API_TOKEN": TOKEN, "MODE": "fast"}
        )
    failing = ExecutorHost.objects.create(
        name="failing", executor_type="mock", executor_config={"launch_error": "no such image"}
    )
    jobs["mock"] = api.create_job("alpine", host=failing, env={"API_TOKEN": TOKEN})
    work()
    for executor_type, job in jobs.items():
        recorded = everything_recorded(job)
        assert job.status == JobStatus.FAILED, executor_type
        assert_hidden(recorded)
    quoted = jobs["quoting"].last_error
    assert f"'API_TOKEN': '{MASK}'" in quoted and "'MODE': 'fast'" in quoted
    assert "its message quoted a secret value" in jobs["crashing"].last_error
    assert jobs["mock"].last_error == "no such image"
    assert_hidden(caplog.text)


@pytest.mark.django_db(transaction=True)
def test_a_secret_that_cannot_be_decrypted_fails_the_job_naming_it(keys, caplog):
    host = ExecutorHost.objects.create(name="mock", executor_type="mock")
    job = api.create_job("alpine", host=host, env={"API_TOKEN": TOKEN})
    foreign = Fernet(Fernet.generate_key()).encrypt(TOKEN.encode()).decode()
    ContainerJob.objects.filter(pk=job.pk).update(
        environment_overrides={"API_TOKEN": secrets.PREFIX + foreign}
    )
    caplog.set_level(logging.DEBUG)
    work()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.last_error.startswith("cannot decrypt the secret value of API_TOKEN")
    assert JobAttempt.objects.get(job=job).error == job.last_error
    assert_hidden(caplog.text + everything_recorded(job))


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_real_docker_run_gives_the_container_the_clear_value_and_logs_none(
    keys, docker_host, caplog
):
    template = EnvironmentVariableTemplate.objects.create(
        name="docker-base", environment_variables=f"DB_PASSWORD={TEMPLATE_SECRET}\n"
    )
    job = api.create_job(
        TEST_IMAGE,
        ["sh", "-c", 'echo "$API_TOKEN $DB_PASSWORD $DATABASE_URL"; echo failing >&2; exit 4'],
        host=docker_host,
        env={"API_TOKEN": TOKEN},
        secrets={"DATABASE_URL": EXPLICIT},
        env_template=template,
        memory_limit=64,
    )
    caplog.set_level(logging.DEBUG)
    work()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.exit_code == 4
    # The user's own output: the container did get the clear values.
    assert job.stdout == f"{TOKEN} {TEMPLATE_SECRET} {EXPLICIT}\n"
    assert caplog.records
    assert_hidden(caplog.text)
    assert_hidden(" ".join(str(record.args) for record in caplog.records))
    assert_hidden(f"{job.last_error} {JobAttempt.objects.get(job=job).error}")


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_docker_launch_errors_never_quote_a_secret(keys, docker_host, caplog):
    env = {"API_TOKEN": TOKEN}
    jobs = [
        api.create_job(TEST_IMAGE, ["/no/such/command"], host=docker_host, env=env),
        api.create_job(TEST_IMAGE, ["true"], host=docker_host, env=env, working_dir="relative"),
        api.create_job("local/no-such-image:1", ["true"], host=docker_host, env=env),
    ]
    # The engine quotes an environment entry it refuses (an empty name, which validation
    # forbids but a raw UPDATE can write): the value must not reach the job's error.
    quoted = api.create_job(TEST_IMAGE, ["true"], host=docker_host)
    ContainerJob.objects.filter(pk=quoted.pk).update(
        environment_overrides={"": secrets.seal(TOKEN), "API_TOKEN": secrets.seal(TOKEN)}
    )
    jobs.append(quoted)
    caplog.set_level(logging.DEBUG)
    work()
    for job in jobs:
        job.refresh_from_db()
        assert job.status == JobStatus.FAILED, job.last_error
        assert job.last_error
        assert_hidden(everything_recorded(job))
    assert "invalid environment variable: =" + MASK in jobs[-1].last_error
    assert_hidden(caplog.text)

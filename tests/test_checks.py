"""System checks: each misconfiguration is reported by ``manage.py check`` under its id, with
a message naming the setting, before any worker or job trips on it."""

import io
import sys
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from container_manager import checks as cm_checks
from container_manager.api import create_job
from container_manager.conf import DEFAULTS
from container_manager.models import ContainerJob, ExecutorHost, Worker

KEY = Fernet.generate_key().decode()


def found(databases=None, deploy=False) -> dict[str, list[str]]:
    """This app's check messages by id, as Django's check framework runs them."""
    messages = checks.run_checks(databases=databases, include_deployment_checks=deploy)
    by_id: dict[str, list[str]] = {}
    for message in messages:
        if message.id and message.id.startswith("container_manager."):
            by_id.setdefault(message.id, []).append(message.msg)
    return by_id


def configured(**overrides):
    return override_settings(CONTAINER_MANAGER=overrides)


def test_the_defaults_pass_and_every_setting_has_a_rule():
    assert set(cm_checks.RULES) == set(DEFAULTS)
    with configured():
        assert found() == {}


def test_not_a_dict_e001():
    with override_settings(CONTAINER_MANAGER=["POLL_INTERVAL"]):
        assert list(found()) == [cm_checks.NOT_A_DICT]


def test_unknown_key_e002_at_check_time():
    with configured(POLL_INTERVALS=2):
        assert found() == {
            cm_checks.UNKNOWN_KEY: [
                "CONTAINER_MANAGER['POLL_INTERVALS'] is not a setting of container_manager"
            ]
        }


@pytest.mark.parametrize(
    "name, value, wanted",
    [
        ("POLL_INTERVAL", 0, "a positive number"),
        ("POLL_INTERVAL", True, "a positive number"),
        ("MAX_CONCURRENT_JOBS", 2.5, "a positive integer"),
        ("MAX_GPUS", -1, "an integer, 0 or more"),
        ("RETRY_JITTER", 1.5, "a fraction between 0 and 1"),
        ("RETRY_BACKOFF_FACTOR", 0.5, "a number, 1 or more"),
        ("LISTEN_NOTIFY", "yes", "True or False"),
        ("ALLOWED_IMAGES", "registry.example.com/*", "a list of non-empty strings"),
        ("SECRET_ENV_PATTERNS", ["*TOKEN*", 3], "a list of non-empty strings"),
        ("DEFAULT_RETRY_ON", ["exit_code", "sunspots"], "a list drawn from"),
        ("EXECUTORS", ["mine"], "a dict of executor type names"),
        ("WEBHOOK_SECRET", None, "a string"),
    ],
)
def test_bad_value_e003_names_the_setting_and_what_it_must_be(name, value, wanted):
    with configured(**{name: value}):
        messages = found()
    assert list(messages) == [cm_checks.BAD_VALUE]
    [message] = messages[cm_checks.BAD_VALUE]
    assert message.startswith(f"CONTAINER_MANAGER['{name}'] must be {wanted}")


def test_settings_out_of_order_e003():
    with configured(HEARTBEAT_INTERVAL=60, WORKER_TIMEOUT=30):
        [message] = found()[cm_checks.BAD_VALUE]
    assert "HEARTBEAT_INTERVAL" in message and "WORKER_TIMEOUT" in message


def test_bad_encryption_key_e004_never_shows_the_key():
    with configured(ENCRYPTION_KEYS=[KEY, "not-a-fernet-key"]):
        [message] = found()[cm_checks.BAD_ENCRYPTION_KEY]
    assert "entry 2 is not a Fernet key" in message
    assert "not-a-fernet-key" not in message


@pytest.mark.parametrize(
    "path, problem",
    [
        ("nowhere.to.be.Found", "cannot be imported"),
        ("container_manager.models.ContainerJob", "is not a subclass"),
    ],
)
def test_bad_executor_path_e005(path, problem):
    with configured(EXECUTORS={"mine": path}):
        [message] = found()[cm_checks.BAD_EXECUTOR]
    assert f"type 'mine': {path} {problem}" in message


@pytest.mark.parametrize(
    "path, problem",
    [
        ("tests.clock.no_such_clock", "cannot be imported"),
        ("container_manager.conf.DEFAULTS", "is not callable"),
    ],
)
def test_bad_clock_e006(path, problem):
    with configured(CLOCK=path):
        [message] = found()[cm_checks.BAD_CLOCK]
    assert f"CONTAINER_MANAGER['CLOCK'] {path} {problem}" in message


@pytest.mark.django_db
def test_missing_cloud_extra_e007_only_when_a_database_is_checked(monkeypatch):
    ExecutorHost.objects.create(name="cluster", executor_type="kubernetes")
    # As on a machine without the extra: the import of the client fails.
    monkeypatch.setitem(sys.modules, "kubernetes.client", None)
    assert found() == {}  # plain `check` reads no database
    [message] = found(databases=["default"])[cm_checks.MISSING_EXTRA]
    assert "'cluster' (kubernetes)" in message
    assert "django-container-jobs[kubernetes]" in message


@pytest.mark.django_db
def test_host_of_unregistered_type_e008():
    ExecutorHost.objects.create(name="old", executor_type="mock")
    with configured(EXECUTORS={}):
        ExecutorHost.objects.filter(name="old").update(executor_type="retired")
        [message] = found(databases=["default"])[cm_checks.UNKNOWN_HOST_TYPE]
    assert "'old' has executor type 'retired'" in message


@pytest.mark.django_db
def test_webhook_urls_without_a_secret_e009(mock_host):
    with configured(WEBHOOK_SECRET="s3cret"):
        create_job("alpine", ["true"], host="mock", webhook_url="https://hooks.example.com/x")
    with configured():
        [message] = found(databases=["default"])[cm_checks.NO_WEBHOOK_SECRET]
    assert message.startswith("CONTAINER_MANAGER['WEBHOOK_SECRET'] is empty")
    ContainerJob.objects.update(status="completed")
    assert cm_checks.NO_WEBHOOK_SECRET not in found(databases=["default"])


def live_workers(count: int, stale: int = 0):
    now = timezone.now()
    for pid in range(count):
        Worker.objects.create(hostname="h", pid=pid, last_heartbeat=now)
    for pid in range(stale):
        Worker.objects.create(hostname="h", pid=100 + pid, last_heartbeat=now - timedelta(hours=1))


sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="the check is about SQLite")


@sqlite_only
@pytest.mark.django_db
def test_sqlite_with_several_live_workers_w001():
    live_workers(1, stale=3)
    assert cm_checks.SQLITE_WORKERS not in found(databases=["default"])
    live_workers(1)
    [message] = found(databases=["default"])[cm_checks.SQLITE_WORKERS]
    assert "SQLite and 2 workers are running on it" in message


@sqlite_only
@pytest.mark.django_db
def test_sqlite_always_warned_under_deploy_w001_once():
    assert found(deploy=True)[cm_checks.SQLITE_WORKERS] == [
        "database 'default' is SQLite and a deployment usually runs several workers on it: "
        "SQLite takes one writer at a time, so workers queue on its lock ('database is "
        "locked'), and it has no instant wake-ups (LISTEN/NOTIFY)"
    ]
    live_workers(3)
    [message] = found(databases=["default"], deploy=True)[cm_checks.SQLITE_WORKERS]
    assert "3 workers are running" in message


@pytest.mark.skipif(connection.vendor == "sqlite", reason="about databases other than SQLite")
@pytest.mark.django_db
def test_no_sqlite_warning_on_postgresql():
    live_workers(3)
    assert cm_checks.SQLITE_WORKERS not in found(databases=["default"], deploy=True)


@pytest.mark.django_db
def test_secrets_with_a_derived_key_w002_under_deploy(mock_host):
    with configured():
        assert cm_checks.DERIVED_ENCRYPTION_KEY not in found(deploy=True)
        create_job("alpine", ["true"], host="mock", secrets={"DSN": "postgres://x"})
        assert cm_checks.DERIVED_ENCRYPTION_KEY not in found(databases=["default"])
        [message] = found(deploy=True)[cm_checks.DERIVED_ENCRYPTION_KEY]
    assert message.startswith("CONTAINER_MANAGER['ENCRYPTION_KEYS'] is empty while secrets")
    with configured(ENCRYPTION_KEYS=[KEY]):
        assert cm_checks.DERIVED_ENCRYPTION_KEY not in found(deploy=True)


@pytest.mark.django_db(transaction=True)
def test_database_checks_say_nothing_before_migrate():
    # The tables are gone, as before the first `migrate`: no crash, nothing to report.
    with connection.schema_editor() as editor:
        editor.delete_model(Worker)
    try:
        messages = found(databases=["default"], deploy=True)
        assert cm_checks.DERIVED_ENCRYPTION_KEY not in messages
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(Worker)


def test_manage_py_check_fails_naming_the_problem():
    with configured(POLL_INTERVAL=-1), pytest.raises(SystemCheckError) as raised:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    assert "container_manager.E003" in str(raised.value)
    assert "CONTAINER_MANAGER['POLL_INTERVAL'] must be a positive number, not -1" in str(
        raised.value
    )


def test_a_worker_runs_every_check_of_this_app_but_not_the_url_checks():
    # The URL checks import the project's URLconf, and with it what its views need.
    from django.core.checks.registry import registry

    from container_manager.management.commands.process_container_jobs import Command

    ours = [
        check
        for check in registry.get_checks(include_deployment_checks=True)
        if check.__module__ == "container_manager.checks"
    ]
    assert len(ours) == 9
    assert all(cm_checks.TAG in check.tags for check in ours)
    assert cm_checks.TAG in Command.requires_system_checks
    assert checks.Tags.urls not in Command.requires_system_checks

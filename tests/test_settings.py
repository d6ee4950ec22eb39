"""Every documented setting is read: each test changes one and sees the difference."""

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from container_manager.api import create_job
from container_manager.conf import DEFAULTS, setting
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db


def test_unknown_setting_is_an_error_naming_it(settings):
    settings.CONTAINER_MANAGER = {"POLL_INTERVALL": 1}
    with pytest.raises(ImproperlyConfigured, match="POLL_INTERVALL"):
        setting("POLL_INTERVAL")


def test_readme_documents_every_setting():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert [name for name in DEFAULTS if f"| `{name}` |" not in readme] == []


def test_job_defaults_come_from_settings(settings, mock_host):
    settings.CONTAINER_MANAGER = {
        "DEFAULT_TIMEOUT_SECONDS": 77,
        "DEFAULT_MAX_ATTEMPTS": 4,
        "DEFAULT_RETRY_ON": ["timeout"],
    }
    job = create_job("img", host=mock_host)
    assert (job.timeout_seconds, job.max_attempts, job.retry_on) == (77, 4, ["timeout"])


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("MAX_TIMEOUT_SECONDS", "timeout_seconds", 100),
        ("MAX_MEMORY_MB", "memory_limit", 100),
        ("MAX_CPUS", "cpu_limit", 2.0),
    ],
)
def test_upper_bounds_come_from_settings(settings, mock_host, name, field, value):
    create_job("img", host=mock_host, **{field: value})
    settings.CONTAINER_MANAGER = {name: value - 1}
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, **{field: value})
    assert field in error.value.message_dict


def test_worker_defaults_come_from_settings(settings):
    settings.CONTAINER_MANAGER = {"POLL_INTERVAL": 0.25, "MAX_CONCURRENT_JOBS": 7}
    worker = Worker()
    assert (worker.poll_interval, worker.max_concurrent) == (0.25, 7)
    assert Worker(poll_interval=0.5, max_concurrent=2).max_concurrent == 2

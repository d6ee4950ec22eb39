import os
import uuid

import pytest
from django.test import override_settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from container_manager.models import ExecutorHost
from container_manager.spec import HOST_LABEL, MANAGED_LABEL

TEST_IMAGE = os.environ.get("CONTAINER_MANAGER_TEST_IMAGE", "local/busybox:latest")
IN_CI = os.environ.get("CI") == "true"

# The name of the shared engine's host in this test session: unique, so that two suites
# running at once on one engine (SQLite and PostgreSQL passes, two checkouts, CI and a
# developer) each see only their own containers, which carry it in their host label.
DOCKER_HOST_NAME = f"docker-local-{uuid.uuid4().hex[:8]}"

# Tests that need these fixtures are marked without being told: a test cannot slip a Docker
# engine, a worker process or a private service into the fast tier (scripts/test --fast) by
# forgetting its marker. Tests that start processes by other means carry the marker themselves.
FIXTURE_MARKERS = {
    "docker_engine": "docker",
    "worker_processes": "processes",
    "private_postgres": "processes",
    "private_postgres_cluster": "processes",
    "tls_engine": "processes",  # tests/test_docker_executor.py: a private dockerd behind TLS
}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in set(FIXTURE_MARKERS).intersection(getattr(item, "fixturenames", ())):
            marker = FIXTURE_MARKERS[fixture]
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    """Tests only: the admin, permission and CLI tests create users and log them in, and
    Django's default hasher is slow on purpose. The example project's settings are untouched."""
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def fresh_executors():
    """Each test starts as a new process would: with no executor kept from an earlier test
    (a kept Docker client would carry another test's engine address or environment)."""
    from container_manager.executors import forget_executors

    forget_executors()
    yield


def database_independent():
    """For a module whose tests never reach the database (executors take a LaunchSpec and
    never import a model): it runs in the SQLite passes of scripts/test, not again in the
    PostgreSQL ones."""
    from django.db import connection

    return pytest.mark.skipif(
        connection.vendor == "postgresql",
        reason="no database involved: runs in the SQLite passes only",
    )


def docker_engine_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.fixture(scope="session")
def docker_engine():
    """A reachable Docker engine with the test image, or a loud failure under CI."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_engine_url(), timeout=10)
        client.ping()
        client.images.get(TEST_IMAGE)
    except Exception as error:  # noqa: BLE001 - any failure means "no usable engine"
        message = (
            f"no usable Docker engine at {docker_engine_url()} with image {TEST_IMAGE} "
            f"({error}); run scripts/docker-engine.sh"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


def own_labels(*labels: str) -> list[str]:
    """Label filters that select this session's containers on the shared engine (those of its
    Docker host), and of those the ones with ``labels`` ("key=value") too. Every test that
    lists or removes containers there filters with them."""
    return [f"{MANAGED_LABEL}=true", f"{HOST_LABEL}={DOCKER_HOST_NAME}", *labels]


@pytest.fixture
def no_container_left(docker_engine):
    """Whatever the tests' host left is removed, then reported (other users of the engine,
    such as another test session or a developer's own jobs, are not looked at)."""
    yield
    left = docker_engine.containers.list(all=True, filters={"label": own_labels()})
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def docker_host(db, docker_engine):
    return ExecutorHost.objects.create(
        name=DOCKER_HOST_NAME,
        executor_type="docker",
        connection_string=docker_engine_url(),
        executor_config={"pull_policy": "never"},
    )


@pytest.fixture
def mock_host(db):
    return ExecutorHost.objects.create(name="mock", executor_type="mock")


def database_url_for_subprocesses() -> str:
    """The test database as a DATABASE_URL, for worker processes started by a test."""
    from django.db import connection

    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


class WorkerProcesses:
    """Real `process_container_jobs` processes; all are killed at the end of the test."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def start(self, *args, env=None):
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(root / "manage.py"), "process_container_jobs", *args],
            cwd=root,
            env={
                **os.environ,
                "DATABASE_URL": database_url_for_subprocesses(),
                "CONTAINER_MANAGER_LOG_LEVEL": "INFO",
                **(env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {p.pid}\n" + open(p.log_path, errors="replace").read() for p in self.procs
        )

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def worker_processes(tmp_path):
    workers = WorkerProcesses(tmp_path)
    yield workers
    workers.stop_all()


# Hypothesis: reproducible in CI (derandomized); HYPOTHESIS_PROFILE=long for a deeper search.

hypothesis_settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""The Prometheus metrics: a known workload through a real worker loop, scraped from the view
and from the worker's port, read back with prometheus-client's own parser."""

import socket
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from container_manager import metrics
from container_manager.api import create_job
from container_manager.models import ContainerJob, ExecutorHost, Worker
from container_manager.worker import Worker as JobWorker

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "scrape-token-0123456789"


def parse(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of every sample."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client, **headers) -> dict:
    response = client.get("/metrics/", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


@pytest.fixture(autouse=True)
def token(settings):
    settings.CONTAINER_MANAGER = {"METRICS_TOKEN": TOKEN}


@pytest.fixture
def workload():
    """Five completed, two failed by exit code, one failed to launch; then two queued and
    one held job left for the scrape, on a host that is full."""
    ok = ExecutorHost.objects.create(name="ok", executor_type="mock", max_concurrent_jobs=3)
    bad = ExecutorHost.objects.create(
        name="bad", executor_type="mock", executor_config={"exit_code": 2}
    )
    broken = ExecutorHost.objects.create(
        name="broken", executor_type="mock", executor_config={"launch_error": "no such image"}
    )
    for _ in range(5):
        create_job("img", ["true"], host=ok)
    for _ in range(2):
        create_job("img", ["false"], host=bad)
    create_job("img", host=broken)
    JobWorker(until_idle=True, poll_interval=0.05).run()
    assert ContainerJob.objects.filter(status="completed").count() == 5
    # Left waiting: the oldest ready for two minutes.
    waiting = [create_job("img", host=ok) for _ in range(2)]
    ContainerJob.objects.filter(pk=waiting[0].pk).update(
        scheduled_for=timezone.now() - timedelta(minutes=2)
    )
    create_job("img", host=ok, hold=True)
    ExecutorHost.objects.filter(pk=bad.pk).update(health_status="unhealthy")
    return ok, bad, broken


def test_a_known_workload_reads_back_through_the_official_parser(client, workload):
    samples = scrape(client)

    def value(name, **labels):
        return samples[(name, frozenset(labels.items()))]

    assert value("container_jobs", status="queued", host="ok") == 2
    assert value("container_jobs", status="pending", host="ok") == 1
    assert 119 < value("container_jobs_oldest_ready_age_seconds") < 200
    assert value("container_jobs_finished", status="completed", kind="none") == 5
    assert value("container_jobs_finished", status="failed", kind="exit_code") == 2
    assert value("container_jobs_finished", status="failed", kind="launch_error") == 1
    assert value("container_jobs_host_capacity", host="ok") == 3
    assert value("container_jobs_host_running", host="ok") == 0
    assert value("container_jobs_host_health", host="bad", status="unhealthy") == 1
    assert value("container_jobs_host_health", host="bad", status="healthy") == 0
    # Seven jobs ran (the launch error never started): all within a second, picked up fast.
    assert value("container_jobs_duration_seconds_gcount") == 7
    assert value("container_jobs_duration_seconds_bucket", le="1.0") == 7
    assert value("container_jobs_pickup_latency_seconds_gcount") == 7
    assert value("container_jobs_pickup_latency_seconds_bucket", le="+Inf") == 7
    assert 0 <= value("container_jobs_pickup_latency_seconds_gsum") < 7 * 5
    assert value("container_jobs_workers_alive") == 0  # the worker signed off


def test_running_jobs_and_live_workers_are_seen_across_the_cluster(client, mock_host):
    """What other processes hold (rows written as a worker does) is counted too."""
    worker = Worker.objects.create(hostname="box-2", pid=4242)
    for _ in range(2):
        job = create_job("img", host=mock_host)
        ContainerJob.objects.filter(pk=job.pk).update(status="running", worker=worker)
    samples = scrape(client)
    assert samples[("container_jobs_host_running", frozenset({("host", "mock")}))] == 2
    assert samples[("container_jobs_workers_alive", frozenset())] == 1
    beat = samples[
        (
            "container_jobs_worker_last_heartbeat_timestamp_seconds",
            frozenset({("worker", str(worker.pk)), ("hostname", "box-2"), ("pid", "4242")}),
        )
    ]
    assert abs(beat - worker.last_heartbeat.timestamp()) < 1e-3


def test_jobs_that_ended_before_the_window_are_not_counted(client, settings, mock_host):
    settings.CONTAINER_MANAGER = {"METRICS_TOKEN": TOKEN, "METRICS_WINDOW_SECONDS": 60}
    job = create_job("img", host=mock_host)
    long_ago = timezone.now() - timedelta(minutes=5)
    ContainerJob.objects.filter(pk=job.pk).update(
        status="completed", started_at=long_ago, finished_at=long_ago
    )
    samples = scrape(client)
    assert (
        "container_jobs_finished",
        frozenset({("status", "completed"), ("kind", "none")}),
    ) not in samples
    assert samples[("container_jobs_duration_seconds_gcount", frozenset())] == 0
    assert samples[("container_jobs_window_seconds", frozenset())] == 60


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong-token", 403),
        (f"Basic {TOKEN}", 403),
        (f"Bearer {TOKEN}", 200),
    ],
)
def test_the_view_needs_the_token(client, authorization, status):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics/", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_no_token_configured_refuses_every_bearer(client, settings):
    settings.CONTAINER_MANAGER = {}
    assert client.get("/metrics/", headers={"Authorization": "Bearer "}).status_code == 403


def test_a_logged_in_user_needs_the_permission_to_view_jobs(client):
    user = User.objects.create_user("ops", password="pw")
    client.force_login(user)
    assert client.get("/metrics/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_containerjob"))
    client.force_login(User.objects.get(pk=user.pk))
    assert client.get("/metrics/").status_code == 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_workers_port_serves_the_same_metrics(mock_host):
    create_job("img", host=mock_host)
    port = free_port()
    server = metrics.serve(port, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            samples = parse(answer.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    assert samples[("container_jobs", frozenset({("status", "queued"), ("host", "mock")}))] == 1


def test_a_busy_metrics_port_is_a_clear_error(db):
    from django.core.management import CommandError, call_command

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"--metrics-port {port}"):
            call_command("process_container_jobs", "--until-idle", "--metrics-port", str(port))
